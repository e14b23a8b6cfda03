"""Weight sync behind one interface: push a version to the engines, add an engine, remove one; one call each.

    sync = make_weight_sync(cfg.sync.transport, learner)
    lost = sync.push(engines, version)     # the learner's weights now, as `version`, into every engine
    ok = sync.add_engine(engine, version)  # a new engine: the last PUSHED weights, tagged `version`, before it samples
    sync.remove_engine(engine)             # an engine leaves (lost with its node, or dropped)

`push` returns the engines that died during it instead of raising: the caller replaces them like engines lost in
generate, and a replacement's `add_engine` loads the version that was just pushed. Every engine that survived a
push holds that version when `push` returns. A checksum that differs from the learner's raises `WeightSyncError`.

`add_engine` loads what was last pushed, not what the learner holds now: while a rollout overlaps training the
learner is ahead of the engines, and a newcomer must sample with the engines' version.

Transports (which fits which layout: README, "Several nodes"):
- `ObjectStoreSync`: learner rank 0 gathers the full weights and `ray.put`s them once; each engine reads that one
  copy (from its node's object store; Ray moves it between nodes). The driver keeps the last copy's reference, so a
  newcomer loads exactly the pushed version. No group: adding or losing an engine changes nothing for the others.
- `CollectiveSync`: a side gloo group over rank 0 and the engines, bucketed broadcasts. The group is fixed, so any
  change of members (an engine added, removed or lost) rebuilds it at the next push, which runs at a step boundary.
  Rank 0 keeps the last pushed weights; a newcomer, or an engine that a broadcast broken by a dying member left
  half-loaded, catches up from an object-store copy of them. Rank 0 aborts a broken group, so the other members
  fail at once instead of waiting for gloo's timeout.
- On GPUs, vLLM's own trainer-to-engine API (`vllm/distributed/weight_transfer/`, NCCL or CUDA IPC) would be a
  third implementation of these three calls; it needs CUDA vLLM, which this project cannot run here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import ray

from learner.group import LearnerGroup


class WeightSyncError(RuntimeError):
    """A rollout engine reports weights that differ from the learner's after a sync."""


class WeightSync(ABC):
    def __init__(self, learner: LearnerGroup) -> None:
        self.learner = learner

    @abstractmethod
    def push(self, engines: list, version: int) -> list:
        """The learner's current weights into every engine, as `version`; returns the engines that died."""

    @abstractmethod
    def add_engine(self, engine: Any, version: int) -> bool:
        """Give a new engine the last pushed weights (none pushed yet: its initial ones), tagged `version`.

        False: the engine died while catching up (it takes no part in later pushes).
        """

    @abstractmethod
    def remove_engine(self, engine: Any) -> None:
        """An engine leaves the set that later pushes reach."""

    @staticmethod
    def advance(engines: list, version: int) -> list:
        """A step that changed no weight: only the version number moves on. Returns the engines that died."""
        outcomes = _outcomes([e.set_policy_version.remote(version) for e in engines])
        return [e for e, o in zip(engines, outcomes, strict=True) if isinstance(o, ray.exceptions.RayActorError)]


class ObjectStoreSync(WeightSync):
    def __init__(self, learner: LearnerGroup) -> None:
        super().__init__(learner)
        # The last pushed weights and their checksum. Holding the reference keeps the object alive (rank 0 owns
        # it), so a newcomer loads the very copy the others loaded; the next push releases it.
        self._pushed: tuple[ray.ObjectRef, str] | None = None

    def push(self, engines: list, version: int) -> list:
        self._pushed = self.learner.publish_weights()
        return _load(engines, *self._pushed, version)

    def add_engine(self, engine: Any, version: int) -> bool:
        if self._pushed is None:
            return not self.advance([engine], version)
        return not _load([engine], *self._pushed, version)

    def remove_engine(self, engine: Any) -> None:
        """Nothing to change: there is no group, each push reaches the engines it is given."""


class CollectiveSync(WeightSync):
    def __init__(self, learner: LearnerGroup) -> None:
        super().__init__(learner)
        self._members: list | None = None  # the engines the open side group spans (None: no usable group)
        self._pushed_any = False

    def remove_engine(self, engine: Any) -> None:
        self._members = None  # the group has a member fewer: rebuilt at the next push

    def add_engine(self, engine: Any, version: int) -> bool:
        self._members = None  # rebuilt with the newcomer at the next push
        if not self._pushed_any:
            return not self.advance([engine], version)
        return not _load([engine], *self.learner.publish_pushed(), version)

    def push(self, engines: list, version: int) -> list:
        if self._members != engines:
            self.learner.open_sync_group(engines)
            self._members = list(engines)
        receives = [e.receive_weights.remote(version) for e in engines]
        try:
            expected: str | None = self.learner.broadcast_weights()
            broken: ray.exceptions.RayTaskError | None = None
        except ray.exceptions.RayTaskError as err:  # a member died mid-broadcast: rank 0 aborted the group
            expected, broken = None, err
        self._pushed_any = True  # rank 0 kept these weights before broadcasting them
        outcomes = _outcomes(receives)
        lost = [e for e, o in zip(engines, outcomes, strict=True) if isinstance(o, ray.exceptions.RayActorError)]
        failed = [e for e, o in zip(engines, outcomes, strict=True) if isinstance(o, ray.exceptions.RayTaskError)]
        if not lost:  # nobody died, so any failure is a real error, not a lost member's echo
            if broken is not None or failed:
                raise broken or next(o for o in outcomes if isinstance(o, ray.exceptions.RayTaskError))
            _check(version, str(expected), outcomes)
            return []
        self._members = None  # a member is gone: the next push builds a new group
        if expected is None or failed:
            # Survivors of a broken broadcast may hold half a model: reload them from rank 0's copy of this push.
            ref, expected = self.learner.publish_pushed()
            lost += _load(failed, ref, expected, version)
        _check(version, expected, [o for o in outcomes if isinstance(o, str)])
        return lost


def make_weight_sync(transport: str, learner: LearnerGroup) -> WeightSync:
    return {"object_store": ObjectStoreSync, "collective": CollectiveSync}[transport](learner)


def _outcomes(refs: list[ray.ObjectRef]) -> list[Any]:
    """Each call's result, or the Ray error it ended with (an engine's death does not hide the others' results)."""
    outcomes: list[Any] = []
    for ref in refs:
        try:
            outcomes.append(ray.get(ref))
        except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as err:
            outcomes.append(err)
    return outcomes


def _load(engines: list, ref: ray.ObjectRef, expected: str, version: int) -> list:
    """Every engine loads the object-store copy `ref`; checks the checksums, returns the engines that died."""
    outcomes = _outcomes([e.load_from_wire.remote(ref, version) for e in engines])
    failures = [o for o in outcomes if isinstance(o, ray.exceptions.RayTaskError)]
    if failures:
        raise failures[0]
    _check(version, expected, [o for o in outcomes if isinstance(o, str)])
    return [e for e, o in zip(engines, outcomes, strict=True) if isinstance(o, ray.exceptions.RayActorError)]


def _check(version: int, expected: str, checksums: list[str]) -> None:
    if any(c != expected for c in checksums):
        raise WeightSyncError(f"after sync v{version} engines report {checksums}, learner sent {expected}")
