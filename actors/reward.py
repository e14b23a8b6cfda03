"""Reward scoring with a time bound per completion, and the Ray actor around it.

`RewardScorer` (plain Python, no Ray) runs the reward functions in one long-lived child process, replaced
only after it was killed at the time bound or died. Per chunk of at most ``chunk_size`` completions:

- The parent sends the chunk over a pipe. The child calls ``fn([completion], [answer])[0]`` for every
  (completion i, function f) and writes into shared memory each result's value and status, the index of the
  (i, f) it is running and when it started completion i. Only errors and "done" cross the pipe, which keeps
  the throughput at tens of thousands of completions per second.
- The parent waits on the pipe until the running completion's start + ``timeout_s``. Past that, the running
  function scores 0 as a timeout and the child is SIGKILLed (the only thing that stops both a
  ``time.sleep(3600)`` and a busy loop that ignores signals); a new child resumes at the next function with
  a fresh budget, so one completion takes at most (#functions x timeout_s).
- A function that raises, returns a non-number (bools included) or a non-finite number, or during which the
  child died, scores 0 and counts in ``errors``. A child that died before it took the chunk (killed from
  outside between batches) is replaced without blaming anyone.

The child dies with its parent: the kernel SIGKILLs it (prctl, which also stops C code holding the GIL), and
it exits when the pipe closes. It is started with spawn, so a script that creates a `RewardScorer` at import
time must do so under ``if __name__ == "__main__":``; Ray is imported only by the actor functions, so the
child imports little and starts in ~0.07 s (~0.4 s inside a Ray worker, which spawn re-imports).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import numbers
import os
import signal
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.resources import process_tree_rss_mb
from actors.reward_specs import resolve_reward_functions, worker_spec
from actors.split import split_evenly

logger = logging.getLogger(__name__)

DEFAULT_REWARD_SPECS: tuple[str, ...] = ("correctness", "digit", "hard_format", "mark")

# Status of one (completion, function) result in shared memory.
_PENDING, _OK, _ERROR, _TIMEOUT = 0, 1, 2, 3
# Error texts kept per batch (the counts are exact; the texts are for the logs).
_MAX_ERROR_MESSAGES = 5
# Spawning re-imports the parent's main module, which in a Ray worker can be slow.
_STARTUP_TIMEOUT_S = 120.0


@dataclass
class ScoredBatch:
    """Scores of a batch, in the order of the completions."""

    scores: list[dict[str, float]]
    """One dict per completion: each function's name -> score, plus ``"total"`` (their sum)."""
    errors: int = 0
    """(completion, function) pairs that raised, returned a non-number or non-finite value, or crashed."""
    timeouts: int = 0
    """(completion, function) pairs cut at the time bound."""
    error_messages: list[str] = field(default_factory=list)
    """A few of the error and timeout descriptions, for the logs (not all of them)."""


def _problem(value: Any) -> str | None:
    """None when ``value`` is a usable score, else what is wrong with it."""
    # `type is float` first: the common case skips the slower ABC check.
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        return f"returned {type(value).__name__} {value!r:.60}, not a number"
    return None if math.isfinite(value) else f"returned the non-finite value {value!r}"


def _child_main(specs: tuple[str, ...], conn: Any, shared: tuple[Any, ...], parent_pid: int) -> None:
    """Score chunks sent by the parent until the pipe closes; see the module docstring for the protocol."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    try:
        functions = list(resolve_reward_functions(specs).values())
    except Exception as exc:
        conn.send(("failed", repr(exc)))
        return
    conn.send(("ready", os.getpid()))
    values, status, cursor, starts = shared
    num_fns = len(functions)
    while True:
        try:
            completions, answers, k_start = conn.recv()
        except (EOFError, OSError):
            return
        cursor[1] = 1  # taken: from here on, a death is blamed on the function that runs
        reported = 0
        i_start, f_start = divmod(k_start, num_fns)
        for i in range(i_start, len(completions)):
            completion, answer = completions[i], answers[i]
            starts[i] = time.monotonic()
            for f in range(f_start if i == i_start else 0, num_fns):
                k = i * num_fns + f
                cursor[0] = k
                try:
                    value = functions[f]([completion], [answer])[0]
                    problem = _problem(value)
                except Exception as exc:
                    problem = f"raised {type(exc).__name__}: {exc}"
                if problem is None:
                    values[k] = float(value)
                    status[k] = _OK
                else:
                    status[k] = _ERROR
                    if reported < _MAX_ERROR_MESSAGES:
                        conn.send(("error", k, problem))
                        reported += 1
        conn.send(("done",))


def _kill(process: Any, conn: Any) -> None:
    with contextlib.suppress(Exception):
        process.kill()
        process.join(5.0)
    with contextlib.suppress(Exception):
        conn.close()


class RewardScorer:
    """Scores batches with the given reward functions, each completion bounded by ``timeout_s``.

    Not thread-safe: one batch at a time. Call `close` (or use it as a context manager) to stop the child.
    """

    def __init__(
        self, specs: Sequence[str] = DEFAULT_REWARD_SPECS, timeout_s: float = 5.0, *, chunk_size: int = 4096
    ) -> None:
        self.specs = tuple(specs)
        self.names = list(resolve_reward_functions(self.specs))  # fail early, here, on a bad spec
        self.timeout_s = float(timeout_s)
        self.chunk_size = chunk_size
        self.restarts = 0
        """Children started after the first one (after a kill or a crash)."""
        self._ctx = multiprocessing.get_context("spawn")
        slots = chunk_size * len(self.names)
        self._values = self._ctx.RawArray("d", slots)
        self._status = self._ctx.RawArray("b", slots)
        self._cursor = self._ctx.RawArray("q", 2)  # [index k of the running (i, f), chunk taken (0/1)]
        self._starts = self._ctx.RawArray("d", chunk_size)
        self._process: Any = None
        self._conn: Any = None
        self._finalizer: weakref.finalize | None = None
        self._closed = False
        self._start_child()

    @property
    def child_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start_child(self) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        shared = (self._values, self._status, self._cursor, self._starts)
        process = self._ctx.Process(
            target=_child_main, args=(self.specs, child_conn, shared, os.getpid()), name="reward-scorer", daemon=True
        )
        process.start()
        child_conn.close()  # so that the parent sees EOF when the child dies
        try:
            if not parent_conn.poll(_STARTUP_TIMEOUT_S):
                raise RuntimeError(f"reward scorer child did not start in {_STARTUP_TIMEOUT_S} s")
            kind, detail = parent_conn.recv()
            if kind != "ready":
                raise RuntimeError(f"reward scorer child failed to start: {detail}")
        except BaseException as exc:
            _kill(process, parent_conn)
            if isinstance(exc, EOFError):
                raise RuntimeError(f"reward scorer child died while starting (exit code {process.exitcode})") from None
            raise
        self._process, self._conn = process, parent_conn
        self._finalizer = weakref.finalize(self, _kill, process, parent_conn)

    def _stop_child(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # kills the child and closes the pipe, once
        self._process = self._conn = self._finalizer = None

    def _ensure_child(self) -> None:
        if self._closed:
            raise RuntimeError("RewardScorer is closed")
        if self._process is not None:
            if self._process.is_alive():
                return
            logger.warning("reward scorer child %s is gone (exit code %s)", self._process.pid, self._process.exitcode)
            self._stop_child()
        self._start_child()
        self.restarts += 1

    def healthy(self) -> bool:
        """True when a live child is ready to score (a dead one is replaced first)."""
        try:
            self._ensure_child()
        except Exception:
            logger.exception("reward scorer child cannot be started")
            return False
        return True

    def close(self) -> None:
        """Kill the child. The scorer cannot be used afterwards."""
        self._closed = True
        self._stop_child()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def score_batch(self, completions: list[str], answers: list[str]) -> ScoredBatch:
        """Score every completion against its gold answer with every function; see the module docstring."""
        if len(completions) != len(answers):
            raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
        batch = ScoredBatch(scores=[])
        num_fns = len(self.names)
        for start in range(0, len(completions), self.chunk_size):
            chunk = slice(start, start + self.chunk_size)
            total = len(completions[chunk]) * num_fns
            ctypes.memset(ctypes.addressof(self._status), _PENDING, total)
            try:
                self._run_chunk(completions[chunk], answers[chunk], batch)
            except BaseException:
                self._stop_child()  # e.g. KeyboardInterrupt: never leave a busy child behind for the next batch
                raise
            values, codes = self._values[:total], self._status[:total]
            batch.errors += codes.count(_ERROR)
            batch.timeouts += codes.count(_TIMEOUT)
            for base in range(0, total, num_fns):
                row = {name: values[base + f] if codes[base + f] == _OK else 0.0 for f, name in enumerate(self.names)}
                row["total"] = sum(row.values())
                batch.scores.append(row)
        return batch

    def _run_chunk(self, completions: list[str], answers: list[str], batch: ScoredBatch) -> None:
        """Run the child over the chunk, replacing it after each kill, until every (i, f) has a status."""
        num_fns = len(self.names)
        total = len(completions) * num_fns
        status, cursor = self._status, self._cursor
        k, lost = 0, 0
        while k < total:
            self._ensure_child()
            cursor[0], cursor[1] = k, 0
            self._starts[k // num_fns] = time.monotonic()  # the child resets it when it begins
            try:
                self._conn.send((completions, answers, k))
                outcome, judged = self._wait(batch)
            except (OSError, EOFError):  # the child died before or as the chunk was sent
                outcome, judged = "crash", k
            if outcome == "done":
                break
            self._stop_child()  # SIGKILL; after this the child writes nothing more
            if not cursor[1]:  # it died before it took the chunk (e.g. killed from outside): just resend
                lost += 1
                if lost > 3:
                    raise RuntimeError("reward scorer child keeps dying before it starts scoring")
                continue
            lost = 0
            k = cursor[0]
            if status[k] != _PENDING:  # it finished k just before the kill: nothing to blame
                k += 1
            elif outcome == "timeout" and k == judged:
                status[k] = _TIMEOUT
                self._note(batch, k, f"ran past the time bound of {self.timeout_s} s")
                k += 1
            elif outcome == "crash":
                status[k] = _ERROR
                self._note(batch, k, "the scorer process died while it ran")
                k += 1
            # else: the child moved on between the deadline check and the kill; run k again in a new child

    def _wait(self, batch: ScoredBatch) -> tuple[str, int]:
        """Wait for the chunk to finish: ("done", -1), ("timeout", k) or ("crash", k)."""
        num_fns, cursor, starts, conn = len(self.names), self._cursor, self._starts, self._conn
        while True:
            k = cursor[0]
            remaining = starts[k // num_fns] + self.timeout_s - time.monotonic()
            if remaining <= 0:
                if cursor[0] == k:
                    return "timeout", k
                continue
            try:
                if not conn.poll(remaining):
                    continue
                message = conn.recv()
            except (EOFError, OSError):
                return "crash", cursor[0]
            if message[0] == "done":
                return "done", -1
            self._note(batch, message[1], message[2])  # an "error" message

    def _note(self, batch: ScoredBatch, k: int, problem: str) -> None:
        if len(batch.error_messages) < _MAX_ERROR_MESSAGES:
            text = f"reward function {self.names[k % len(self.names)]!r} {problem}"
            batch.error_messages.append(text)
            logger.warning("%s", text)


class _RewardWorkerShell(RewardScorer):
    """The Ray actor: a `RewardScorer` that also reports its health and memory; `create_reward_workers`."""

    def health(self) -> bool:
        return self.healthy()

    def rss_mb(self) -> float:
        return process_tree_rss_mb()


def create_reward_workers(specs: Sequence[str], timeout_s: float, count: int, resource: str = "") -> list[Any]:
    """Start `count` reward actors and wait until each has its scoring child running (on nodes offering the
    custom Ray resource `resource`, if one is named)."""
    import ray

    actor_cls = ray.remote(num_cpus=1)(_RewardWorkerShell)
    options = {"resources": {resource: 0.001}} if resource else {}
    workers = [actor_cls.options(**options).remote([worker_spec(s) for s in specs], timeout_s) for _ in range(count)]
    ray.get([worker.health.remote() for worker in workers])
    return workers


def score_with_workers(workers: Sequence[Any], completions: list[str], answers: list[str]) -> ScoredBatch:
    """Score a batch on W reward actors: contiguous, near-equal chunks, one `ray.get`, merged in order."""
    import ray

    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")
    refs = [
        worker.score_batch.remote(completions[chunk.start : chunk.stop], answers[chunk.start : chunk.stop])
        for worker, chunk in zip(workers, split_evenly(len(completions), len(workers)), strict=True)
        if len(chunk)
    ]
    return merge_scored(ray.get(refs))


def merge_scored(parts: Sequence[ScoredBatch]) -> ScoredBatch:
    """One batch of the parts' scores in order, their counts added up."""
    merged = ScoredBatch(scores=[])
    for part in parts:
        merged.scores.extend(part.scores)
        merged.errors += part.errors
        merged.timeouts += part.timeouts
        merged.error_messages.extend(part.error_messages[: _MAX_ERROR_MESSAGES - len(merged.error_messages)])
    return merged
