"""The learner actor group: L Ray actors, one FSDP2 rank each, driven together by the driver.

group = LearnerGroup(cfg.learner, model_dir, temperature=0.7, sync_dtype="bfloat16", seed=0)
metrics, logprobs = group.train_step(batch)  # rows with signal split across ranks by group, one global token count
ref, checksum = group.publish_weights()      # object-store sync: one ray.put on rank 0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from learner.batch import TrainBatch
from learner.grpo import loss_denominator
from learner.learner_rank import LearnerRank
from learner.rendezvous import node_address_and_port

if TYPE_CHECKING:
    from cluster.config import LearnerConfig


# How long the learner's placement group may wait for room on the cluster before the run stops with an error.
PLACEMENT_TIMEOUT_S = 600.0


def learner_bundles(cfg: LearnerConfig) -> list[dict[str, float]]:
    """One placement-group bundle per rank: its CPU, its GPU share, and the node resource that pins it."""
    bundle = {"CPU": 1.0}
    if cfg.gpus_per_rank:
        bundle["GPU"] = cfg.gpus_per_rank
    if cfg.resource:
        bundle[cfg.resource] = 0.001
    return [dict(bundle) for _ in range(cfg.num_ranks)]


class LearnerRankDiedError(RuntimeError):
    """A learner rank's process died; the run cannot go on without it (resume from the last checkpoint)."""


class LearnerGroup:
    def __init__(
        self,
        cfg: LearnerConfig,
        model_dir: str,
        temperature: float,
        sync_dtype: str,
        seed: int,
        cores: list[list[int]] | None = None,
        block: bool = True,
    ) -> None:
        """`cores`: each rank's cores while rollout overlaps training (actors/cores.py), else None. `block=False`
        returns as soon as the ranks are created, so the caller can start other actors while the ranks load the
        model; it must then call `wait_until_ready` before anything else."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg = cfg
        # PACK: ranks share a node where one has room (the gradient all-reduce stays local), spill over otherwise.
        self.placement = placement_group(learner_bundles(cfg), strategy="PACK")
        if not self.placement.wait(timeout_seconds=PLACEMENT_TIMEOUT_S):
            ray.util.remove_placement_group(self.placement)
            raise RuntimeError(
                f"the cluster has no room for {cfg.num_ranks} learner ranks of {learner_bundles(cfg)[0]} "
                f"(waited {PLACEMENT_TIMEOUT_S:.0f} s; available: {ray.available_resources()})"
            )

        def bundle(index: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=index)

        # The rendezvous is hosted by rank 0, so its address and port are taken on bundle 0's node.
        addr, port = ray.get(node_address_and_port.options(scheduling_strategy=bundle(0)).remote())
        actor_cls = ray.remote(LearnerRank)
        self.ranks = [
            actor_cls.options(num_cpus=1, num_gpus=cfg.gpus_per_rank, scheduling_strategy=bundle(rank)).remote(
                rank, cfg.num_ranks, addr, port, model_dir, cfg, temperature, sync_dtype, seed, own
            )
            for rank, own in enumerate(cores or [None] * cfg.num_ranks)
        ]
        self._starting = [r.ready.remote() for r in self.ranks]
        if block:
            self.wait_until_ready()

    def wait_until_ready(self) -> None:
        self._gather(self._starting, "start")

    @staticmethod
    def _gather(refs: list[ray.ObjectRef], what: str) -> list[Any]:
        """Results in rank order, taking them as they finish: a dead rank is reported at once, by number, instead
        of the live ranks blocking in a collective that waits for it (gloo's timeout is 30 minutes)."""
        results: dict[int, Any] = {}
        pending = list(refs)
        while pending:
            [ready], pending = ray.wait(pending, num_returns=1)
            rank = refs.index(ready)
            try:
                results[rank] = ray.get(ready)
            except ray.exceptions.RayActorError as err:
                raise _rank_died(rank, what, err) from err
            except ray.exceptions.RayTaskError as err:
                # A collective fails on every live rank when a peer dies (gloo: "Connection reset by peer"), and
                # that echo can arrive first: report the death it echoes, if there is one.
                died = LearnerGroup._death_among(refs, pending, what)
                if died is None:
                    raise
                raise died from err
        return [results[rank] for rank in range(len(refs))]

    @staticmethod
    def _death_among(refs: list[ray.ObjectRef], pending: list[ray.ObjectRef], what: str) -> Exception | None:
        """The first rank among `pending` whose actor died (waiting up to 10 s for Ray to notice), else None."""
        finished, _ = ray.wait(pending, num_returns=len(pending), timeout=10.0) if pending else ([], [])
        for ref in finished:
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                return _rank_died(refs.index(ref), what, err)
            except ray.exceptions.RayTaskError:
                continue
        return None

    def _all(self, method: str, *args: Any) -> list[Any]:
        return self._gather([getattr(rank, method).remote(*args) for rank in self.ranks], method)

    def train_step(self, batch: TrainBatch) -> tuple[dict[str, float], list[float | None]]:
        """One update over the step's batch. Returns the metrics and each row's summed logprob from the learner's
        first pass (None for a row it did not forward).

        With `skip_zero_advantage`, rows whose advantage is exactly 0 are not sent at all: without a KL term they add
        exactly nothing to the loss or the gradient. The loss still divides by the whole step's tokens / rows, so
        the update is the full batch's. A step where no row has signal runs no pass and no optimizer step. With a KL
        term (`kl_coef` > 0) every row is trained: its KL to the reference has a gradient whatever its advantage.
        """
        skip = self.cfg.skip_zero_advantage and self.cfg.kl_coef == 0
        signal = [i for i, a in enumerate(batch.advantages) if a != 0.0 or not skip]
        shards = split_by_group(batch, signal, len(self.ranks))
        # Known before the first micro-batch, so every micro-batch's loss is its exact share of the step's.
        denominator = loss_denominator(self.cfg.loss_agg, max(1, batch.num_tokens), len(batch), self.cfg.loss_agg_norm)
        refs = [
            r.train_step.remote(batch.rows(rows), denominator, len(signal))
            for r, rows in zip(self.ranks, shards, strict=True)
        ]
        results = self._gather(refs, "train_step")
        learner_logprobs = unshard(shards, [sums for _, sums in results], len(batch))
        metrics = {**results[0][0], "train/rows_trained": float(len(signal))}  # ranks return the same reduced metrics
        return metrics, learner_logprobs

    def logprobs(self, batch: TrainBatch) -> list[list[float]]:
        shards = split_by_group(batch, list(range(len(batch))), len(self.ranks))
        parts = self._gather(
            [r.logprobs.remote(batch.rows(s)) for r, s in zip(self.ranks, shards, strict=True)], "logprobs"
        )
        return unshard(shards, parts, len(batch))  # every row was sent, so none is None

    def publish_weights(self) -> tuple[ray.ObjectRef, str]:
        """One object-store copy of the full weights, and their checksum."""
        [ref], checksum = self._all("publish_weights")[0]
        return ref, checksum

    def open_sync_group(self, rollout_workers: list) -> None:
        """`collective` transport: learner rank 0 plus every rollout engine join one side gloo group."""
        host, port = ray.get(self.ranks[0].sync_endpoint.remote())
        world = len(rollout_workers) + 1
        joins = [self.ranks[0].open_sync_group.remote(host, port, world)]
        joins += [w.join_sync_group.remote(host, port, i + 1, world) for i, w in enumerate(rollout_workers)]
        ray.get(joins)  # every member blocks until all have joined

    def broadcast_weights(self) -> str:
        """`collective` transport: rank 0 sends one bucketed broadcast (the engines must be receiving); returns the
        checksum of what it sent."""
        return self._all("broadcast_weights")[0]

    def publish_pushed(self) -> tuple[ray.ObjectRef, str]:
        """`collective` transport: an object-store copy of the last broadcast's weights, and their checksum."""
        [ref], checksum = ray.get(self.ranks[0].publish_pushed.remote())
        return ref, checksum

    def checksum(self) -> str:
        return self._all("checksum")[0]

    def save_hf(self, out_dir: str) -> None:
        self._all("save_hf", out_dir)

    def save_checkpoint(self, ckpt_dir: str) -> None:
        self._all("save_checkpoint", ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> None:
        self._all("load_checkpoint", ckpt_dir)

    def rss_mb(self) -> list[float]:
        return self._all("rss_mb")

    def set_nan_hook(self, step: int | None) -> None:
        self._all("set_nan_hook", step)

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        ray.util.remove_placement_group(self.placement)


def split_by_group(batch: TrainBatch, rows: list[int], num_ranks: int) -> list[list[int]]:
    """Share `rows` among ranks whole groups at a time (a group's prompt is computed once, on one rank), largest
    group first onto the rank with the fewest tokens so far, so ranks finish together."""
    groups: dict[int, list[int]] = {}
    for row in rows:
        groups.setdefault(batch.group_ids[row], []).append(row)

    def tokens(members: list[int]) -> int:
        return len(batch.prompt_token_ids[members[0]]) + sum(len(batch.completion_token_ids[r]) for r in members)

    shards: list[list[int]] = [[] for _ in range(num_ranks)]
    load = [0] * num_ranks
    for members in sorted(groups.values(), key=tokens, reverse=True):
        rank = load.index(min(load))
        shards[rank] += members
        load[rank] += tokens(members)
    return [sorted(shard) for shard in shards]


def unshard(shards: list[list[int]], parts: list[list[Any]], size: int) -> list[Any]:
    """Put each rank's per-row results back at their rows' places in the batch; None for rows no rank had."""
    rows: list[Any] = [None] * size
    for shard, part in zip(shards, parts, strict=True):
        for row, value in zip(shard, part, strict=True):
            rows[row] = value
    return rows


def _rank_died(rank: int, what: str, err: Exception) -> LearnerRankDiedError:
    return LearnerRankDiedError(f"learner rank {rank} died during {what}: {err.__class__.__name__}")
