"""The driver: GRPO on GSM8K with Ray actors, one step at a time.

Per step k (1-based; version 0 is the initial weights, so step k samples with version k-1):

    prompts      = B GSM8K questions (a pure function of seed and step, so resume needs no data cursor)
    completions  = rollout workers sample n per prompt with vLLM             time/rollout
    rewards      = reward workers score each completion (time-bounded)       time/reward
    advantages   = (r - mean_group) / (std_group + eps)
    learner step = rows with signal only: old logprobs, clipped loss, AdamW   time/train
    weight sync  = new weights, version k, into every rollout worker         time/sync
                   (no optimizer step applied: version k = version k-1, nothing moves)
    log          = metrics.jsonl + wandb, rollouts.jsonl, rewards.png

plus eval (greedy, held-out test questions) and checkpoints on their schedules.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from actors.resources import process_tree_rss_mb
from actors.rollout import engine_cpus
from cluster.config import Config
from cluster.data import (
    DataError,
    Problem,
    build_prompt,
    eval_problem_indices,
    load_problems,
    response_text,
    step_problem_indices,
)
from cluster.model_source import resolve_model_path
from cluster.run_dir import RunDir
from cluster.step import build_step_records, eval_record, format_samples, train_batch
from cluster.watchdog import start_watchdog
from learner.grpo import group_advantages

if TYPE_CHECKING:
    from cluster.placement import Workers

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PreparedRun:
    """Everything checked and loaded before a single actor starts."""

    cfg: Config
    run_dir: RunDir
    resume_step: int
    model_dir: Path
    train_problems: list[Problem]
    eval_problems: list[Problem]


def prepare_run(cfg: Config) -> PreparedRun:
    """Validate run directory, data and model (cheapest first); raises the input errors launch.py maps to exit 2."""
    run_dir = RunDir(cfg.trainer.run_dir)
    resume_step = run_dir.check_usable(cfg)
    train_problems = load_problems(cfg.data.source, "train")
    if cfg.data.prompts_per_step > len(train_problems):
        raise DataError(
            f"data.prompts_per_step={cfg.data.prompts_per_step} exceeds the {len(train_problems)} training rows"
        )
    test_problems = load_problems(cfg.data.source, "test") if cfg.trainer.eval_size else []
    eval_rows = eval_problem_indices(len(test_problems), cfg.trainer.eval_size, cfg.trainer.seed)
    model_dir = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    return PreparedRun(cfg, run_dir, resume_step, model_dir, train_problems, [test_problems[i] for i in eval_rows])


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"time/{name}"] = time.perf_counter() - start


def init_ray(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), or start a local one sized for the actors."""
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env)
        return
    # Before ray.init, so the watchdog sees every process of the local cluster from its first one on.
    start_watchdog()
    requested = cfg.rollout.num_workers * engine_cpus(cfg.rollout) + cfg.reward.num_workers + cfg.learner.num_ranks
    # Phases alternate (rollout, then reward, then train), so logical CPUs may exceed the cores.
    ray.init(num_cpus=max(requested, os.cpu_count() or 1), include_dashboard=False, runtime_env=runtime_env)


@contextmanager
def running_loop(run: PreparedRun) -> Iterator[TrainingLoop]:
    """Ray, the run directory, every actor and the metrics sinks started; all of them stopped on the way out."""
    import ray
    from transformers import AutoTokenizer

    from cluster.placement import Workers

    cfg = run.cfg
    init_ray(cfg)
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    run.run_dir.start(cfg, run.resume_step)
    workers = Workers.start(cfg, run.model_dir)
    loop = TrainingLoop(cfg, run, workers, tokenizer)
    try:
        yield loop
    finally:
        loop.metrics.close()
        workers.shutdown()
        ray.shutdown()


def train(run: PreparedRun) -> int:
    with running_loop(run) as loop:
        stop = StopRequest.install()
        loop.run(stop)
    # SIGINT is a user's normal way to stop early (exit 0); SIGTERM reports itself as 128 + 15, as shells do.
    return 128 + signal.SIGTERM if stop.signum == signal.SIGTERM else 0


class StopRequest:
    """SIGINT / SIGTERM only raise a flag: the current step finishes, a checkpoint is written, then the run ends."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @classmethod
    def install(cls) -> StopRequest:
        request = cls()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, request._handle)
        return request

    def _handle(self, signum: int, frame: object) -> None:
        tqdm.write(f"{signal.Signals(signum).name}: finishing this step, then checkpoint and stop")
        self.signum = signum


class TrainingLoop:
    def __init__(self, cfg: Config, run: PreparedRun, workers: Workers, tokenizer: Any) -> None:
        from cluster.metrics import MetricsLogger

        self.cfg, self.run_info, self.workers, self.tokenizer = cfg, run, workers, tokenizer
        self.run_dir = run.run_dir
        self.metrics = MetricsLogger(cfg, run.run_dir, run.resume_step)

    def run(self, stop: StopRequest) -> None:
        cfg, start = self.cfg, self.run_info.resume_step
        if start:
            self.restore(start)
        elif self.run_info.eval_problems:
            self.evaluate(step=0)
        steps = tqdm(
            range(start + 1, cfg.trainer.total_steps + 1),
            initial=start,
            total=cfg.trainer.total_steps,
            desc="GRPO",
            unit="step",
        )
        for step in steps:
            record = self.train_step(step)
            steps.set_postfix(reward=f"{record['rewards/mean']:.3f}", step_s=f"{record['time/step']:.1f}")
            last = step == cfg.trainer.total_steps
            if self.run_info.eval_problems and (
                last or (cfg.trainer.eval_every and step % cfg.trainer.eval_every == 0)
            ):
                self.evaluate(step)
            if last or stop.signum or (cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0):
                self.checkpoint(step)
            if stop.signum:
                return
        self.workers.learner.save_hf(str(self.run_dir.final))

    def train_step(self, step: int) -> dict[str, Any]:
        cfg, timings = self.cfg, {}
        with timed(timings, "step"):
            rows = step_problem_indices(
                len(self.run_info.train_problems), cfg.data.prompts_per_step, cfg.trainer.seed, step
            )
            problems = [self.run_info.train_problems[i] for i in rows]
            with timed(timings, "rollout"):
                prefix = cfg.data.response_prefix
                prompts = [build_prompt(self.tokenizer, p.question, prefix) for p in problems]  # this step's B rows
                completions = self.workers.generate(prompts, cfg.trainer.seed, step)
            responses = [response_text(prefix, c.text) for c in completions]
            with timed(timings, "reward"):
                scored = self.workers.score(responses, [problems[c.prompt_index].gold for c in completions])
            totals = torch.tensor([s["total"] for s in scored.scores], dtype=torch.float64)  # (B*n,)
            advantages = group_advantages(totals, cfg.rollout.n)  # (B*n,)
            with timed(timings, "train"):
                batch = train_batch(completions, advantages.tolist())
                train_metrics, learner_logprobs = self.workers.learner.train_step(batch)
            with timed(timings, "sync"):
                # Every applied optimizer step changed the weights: push them. With none applied (no row had
                # signal, or the update was not finite) version `step` equals version `step - 1`: no transfer.
                # The probe runs on some syncs only (sync.verify_every): NaN on the other steps.
                probe_mismatch = float("nan")
                if train_metrics["train/updates"]:
                    probe_mismatch = self.workers.sync_weights(version=step)
                else:
                    self.workers.advance_version(step)
            # Issue 13: at the step boundary, engines lost with their node leave and engines join where the cluster
            # has room (up to rollout.max_workers); a newcomer gets the engines' version first.
            rollout_workers = self.workers.rescale()
        # The driver alone: its children are the local Ray cluster's own processes.
        memory = {"memory/driver_rss_mb": process_tree_rss_mb(include_children=False), **self.workers.memory()}
        record, rollout_lines = build_step_records(
            step,
            problems,
            completions,
            responses,
            scored,
            advantages.tolist(),
            learner_logprobs,
            {
                **train_metrics,
                "sync/pushed": float(train_metrics["train/updates"] > 0),
                "sync/probe_mismatch": probe_mismatch,
                "rollout/workers": float(rollout_workers),
                **self.workers.faults,
                **memory,
            },
            timings,
            cfg.rollout.n,
        )
        self.run_dir.append(self.run_dir.rollouts_path, rollout_lines)
        self.metrics.log(record)
        self.metrics.plot()
        tqdm.write(format_samples(step, problems[0], rollout_lines[: min(3, cfg.rollout.n)]))
        return record

    def evaluate(self, step: int) -> None:
        problems = self.run_info.eval_problems
        prefix = self.cfg.data.response_prefix
        prompts = [build_prompt(self.tokenizer, p.question, prefix) for p in problems]
        texts = [response_text(prefix, t) for t in self.workers.generate_greedy(prompts)]
        golds = [p.gold for p in problems]
        scored = self.workers.score(texts, golds)
        self.metrics.log({"step": step, **eval_record(texts, golds, scored.scores)})

    def checkpoint(self, step: int) -> None:
        tmp = self.run_dir.begin_checkpoint(step)
        self.workers.learner.save_checkpoint(str(tmp))
        # The fault counters count over the whole run, so a resumed run carries them on.
        state = {"step": step, "policy_version": self.workers.policy_version, "faults": dict(self.workers.faults)}
        self.run_dir.commit_checkpoint(tmp, step, state, self.cfg.trainer.keep_checkpoints)

    def restore(self, step: int) -> None:
        """Learner state from the checkpoint, then its weights into every rollout worker."""
        state = self.run_dir.trainer_state(step)
        # Checkpoints written before the counters were saved have none: those runs count from 0 again.
        self.workers.faults.update(state.get("faults", {}))
        self.workers.learner.load_checkpoint(str(self.run_dir.checkpoint_dir(step)))
        self.workers.sync_weights(version=state["policy_version"])
