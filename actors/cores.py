"""Which cores the actors of a local cluster compute on while rollout and training overlap.

With `trainer.max_staleness` = 0 rollout and training alternate, so each phase may use every core (no plan; the
threads per actor come from `engine_cpus` and the learner's own default). With k >= 1 both phases run at once: the
learner ranks get the first half of the machine's cores and the rollout engines the other half, each actor pinned
to its share (`sched_setaffinity`) with as many threads as cores, so the two phases never contend for a core. On a
cluster joined through RAY_ADDRESS, Ray's CPU accounting places the actors instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from actors.split import split_evenly


@dataclass(frozen=True)
class CorePlan:
    learner: list[list[int]]
    """Cores of each learner rank."""
    rollout: list[list[int]]
    """Core sets for the rollout engines; engine i takes set i mod len (a replacement takes its predecessor's)."""

    def engine_cores(self, worker_index: int) -> list[int]:
        return self.rollout[worker_index % len(self.rollout)]


def core_plan(num_ranks: int, num_engines: int, overlap: bool) -> CorePlan | None:
    """The learner/rollout split of this machine's cores for an overlapping local run, else None."""
    if not overlap or os.environ.get("RAY_ADDRESS"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) == 1:  # nothing to split: both phases share the core (and gain nothing from overlapping)
        return CorePlan(learner=[cores] * num_ranks, rollout=[cores])
    half = len(cores) // 2
    return CorePlan(learner=_share(cores[:half], num_ranks), rollout=_share(cores[half:], num_engines))


def _share(cores: list[int], actors: int) -> list[list[int]]:
    """Disjoint near-equal slices for `actors` actors; with fewer cores than actors, actors share single cores."""
    if actors <= len(cores):
        return [cores[part.start : part.stop] for part in split_evenly(len(cores), actors)]
    return [[cores[i % len(cores)]] for i in range(actors)]


def pin_to_cores(cores: list[int]) -> None:
    """Run this process (and the threads it starts from now on) on `cores` only."""
    os.sched_setaffinity(0, cores)
