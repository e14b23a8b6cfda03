"""Placement: the R rollout, W reward and L learner actors of a run, started from config alone.

The three counts are independent: adding rollout workers never touches the learner. `Workers` is the driver's
handle on all of them: generate, score, greedy-evaluate, push the learner's weights to every engine
(`cluster/weight_sync.py`), and, at step boundaries, grow or shrink the rollout pool (`cluster/rollout_pool.py`).

Learner ranks sit in a placement group of their own (`learner/group.py`); rollout engines each in a one-bundle
group; reward actors anywhere. `rollout.resource`, `reward.resource` and `learner.resource` pin each kind to the
nodes that offer a custom Ray resource of that name.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import ray
from tqdm import tqdm

from actors.cores import core_plan
from actors.reward import ScoredBatch, create_reward_workers, score_with_workers
from actors.rollout import Completion, generate_with_workers, request_seed
from actors.split import split_evenly
from cluster.config import Config
from cluster.data import build_prompt
from cluster.rollout_pool import Engine, RolloutPool
from cluster.weight_sync import WeightSyncError, make_weight_sync
from learner.batch import TrainBatch
from learner.group import LearnerGroup

T = TypeVar("T")

__all__ = ["EngineMismatchError", "WeightSyncError", "Workers"]


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
        pool: RolloutPool,
        reward: list,
        learner: LearnerGroup,
        probe_prompt: list[int],
    ) -> None:
        self.cfg, self.model_dir, self.pool, self.reward, self.learner = cfg, model_dir, pool, reward, learner
        self.probe_prompt = probe_prompt
        self.sync = make_weight_sync(cfg.sync.transport, learner)
        self.policy_version = 0
        self._syncs = 0
        # rollout_restarts: engines lost (and replaced where the cluster had room); reward_restarts: replaced.
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
            cores=cores.learner if cores else None,
            block=False,  # the ranks load the model while the engines start: start-up is the longer of the two
        )
        pool = RolloutPool(cfg, model_dir, cores)
        pool.engines = pool.place(cfg.rollout.num_workers, required=cfg.rollout.num_workers)
        reward = create_reward_workers(
            cfg.reward.specs, cfg.reward.timeout_s, cfg.reward.num_workers, resource=cfg.reward.resource
        )
        learner.wait_until_ready()
        return cls(cfg, model_dir, pool, reward, learner, probe_prompt_ids(model_dir, cfg.data.response_prefix))

    @property
    def rollout(self) -> list:
        """The rollout engines' actor handles, in the order prompts are split over them."""
        return self.pool.handles

    def generate(
        self, prompts: list[str], seed: int, step: int, first_index: int = 0, n: int | None = None
    ) -> list[Completion]:
        """n (default rollout.n) completions per prompt on the engines present now; the prompts are the step's
        prompts `first_index`, `first_index + 1`, ... (their sampling seeds and `prompt_index`). Called from one
        thread at a time, possibly not the main one: only a lost engine changes the pool here, and the step boundary
        is not running meanwhile."""
        seeds = [request_seed(seed, step, first_index + i) for i in range(len(prompts))]
        completions = self._retrying_rollout(
            lambda: generate_with_workers(self.rollout, prompts, seeds, n or self.cfg.rollout.n)
        )
        return [replace(c, prompt_index=first_index + c.prompt_index) for c in completions]

    def generate_greedy(self, prompts: list[str]) -> list[str]:
        def call() -> list[str]:
            engines = self.rollout
            chunks = [c for c in split_evenly(len(prompts), len(engines)) if len(c)]
            calls = [
                w.generate_greedy.remote(prompts[c.start : c.stop])
                for w, c in zip(engines[: len(chunks)], chunks, strict=True)
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
                    [self.reward[index]] = create_reward_workers(
                        self.cfg.reward.specs, self.cfg.reward.timeout_s, 1, resource=self.cfg.reward.resource
                    )
                    self.faults["faults/reward_restarts"] += 1
        raise AssertionError("unreachable")

    def _retrying_rollout(self, call: Callable[[], T]) -> T:
        """Run a rollout call; if an engine died, drop it, top the pool up (`rescale`), and redo the whole call.

        Seeds are per prompt, so the redone call samples what the lost one would have (exactly, for engines with
        the same thread count); a lost engine costs the redo of the step's prompts, no more.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return call()
            except ray.exceptions.RayActorError:
                if attempt == MAX_ATTEMPTS:
                    raise
                self.rescale()
        raise AssertionError("unreachable")

    def rescale(self) -> int:
        """Drop lost engines and add new ones where the cluster has room; returns the number of engines now.

        Call only while no rollout is in flight (a step boundary, or a rollout call that just failed). A fixed pool
        (`rollout.max_workers` = `num_workers`) replaces every lost engine, waiting for room; an elastic one grows
        to `rollout.max_workers` where there is room and goes on with fewer, down to 1. Each new engine gets the
        engines' current version (the last pushed weights) before it samples anything. Logs a line when the set
        of engines changed.
        """
        with self._logging_changes():
            self._drop([self.pool.engines[i] for i in _dead(self.rollout)])
            self._top_up()
        return len(self.pool.engines)

    @contextmanager
    def _logging_changes(self) -> Iterator[None]:
        """One log line when the set of engines changed within the block."""
        before = [e.index for e in self.pool.engines]
        yield
        after = [e.index for e in self.pool.engines]
        if after != before:
            left = sorted(set(before) - set(after))
            joined = sorted(set(after) - set(before))
            tqdm.write(
                f"rollout workers: {len(before)} -> {len(after)} (lost {left or 'none'}, joined {joined or 'none'}; "
                f"all at policy version {self.policy_version})"
            )

    def _drop(self, engines: list[Engine]) -> None:
        for engine in engines:
            self.sync.remove_engine(engine.handle)
            self.pool.remove(engine)
            self.faults["faults/rollout_restarts"] += 1

    def _top_up(self) -> None:
        """Engines up to `rollout.max_workers` where there is room; at least the pool's floor, waiting for room."""
        rollout = self.cfg.rollout
        floor = 1 if rollout.elastic else rollout.num_workers
        for _ in range(MAX_ATTEMPTS):
            missing = rollout.most_workers - len(self.pool.engines)
            new = self.pool.place(missing, required=max(0, floor - len(self.pool.engines))) if missing else []
            for engine in new:
                if self.sync.add_engine(engine.handle, self.policy_version):
                    self.pool.engines.append(engine)
                else:  # lost while catching up
                    self.pool.remove(engine)
            if len(self.pool.engines) >= floor:
                return
        raise RuntimeError(f"rollout engines keep dying while they start: {len(self.pool.engines)} of {floor} left")

    def _lost(self, handles: list) -> None:
        """Engines that died during a weight sync: replaced (or, elastic, dropped) like those lost in generate."""
        if handles:
            with self._logging_changes():
                self._drop([e for e in self.pool.engines if e.handle in handles])
                self._top_up()

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

        The transport (`sync.transport`, cluster/weight_sync.py) does the transfer; an engine that dies during it
        is replaced (elastic: dropped) and its replacement loads this same version before it samples anything.
        Returns the probe's largest mean |engine - learner| logprob, NaN when the probe did not run.
        """
        lost = self.sync.push(self.rollout, version)
        self.policy_version = version
        self._lost(lost)
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
        lost = self.sync.advance(self.rollout, version)
        self.policy_version = version
        self._lost(lost)

    def shutdown(self) -> None:
        self.pool.shutdown()
        for handle in self.reward:
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
