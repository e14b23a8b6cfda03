"""The rollout engines of a run, placed independently of the learner, each in a one-bundle placement group.

A placement group of its own per engine lets the driver ask "does the cluster have room for one more engine?" and
get an answer (the group is placed within a short wait, or it is removed again) without leaving an actor pending
forever; the bundle names the engine's cores, GPU share and, with `rollout.resource`, the nodes it may use.

    pool = RolloutPool(cfg, model_dir)
    new = pool.place(3, required=1)   # start up to 3 engines: wait for room for 1, the others only if room is there
    pool.engines += new               # (after each was given the current weights)
    pool.remove(pool.engines[0])      # kill it and free its bundle

`Workers` (cluster/placement.py) decides when: at step boundaries, and when an engine is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from actors.cores import CorePlan
from actors.rollout import create_rollout_workers, engine_bundle
from cluster.config import Config

REQUIRED_WAIT_S = 600.0
"""How long an engine the run cannot go on without may wait for room before the run stops with an error."""

OPTIONAL_WAIT_S = 2.0
"""How long an extra (elastic) engine may wait for room: the cluster has it now, or the step goes on without it."""


class NoRolloutRoomError(RuntimeError):
    """The cluster has no room for a rollout engine the run needs (every engine was lost, or the start needs more)."""


@dataclass(frozen=True, eq=False)  # identity: two engines are never equal
class Engine:
    handle: Any
    """The Ray actor (`actors.rollout.RolloutEngine`)."""
    index: int
    """Rollout worker number in this run, never reused (logs name engines by it)."""
    placement: PlacementGroup


class RolloutPool:
    def __init__(self, cfg: Config, model_dir: Path, cores: CorePlan | None = None) -> None:
        """`cores`: the rollout's share of a local machine's cores while rollout overlaps training (else None)."""
        self.cfg, self.model_dir, self.cores = cfg, model_dir, cores
        self.engines: list[Engine] = []
        self._next_index = 0

    @property
    def handles(self) -> list:
        return [engine.handle for engine in self.engines]

    def place(self, count: int, required: int) -> list[Engine]:
        """Start up to `count` new engines and wait until each is up: the first `required` wait for room (up to
        `REQUIRED_WAIT_S`, else `NoRolloutRoomError`), the others start only where the cluster has room now.

        The new engines are not in `engines` yet: the caller gives them the current weights first.
        """
        placements: list[PlacementGroup] = []
        for number in range(count):
            placement = self._reserve(wait_s=REQUIRED_WAIT_S if number < required else OPTIONAL_WAIT_S)
            if placement is None:
                if number < required:
                    raise NoRolloutRoomError(
                        f"no room on the cluster for rollout engine {number + 1} of the {required} the run needs "
                        f"({engine_bundle(self.cfg.rollout)} each; waited {REQUIRED_WAIT_S:.0f} s; available: "
                        f"{ray.available_resources()})"
                    )
                break
            placements.append(placement)
        if not placements:
            return []
        first = self._next_index
        self._next_index += len(placements)
        handles = create_rollout_workers(
            self.cfg.rollout,
            str(self.model_dir),
            self.cfg.trainer.seed,
            len(placements),
            first_index=first,
            placements=placements,
            cores=self.cores,
        )
        return [Engine(h, first + i, p) for i, (h, p) in enumerate(zip(handles, placements, strict=True))]

    def _reserve(self, wait_s: float) -> PlacementGroup | None:
        bundle = engine_bundle(self.cfg.rollout)
        available = ray.available_resources()
        if wait_s < REQUIRED_WAIT_S and any(available.get(k, 0.0) < v for k, v in bundle.items()):
            return None  # not even the whole cluster has that much free: skip the wait
        placement = placement_group([bundle])
        if placement.wait(timeout_seconds=wait_s):
            return placement
        remove_placement_group(placement)
        return None

    def remove(self, engine: Engine) -> None:
        """Stop an engine (dead or alive) and free its bundle."""
        if engine in self.engines:
            self.engines.remove(engine)
        ray.kill(engine.handle)
        remove_placement_group(engine.placement)

    def shutdown(self) -> None:
        for engine in list(self.engines):
            self.remove(engine)
