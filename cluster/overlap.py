"""Rollout ahead of training: with `trainer.max_staleness` = k, the rollout of step s+k runs while step s trains.

The rollout of step t samples with policy version max(0, t-1-k) exactly, not merely at most k versions behind,
so a run stays a pure function of its config and a resumed run equals the uninterrupted one. Per step s:

    take rollout(s)                    waits only if it is not done yet (k = 0: runs it now, as before)
    launch rollout(s+k)                on a background thread; the engines hold version s-1
    train step s                       meanwhile on the learner
    settle                             wait until every launched rollout is done: the engines are idle from here
    push version s                     first sampled by rollout(s+k+1), launched in step s+1

A weight push therefore never lands in the middle of a generate call, and evaluation, checkpoints and engine
replacement between steps find the engines idle. One thread runs the rollouts, one after the other, in step order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cluster.rollout_stage import StepRollout


class RolloutsAhead:
    def __init__(self, collect: Callable[[int], StepRollout], staleness: int, last_step: int) -> None:
        self.collect, self.staleness, self.last_step = collect, staleness, last_step
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-ahead")
        self._futures: dict[int, Future[StepRollout]] = {}
        self._launched = 0  # the highest step whose rollout was launched

    def restore(self, step: int, ready: list[StepRollout]) -> None:
        """Resume after the checkpoint of `step`: the rollouts it had already collected for the steps after it."""
        self._launched = step
        for rollout in ready:
            done: Future[StepRollout] = Future()
            done.set_result(rollout)
            self._futures[rollout.step] = done
            self._launched = max(self._launched, rollout.step)

    def take(self, step: int) -> StepRollout:
        """The rollout of `step` (launched now if it was not yet), once it is done."""
        self._launch_through(step)
        return self._futures.pop(step).result()

    def launch_ahead(self, step: int) -> None:
        """During step `step`: start the rollouts up to step + k (none past the last step)."""
        self._launch_through(step + self.staleness)

    def _launch_through(self, step: int) -> None:
        for later in range(self._launched + 1, min(step, self.last_step) + 1):
            self._futures[later] = self._pool.submit(self.collect, later)
            self._launched = later

    def settle(self) -> list[StepRollout]:
        """Wait for every launched rollout; returns those not yet taken, in step order (a checkpoint keeps them)."""
        return [self._futures[step].result() for step in sorted(self._futures)]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def overlap_seconds(window: tuple[float, float], busy: list[tuple[float, float]]) -> float:
    """Seconds of `window` during which one of the `busy` intervals ran (the intervals do not overlap each other)."""
    start, end = window
    return sum(max(0.0, min(end, b_end) - max(start, b_start)) for b_start, b_end in busy)
