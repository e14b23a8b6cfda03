"""Test-only reward functions that misbehave, loaded by the scorer's child as ``tests.reward_faults:<name>``.

Same signature as the real ones: ``(completions, answers) -> list[float]``.
"""

import os
import signal
import time


def hang_forever(completions: list[str], answers: list[str]) -> list[float]:
    time.sleep(3600)
    return [0.0] * len(completions)


def raise_error(completions: list[str], answers: list[str]) -> list[float]:
    raise RuntimeError("this reward function fails on purpose")


def return_nan(completions: list[str], answers: list[str]) -> list[float]:
    return [float("nan")] * len(completions)


def return_string(completions: list[str], answers: list[str]) -> list[float]:
    return ["oops"] * len(completions)  # type: ignore[list-item]


def return_bool(completions: list[str], answers: list[str]) -> list[float]:
    return [True] * len(completions)


def _spin_ignoring_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        pass


def hang_if_marked(completions: list[str], answers: list[str]) -> list[float]:
    """1.0, except that a completion containing HANG sleeps for an hour and one containing SPIN busy-loops
    forever with SIGINT, SIGTERM and SIGALRM ignored (only SIGKILL stops it)."""
    for completion in completions:
        if "HANG" in completion:
            time.sleep(3600)
        if "SPIN" in completion:
            _spin_ignoring_signals()
    return [1.0] * len(completions)


def exit_process(completions: list[str], answers: list[str]) -> list[float]:
    """Kills the process that runs it, as a segfaulting extension would."""
    os._exit(3)
