"""Tests for actors.reward: the time-bounded scorer (real child processes) and the Ray reward actor.

Misbehaving reward functions come from tests/reward_faults.py, loaded by import path as the child does it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from actors.reward import (
    DEFAULT_REWARD_SPECS,
    RewardScorer,
    score_with_workers,
)
from actors.reward_specs import resolve_reward_functions
from rewards.reward_functions import REWARD_FUNCTIONS, score

REPO_ROOT = Path(__file__).resolve().parents[1]
FAULTS = "tests.reward_faults"
BOUND_S = 1.0

PERFECT = "<think>\nreasoning\n</think>\n<answer>\n72\n</answer>"
CASES = [
    (PERFECT, "72"),
    (PERFECT + "\n", "72"),
    ("<think>\nreasoning\n</think>\n<answer>\n360,000\n</answer>", "360000"),
    (" answer </answer>\n\n", "24"),
    ("<think>\nreasoning\n</think>\n<answer>\n71\n</answer>", "72"),
    ("<think>\nLet me compute 8 * 9", "72"),
    ("", "5"),
]


def _expected(completions: list[str], answers: list[str]) -> list[dict[str, float]]:
    return [score(c, a) for c, a in zip(completions, answers, strict=True)]


def _many(n: int) -> tuple[list[str], list[str]]:
    completions, answers = [], []
    for i in range(n):
        completion, answer = CASES[i % len(CASES)]
        completions.append(completion.replace("reasoning", f"reasoning {i}"))
        answers.append(answer)
    return completions, answers


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has stopped running; whoever adopted it may not have reaped it yet


@pytest.fixture(scope="module")
def scorer() -> RewardScorer:
    with RewardScorer(DEFAULT_REWARD_SPECS, timeout_s=BOUND_S) as plain:
        yield plain


# --- resolving specs ------------------------------------------------------------------------------------


def test_resolve_builtins_and_import_paths() -> None:
    functions = resolve_reward_functions([*DEFAULT_REWARD_SPECS, f"{FAULTS}:return_nan"])
    assert list(functions) == [*REWARD_FUNCTIONS, "return_nan"]
    assert functions["correctness"] is REWARD_FUNCTIONS["correctness"]
    from tests import reward_faults

    assert functions["return_nan"] is reward_faults.return_nan


@pytest.mark.parametrize(
    "spec",
    ["no_such_reward", "no_such_package.rewards:fn", f"{FAULTS}:no_such_fn", f"{FAULTS}:", ":fn"],
)
def test_resolve_bad_spec_is_a_value_error_naming_it(spec: str) -> None:
    with pytest.raises(ValueError, match=repr(spec).replace("(", r"\(")):
        resolve_reward_functions(["correctness", spec])


def test_resolve_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already given"):
        resolve_reward_functions(["digit", "digit"])


# --- the plain scorer -----------------------------------------------------------------------------------


def test_scorer_matches_score(scorer: RewardScorer) -> None:
    completions, answers = [c for c, _ in CASES], [a for _, a in CASES]
    batch = scorer.score_batch(completions, answers)
    assert batch.scores == _expected(completions, answers)
    assert batch.scores[0] == {"correctness": 2.0, "digit": 0.5, "hard_format": 0.5, "mark": 0.5, "total": 3.5}
    assert (batch.errors, batch.timeouts) == (0, 0)
    assert scorer.score_batch([], []).scores == []
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        scorer.score_batch(["a", "b"], ["1"])


def test_chunks_and_batches_reuse_one_child() -> None:
    completions, answers = _many(11)
    with RewardScorer(timeout_s=BOUND_S, chunk_size=4) as chunked:
        pid = chunked.child_pid
        for _ in range(3):
            assert chunked.score_batch(completions, answers).scores == _expected(completions, answers)
        assert chunked.child_pid == pid and chunked.restarts == 0


@pytest.mark.parametrize("hang_at", [0, 1], ids=["hang-first", "hang-between"])
def test_hang_forever_is_cut_at_the_bound(hang_at: int) -> None:
    specs = ["correctness", "digit"]
    specs.insert(hang_at, f"{FAULTS}:hang_forever")
    completions, answers = [PERFECT, CASES[3][0]], ["72", "24"]
    with RewardScorer(specs, timeout_s=BOUND_S) as hanging:
        first_pid = hanging.child_pid
        start = time.monotonic()
        batch = hanging.score_batch(completions, answers)
        elapsed = time.monotonic() - start
        assert BOUND_S * 2 <= elapsed < 2 * 3 * BOUND_S
        assert (batch.timeouts, batch.errors) == (2, 0)
        for scores, expected in zip(batch.scores, _expected(completions, answers), strict=True):
            assert scores["hang_forever"] == 0.0
            assert scores["correctness"] == expected["correctness"]
            assert scores["digit"] == expected["digit"]
            assert scores["total"] == expected["correctness"] + expected["digit"]
        assert hanging.restarts == 2 and hanging.child_pid != first_pid
        assert any("time bound" in message for message in batch.error_messages)


def test_sleep_and_signal_ignoring_busy_loop_are_cut_and_the_rest_scored() -> None:
    specs = [f"{FAULTS}:hang_if_marked", *DEFAULT_REWARD_SPECS]
    completions = [PERFECT, "HANG" + PERFECT, PERFECT + "\n", "SPIN" + PERFECT, CASES[3][0]]
    answers = ["72", "72", "72", "72", "24"]
    with RewardScorer(specs, timeout_s=BOUND_S) as hanging:
        start = time.monotonic()
        batch = hanging.score_batch(completions, answers)
        assert time.monotonic() - start < 2 * 3 * BOUND_S
        assert (batch.timeouts, batch.errors) == (2, 0)
        for scores, expected, completion in zip(
            batch.scores, _expected(completions, answers), completions, strict=True
        ):
            marked = "HANG" in completion or "SPIN" in completion
            assert scores == {
                "hang_if_marked": 0.0 if marked else 1.0,
                **expected,
                "total": expected["total"] + (0.0 if marked else 1.0),
            }

        # The replaced child goes on working, batch after batch, without another restart.
        restarts = hanging.restarts
        for _ in range(2):
            again = hanging.score_batch([PERFECT], ["72"])
            assert (again.timeouts, again.errors) == (0, 0)
            assert again.scores[0]["total"] == 4.5
        assert hanging.restarts == restarts == 2


def test_raising_nan_string_and_bool_score_zero_and_count_as_errors() -> None:
    faults = ["raise_error", "return_nan", "return_string", "return_bool"]
    specs = [*(f"{FAULTS}:{name}" for name in faults), "correctness"]
    completions, answers = [c for c, _ in CASES[:3]], [a for _, a in CASES[:3]]
    with RewardScorer(specs, timeout_s=BOUND_S) as faulty:
        pid = faulty.child_pid
        batch = faulty.score_batch(completions, answers)
        assert (batch.errors, batch.timeouts) == (len(faults) * len(completions), 0)
        for scores, expected in zip(batch.scores, _expected(completions, answers), strict=True):
            assert scores == {
                **dict.fromkeys(faults, 0.0),
                "correctness": expected["correctness"],
                "total": expected["correctness"],
            }
        assert faulty.child_pid == pid and faulty.restarts == 0  # errors do not cost a process
        messages = " | ".join(batch.error_messages)
        assert "RuntimeError" in messages and "nan" in messages and "str" in messages


def test_a_function_that_kills_the_process_is_an_error_and_scoring_goes_on() -> None:
    specs = ["correctness", f"{FAULTS}:exit_process", "digit"]
    with RewardScorer(specs, timeout_s=BOUND_S) as crashing:
        batch = crashing.score_batch([PERFECT, PERFECT], ["72", "72"])
        assert (batch.errors, batch.timeouts) == (2, 0)
        assert batch.scores == [{"correctness": 2.0, "exit_process": 0.0, "digit": 0.5, "total": 2.5}] * 2
        assert crashing.restarts == 2


def test_a_child_killed_between_batches_is_replaced(scorer: RewardScorer) -> None:
    pid = scorer.child_pid
    os.kill(pid, signal.SIGKILL)
    batch = scorer.score_batch([PERFECT], ["72"])
    assert (batch.errors, batch.timeouts, batch.scores[0]["total"]) == (0, 0, 3.5)
    assert scorer.child_pid != pid


def test_close_kills_the_child() -> None:
    closing = RewardScorer(timeout_s=BOUND_S)
    pid = closing.child_pid
    closing.close()
    assert _gone(pid)
    with pytest.raises(RuntimeError, match="closed"):
        closing.score_batch([PERFECT], ["72"])


def test_the_child_dies_with_its_parent_even_in_a_busy_loop() -> None:
    script = textwrap.dedent(f"""
        import sys
        from actors.reward import RewardScorer
        if __name__ == "__main__":
            scorer = RewardScorer(["{FAULTS}:hang_if_marked"], timeout_s=600)
            print(scorer.child_pid, flush=True)
            scorer.score_batch(["SPIN"], ["1"])
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        child_pid = int(parent.stdout.readline())
        time.sleep(0.5)  # let it spin
        assert not _gone(child_pid)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    deadline = time.monotonic() + 5.0
    while not _gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child_pid)


# --- the Ray actor --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_workers(ray_cluster: None) -> dict[str, list]:
    import ray

    from actors.reward import create_reward_workers

    pair = create_reward_workers(DEFAULT_REWARD_SPECS, BOUND_S, 2)
    hang = create_reward_workers(["correctness", f"{FAULTS}:hang_if_marked"], BOUND_S, 1)
    assert ray.get([w.health.remote() for w in pair + hang]) == [True] * 3
    yield {"w1": pair[:1], "w2": pair, "hang": hang}
    for worker in pair + hang:
        ray.kill(worker)


def test_ray_w2_scores_like_w1_and_like_score(ray_workers: dict[str, list]) -> None:
    completions, answers = _many(41)  # an odd count: chunks of 21 and 20
    one = score_with_workers(ray_workers["w1"], completions, answers)
    two = score_with_workers(ray_workers["w2"], completions, answers)
    assert two.scores == one.scores == _expected(completions, answers)
    assert (two.errors, two.timeouts) == (0, 0)
    fewer = score_with_workers(ray_workers["w2"], completions[:1], answers[:1])  # one worker gets nothing
    assert fewer.scores == _expected(completions[:1], answers[:1])
    assert score_with_workers(ray_workers["w2"], [], []).scores == []


def test_ray_hang_is_bounded_and_counted(ray_workers: dict[str, list]) -> None:
    import ray

    completions, answers = ["HANG" + PERFECT, PERFECT, "SPIN", PERFECT], ["72", "72", "1", "72"]
    start = time.monotonic()
    batch = score_with_workers(ray_workers["hang"], completions, answers)
    assert time.monotonic() - start < 2 * 3 * BOUND_S
    assert (batch.timeouts, batch.errors) == (2, 0)
    assert [s["hang_if_marked"] for s in batch.scores] == [0.0, 1.0, 0.0, 1.0]
    assert [s["correctness"] for s in batch.scores] == [2.0, 2.0, 0.0, 2.0]
    assert ray.get(ray_workers["hang"][0].health.remote()) is True
