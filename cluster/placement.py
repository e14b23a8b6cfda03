"""Placement: the R rollout, W reward and L learner actors of a run, started from config alone.

The three counts are independent: adding rollout workers never touches the learner. `Workers` is the driver's
handle on all of them: generate, score, greedy-evaluate, and push the learner's weights to every engine.
"""

from __future__ import annotations

from pathlib import Path

import ray

from actors.reward import ScoredBatch, create_reward_workers, score_with_workers
from actors.rollout import Completion, create_rollout_workers, generate_with_workers, request_seed
from actors.split import split_evenly
from cluster.config import Config
from learner.group import LearnerGroup


class WeightSyncError(RuntimeError):
    """A rollout engine reports weights that differ from the learner's after a sync."""


class Workers:
    def __init__(self, cfg: Config, rollout: list, reward: list, learner: LearnerGroup) -> None:
        self.cfg, self.rollout, self.reward, self.learner = cfg, rollout, reward, learner
        self.policy_version = 0
        self._sync_group_open = False

    @classmethod
    def start(cls, cfg: Config, model_dir: Path) -> Workers:
        learner = LearnerGroup(
            cfg.learner,
            str(model_dir),
            sync_dtype=cfg.rollout.dtype,
            seed=cfg.trainer.seed,
            num_gpus_per_rank=cfg.learner.gpus_per_rank,
        )
        rollout = create_rollout_workers(
            cfg.rollout, str(model_dir), cfg.trainer.seed, cfg.rollout.num_workers, num_gpus=cfg.rollout.gpus_per_worker
        )
        reward = create_reward_workers(reward_specs(cfg), cfg.reward.timeout_s, cfg.reward.num_workers)
        return cls(cfg, rollout, reward, learner)

    def generate(self, prompts: list[str], seed: int, step: int) -> list[Completion]:
        seeds = [request_seed(seed, step, i) for i in range(len(prompts))]
        return generate_with_workers(self.rollout, prompts, seeds, self.cfg.rollout.n)

    def generate_greedy(self, prompts: list[str]) -> list[str]:
        chunks = [c for c in split_evenly(len(prompts), len(self.rollout)) if len(c)]
        calls = [
            w.generate_greedy.remote(prompts[c.start : c.stop])
            for w, c in zip(self.rollout[: len(chunks)], chunks, strict=True)
        ]
        return [text for part in ray.get(calls) for text in part]

    def score(self, completions: list[Completion] | list[str], golds: list[str]) -> ScoredBatch:
        texts = [c if isinstance(c, str) else c.text for c in completions]
        return score_with_workers(self.reward, texts, golds)

    def sync_weights(self, version: int) -> None:
        """Push the learner's weights into every engine, tagged with `version`; verify every engine's checksum.

        object_store: rank 0 gathers and `ray.put`s the weights once; every engine loads that one copy.
        collective: rank 0 broadcasts buckets over a side gloo group (NCCL-ready layout) that engines stream in.
        """
        if self.cfg.sync.transport == "object_store":
            ref, expected = self.learner.publish_weights()
            checksums = ray.get([w.load_weights.remote(ref, version) for w in self.rollout])
        else:
            if not self._sync_group_open:
                self.learner.open_sync_group(self.rollout)
                self._sync_group_open = True
            expected, checksums = self.learner.broadcast_weights(self.rollout, version)
        if any(c != expected for c in checksums):
            raise WeightSyncError(f"after sync v{version} engines report {checksums}, learner sent {expected}")
        self.policy_version = version

    def shutdown(self) -> None:
        for handle in [*self.rollout, *self.reward]:
            ray.kill(handle)
        self.learner.shutdown()


def reward_specs(cfg: Config) -> list[str]:
    return [s.strip() for s in cfg.reward.functions.split(",") if s.strip()]
