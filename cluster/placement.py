"""Placement: the R rollout, W reward and L learner actors of a run, started from config alone.

The three counts are independent: adding rollout workers never touches the learner. `Workers` is the driver's
handle on all of them: generate, score, greedy-evaluate, and push the learner's weights to every engine.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import ray

from actors.cores import CorePlan, core_plan
from actors.reward import ScoredBatch, create_reward_workers, score_with_workers
from actors.rollout import Completion, create_rollout_workers, generate_with_workers, request_seed
from actors.split import split_evenly
from cluster.config import Config
from cluster.data import build_prompt
from learner.batch import TrainBatch
from learner.group import LearnerGroup

T = TypeVar("T")


class WeightSyncError(RuntimeError):
    """A rollout engine reports weights that differ from the learner's after a sync."""


class EngineMismatchError(WeightSyncError):
    """A rollout engine's logprobs on the probe differ from the learner's: it computes with other weights."""


# The sync probe: every engine samples PROBE_TOKENS tokens after this question (chat-templated as in training) with
# PROBE_SEED at rollout.temperature, and the learner scores the same tokens.
PROBE_QUESTION = "A baker makes 24 rolls and sells 3 bags of 5 rolls. How many rolls are left?"
# 32 tokens, not 8: SmolLM2's bf16 engine/learner gap varies from token to token, and over 8 tokens a clean
# engine's mean reached 0.062 on one of 12 seeds, over 32 at most 0.046 (sync.verify_tolerance is 0.1).
PROBE_TOKENS = 32
PROBE_SEED = 12345


# A step's generate or score call is retried at most this often after replacing dead actors.
MAX_ATTEMPTS = 3


class Workers:
    def __init__(
        self,
        cfg: Config,
        model_dir: Path,
        rollout: list,
        reward: list,
        learner: LearnerGroup,
        probe_prompt: list[int],
        cores: CorePlan | None,
    ) -> None:
        self.cfg, self.model_dir, self.rollout, self.reward, self.learner = cfg, model_dir, rollout, reward, learner
        self.cores = cores
        self.probe_prompt = probe_prompt
        self.policy_version = 0
        self._syncs = 0
        self._sync_group_open = False
        self.faults = {"faults/rollout_restarts": 0, "faults/reward_restarts": 0}

    @classmethod
    def start(cls, cfg: Config, model_dir: Path) -> Workers:
        cores = core_plan(cfg.learner.num_ranks, cfg.rollout.num_workers, overlap=cfg.trainer.max_staleness > 0)
        learner = LearnerGroup(
            cfg.learner,
            str(model_dir),
            temperature=cfg.rollout.temperature,
            sync_dtype=cfg.rollout.dtype,
            seed=cfg.trainer.seed,
            num_gpus_per_rank=cfg.learner.gpus_per_rank,
            cores=cores.learner if cores else None,
        )
        rollout = create_rollout_workers(
            cfg.rollout,
            str(model_dir),
            cfg.trainer.seed,
            cfg.rollout.num_workers,
            num_gpus=cfg.rollout.gpus_per_worker,
            cores=cores,
        )
        reward = create_reward_workers(reward_specs(cfg), cfg.reward.timeout_s, cfg.reward.num_workers)
        probe_prompt = probe_prompt_ids(model_dir, cfg.data.response_prefix)
        return cls(cfg, model_dir, rollout, reward, learner, probe_prompt, cores)

    def generate(
        self, prompts: list[str], seed: int, step: int, first_index: int = 0, n: int | None = None
    ) -> list[Completion]:
        """n (default rollout.n) completions per prompt; the prompts are the step's prompts `first_index`,
        `first_index + 1`, ... (their sampling seeds and `prompt_index`)."""
        seeds = [request_seed(seed, step, first_index + i) for i in range(len(prompts))]
        completions = self._retrying_rollout(
            lambda: generate_with_workers(self.rollout, prompts, seeds, n or self.cfg.rollout.n)
        )
        return [replace(c, prompt_index=first_index + c.prompt_index) for c in completions]

    def generate_greedy(self, prompts: list[str]) -> list[str]:
        def call() -> list[str]:
            chunks = [c for c in split_evenly(len(prompts), len(self.rollout)) if len(c)]
            calls = [
                w.generate_greedy.remote(prompts[c.start : c.stop])
                for w, c in zip(self.rollout[: len(chunks)], chunks, strict=True)
            ]
            return [text for part in ray.get(calls) for text in part]

        return self._retrying_rollout(call)

    def score(self, texts: list[str], golds: list[str]) -> ScoredBatch:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return score_with_workers(self.reward, texts, golds)
            except ray.exceptions.RayActorError:
                if attempt == MAX_ATTEMPTS:
                    raise
                for index in _dead(self.reward):
                    ray.kill(self.reward[index])
                    [self.reward[index]] = create_reward_workers(reward_specs(self.cfg), self.cfg.reward.timeout_s, 1)
                    self.faults["faults/reward_restarts"] += 1
        raise AssertionError("unreachable")

    def _retrying_rollout(self, call: Callable[[], T]) -> T:
        """Run a rollout call; if an engine died, start a new one, give it the current weights, and redo the call.

        Seeds are per prompt, so the redone call samples exactly what the lost one would have.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return call()
            except ray.exceptions.RayActorError:
                if attempt == MAX_ATTEMPTS:
                    raise
                self._replace_dead_rollout_workers()
        raise AssertionError("unreachable")

    def _replace_dead_rollout_workers(self) -> None:
        dead = _dead(self.rollout)
        for index in dead:
            ray.kill(self.rollout[index])
            [self.rollout[index]] = create_rollout_workers(
                self.cfg.rollout,
                str(self.model_dir),
                self.cfg.trainer.seed,
                1,
                num_gpus=self.cfg.rollout.gpus_per_worker,
                first_index=index,
                cores=self.cores,
            )
            self.faults["faults/rollout_restarts"] += 1
        if dead and self.policy_version > 0:  # a new engine starts from the initial weights: bring it up to date
            self._sync_group_open = False  # a collective group lost a member; build a new one over every engine
            self.sync_weights(self.policy_version)

    def memory(self) -> dict[str, float]:
        """Largest resident memory per actor kind, MiB (a reward worker counts its scoring child).

        An actor that died since its last call is left out here; its next generate or score call replaces it.
        """
        return {
            "memory/rollout_rss_mb": _max_rss(self.rollout),
            "memory/reward_rss_mb": _max_rss(self.reward),
            "memory/learner_rss_mb": max(self.learner.rss_mb()),
        }

    def sync_weights(self, version: int) -> float:
        """Push the learner's weights into every engine, tagged with `version`; verify every engine's checksum, and
        every `sync.verify_every` syncs what the engines compute (`verify_engines`).

        object_store: rank 0 gathers and `ray.put`s the weights once; every engine loads that one copy.
        collective: rank 0 broadcasts buckets over a side gloo group (NCCL-ready layout) that engines stream in.
        Returns the probe's largest mean |engine - learner| logprob, NaN when the probe did not run.
        """
        if self.cfg.sync.transport == "object_store":
            ref, expected = self.learner.publish_weights()
            checksums = ray.get([w.load_from_wire.remote(ref, version) for w in self.rollout])
        else:
            if not self._sync_group_open:
                self.learner.open_sync_group(self.rollout)
                self._sync_group_open = True
            expected, checksums = self.learner.broadcast_weights(self.rollout, version)
        if any(c != expected for c in checksums):
            raise WeightSyncError(f"after sync v{version} engines report {checksums}, learner sent {expected}")
        self.policy_version = version
        self._syncs += 1
        every = self.cfg.sync.verify_every
        return self.verify_engines(version) if every and self._syncs % every == 0 else float("nan")

    def verify_engines(self, version: int) -> float:
        """Each engine samples the fixed probe; the learner scores the same tokens at the same temperature.

        Raises `EngineMismatchError` naming the first engine whose mean |engine - learner| logprob exceeds
        `sync.verify_tolerance`; returns the largest mean over the engines.
        """
        probes = ray.get([w.probe.remote(self.probe_prompt, PROBE_TOKENS, PROBE_SEED) for w in self.rollout])
        batch = TrainBatch(
            prompt_token_ids=[self.probe_prompt] * len(probes),
            completion_token_ids=[tokens for tokens, _ in probes],
            advantages=[0.0] * len(probes),
            engine_logprobs=[logprobs for _, logprobs in probes],
            group_ids=list(range(len(probes))),
        )
        learner = self.learner.logprobs(batch)
        mismatches = [
            statistics.fmean(abs(e - lp) for e, lp in zip(engine, ours, strict=True))
            for engine, ours in zip(batch.engine_logprobs, learner, strict=True)
        ]
        tolerance = self.cfg.sync.verify_tolerance
        for index, mismatch in enumerate(mismatches):
            if not mismatch <= tolerance:  # NaN fails too
                raise EngineMismatchError(
                    f"rollout worker {index} after weight sync v{version}: mean |engine - learner| logprob on the "
                    f"sync probe is {mismatch:.4f} > sync.verify_tolerance={tolerance} (its weight checksum matched, "
                    "so the engine computes with weights other than the ones it was sent)"
                )
        return max(mismatches)

    def advance_version(self, version: int) -> None:
        """A step that changed no weight: every engine is already current, only the version number moves on."""
        ray.get([w.set_policy_version.remote(version) for w in self.rollout])
        self.policy_version = version

    def shutdown(self) -> None:
        for handle in [*self.rollout, *self.reward]:
            ray.kill(handle)
        self.learner.shutdown()


def _max_rss(actors: list) -> float:
    sizes = []
    for actor in actors:
        try:
            sizes.append(ray.get(actor.rss_mb.remote(), timeout=30))
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue
    return max(sizes, default=float("nan"))


def _dead(actors: list) -> list[int]:
    """Indices of actors that no longer answer."""
    dead = []
    for index, actor in enumerate(actors):
        try:
            ray.get(actor.health.remote(), timeout=30)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            dead.append(index)
    return dead


def probe_prompt_ids(model_dir: Path, response_prefix: str) -> list[int]:
    """The sync probe's prompt, as a training prompt is written (chat template, then `data.response_prefix`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer(build_prompt(tokenizer, PROBE_QUESTION, response_prefix), add_special_tokens=False).input_ids


def reward_specs(cfg: Config) -> list[str]:
    return [s.strip() for s in cfg.reward.functions.split(",") if s.strip()]
