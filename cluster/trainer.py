"""The driver: GRPO on GSM8K with Ray actors, one step at a time.

Per step s (1-based; version 0 is the initial weights; k = trainer.max_staleness, 0 by default):

    prompts      = B GSM8K questions (a pure function of seed and step, so resume needs no data cursor)
    completions  = rollout workers sample n per prompt with vLLM, version s-1-k  time/rollout
    rewards      = reward workers score each completion (time-bounded)           time/reward
    (dynamic sampling: groups without reward spread are replaced by fresh prompts, rollout_stage.py)
    advantages   = (r - mean_group) / (std_group + eps)
    learner step = rows with signal only: old logprobs, clipped loss, AdamW       time/train
                   (k >= 1: the rollout of step s+k runs meanwhile, overlap.py)
    weight sync  = new weights, version s, into every rollout worker             time/sync
                   (no optimizer step applied: version s = version s-1, nothing moves)
    log          = metrics.jsonl + wandb, rollouts.jsonl, rewards.png

plus eval (greedy, held-out test questions) and checkpoints on their schedules.
"""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from actors.resources import process_tree_rss_mb
from actors.rollout import engine_cpus
from cluster.config import Config
from cluster.data import DataError, Problem, build_prompt, eval_problem_indices, load_problems, response_text
from cluster.model_source import resolve_model_path
from cluster.overlap import RolloutsAhead, overlap_seconds
from cluster.rollout_stage import RolloutStage
from cluster.run_dir import RunDir
from cluster.step import build_step_records, eval_record, format_samples, pass_at_k_record
from cluster.watchdog import start_watchdog
from rewards.reasoning import reasoning_metrics

if TYPE_CHECKING:
    from cluster.placement import Workers

REPO_ROOT = Path(__file__).resolve().parents[1]
# In a checkpoint folder: the rollouts collected ahead for the steps after it (trainer.max_staleness >= 1).
ROLLOUTS_AHEAD_FILE = "rollouts_ahead.pkl"


@dataclass(frozen=True)
class PreparedRun:
    """Everything checked and loaded before a single actor starts."""

    cfg: Config
    run_dir: RunDir
    resume_step: int
    model_dir: Path
    train_problems: list[Problem]
    eval_problems: list[Problem]
    """The eval subset (`trainer.eval_size`), answered at every eval."""
    final_eval_problems: list[Problem]
    """The step-0 and final eval's questions (`trainer.final_eval_size`): the subset and possibly more."""


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
    # Both sets are prefixes of one seeded shuffle of the test split, so the larger contains the smaller.
    eval_rows = eval_problem_indices(len(test_problems), cfg.trainer.eval_size, cfg.trainer.seed)
    final_rows = eval_problem_indices(
        len(test_problems), cfg.trainer.final_eval_rows(len(test_problems)), cfg.trainer.seed
    )
    model_dir = resolve_model_path(cfg.model.path, cfg.model.cache_dir)
    return PreparedRun(
        cfg,
        run_dir,
        resume_step,
        model_dir,
        train_problems,
        [test_problems[i] for i in eval_rows],
        [test_problems[i] for i in final_rows],
    )


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"time/{name}"] = time.perf_counter() - start


def init_ray(cfg: Config) -> None:
    """Join the cluster in RAY_ADDRESS (as under `ray job submit`), or start a local one sized for the actors."""
    import ray

    from actors.reward_specs import custom_reward_sources

    runtime_env: dict[str, Any] = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}}
    # PYTHONPATH above replaces the driver's: custom reward modules and files outside the repo reach the reward
    # workers on every node as Ray-shipped py_modules instead.
    if shipped := custom_reward_sources(cfg.reward.specs):
        runtime_env["py_modules"] = shipped
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
        loop.ahead.close()
        loop.metrics.close()
        workers.shutdown()
        ray.shutdown()


def train(run: PreparedRun) -> int:
    with running_loop(run) as loop:
        stop = StopRequest.install()
        loop.run(stop)
    # SIGINT is a user's normal way to stop early (exit 0); SIGTERM reports itself as 128 + 15, as shells do.
    return 128 + signal.SIGTERM if stop.signum == signal.SIGTERM else 0


def _eval_metrics(problems: list[Problem], texts: list[str], scores: list[dict[str, float]]) -> dict[str, float]:
    """`eval/*` of greedy answers: accuracies and size (`eval_record`), trivial <think> share and length."""
    questions = [p.question for p in problems]
    return {**eval_record(texts, [p.gold for p in problems], scores), **reasoning_metrics(texts, questions, "eval/")}


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
        stage = RolloutStage(cfg, workers, tokenizer, run.train_problems)
        self.ahead = RolloutsAhead(stage.collect, cfg.trainer.max_staleness, cfg.trainer.total_steps)

    def run(self, stop: StopRequest) -> None:
        cfg, start = self.cfg, self.run_info.resume_step
        if start:
            self.restore(start)
        elif self.run_info.eval_problems:
            self.evaluate(step=0, final=True)
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
                self.evaluate(step, final=last)
            if last or stop.signum or (cfg.trainer.checkpoint_every and step % cfg.trainer.checkpoint_every == 0):
                self.checkpoint(step)
            if stop.signum:
                return
        self.workers.learner.save_hf(str(self.run_dir.final))

    def train_step(self, step: int) -> dict[str, Any]:
        cfg, timings = self.cfg, {}
        with timed(timings, "step"):
            with timed(timings, "rollout_wait"):  # the part of the rollout the step waited for
                rollout = self.ahead.take(step)
            self.ahead.launch_ahead(step)  # k >= 1: the next rollouts sample while this step trains
            with timed(timings, "train"):
                train_start = time.monotonic()
                train_metrics, learner_logprobs = self.workers.learner.train_step(rollout.train_batch())
                train_window = (train_start, time.monotonic())
            # The engines are idle from here until the next step launches a rollout: push, evaluate, checkpoint.
            ahead = self.ahead.settle()
            timings["time/overlap"] = overlap_seconds(train_window, [b for later in ahead for b in later.busy])
            with timed(timings, "sync"):
                # Every applied optimizer step changed the weights: push them. With none applied (no row had
                # signal, or the update was not finite) version `step` equals version `step - 1`: no transfer.
                # The probe runs on some syncs only (sync.verify_every): NaN on the other steps.
                probe_mismatch = float("nan")
                if train_metrics["train/updates"]:
                    probe_mismatch = self.workers.sync_weights(version=step)
                else:
                    self.workers.advance_version(step)
            # Engines lost with their node leave, engines join where the cluster has room (up to
            # rollout.max_workers); a newcomer gets the engines' version first, before the next rollout launches.
            rollout_workers = self.workers.rescale()
        # The driver alone: its children are the local Ray cluster's own processes.
        memory = {"memory/driver_rss_mb": process_tree_rss_mb(include_children=False), **self.workers.memory()}
        record, rollout_lines = build_step_records(
            rollout,
            rollout.spread_trained(learner_logprobs),
            {
                **train_metrics,
                "sync/pushed": float(train_metrics["train/updates"] > 0),
                "sync/probe_mismatch": probe_mismatch,
                "rollout/workers": float(rollout_workers),
                **self.workers.faults,
                **memory,
            },
            {**rollout.timings, **timings},
            cfg.rollout.n,
        )
        self.run_dir.append(self.run_dir.rollouts_path, rollout_lines)
        self.metrics.log(record)
        self.metrics.plot()
        tqdm.write(format_samples(step, rollout.problems[0], rollout_lines[: min(3, cfg.rollout.n)]))
        return record

    def evaluate(self, step: int, final: bool) -> None:
        """Greedy answers to the eval subset: `eval/*`. At step 0 and at the end (`final`) the answers are to the
        final set, which contains the subset: `eval/*` is read from its subset rows and `eval_final/*` from all of
        them; with trainer.eval_pass_k also `eval/pass_at_k` on the subset (k samples per question cost k greedy
        evals: on the full split that would be most of a CPU run's time). Every accuracy comes with its
        `.../size`. Each greedy answer is a line of eval_answers.jsonl."""
        timings: dict[str, float] = {}
        with timed(timings, "eval"):
            problems = self.run_info.final_eval_problems if final else self.run_info.eval_problems
            prefix = self.cfg.data.response_prefix
            prompts = [build_prompt(self.tokenizer, p.question, prefix) for p in problems]
            texts = [response_text(prefix, t) for t in self.workers.generate_greedy(prompts)]
            scores = self.workers.score(texts, [p.gold for p in problems]).scores
            subset = {p.index for p in self.run_info.eval_problems}
            rows = [i for i, p in enumerate(problems) if p.index in subset]
            record = _eval_metrics([problems[i] for i in rows], [texts[i] for i in rows], [scores[i] for i in rows])
            if final:
                final_metrics = _eval_metrics(problems, texts, scores)
                record.update({"eval_final/" + name.removeprefix("eval/"): v for name, v in final_metrics.items()})
                if self.cfg.trainer.eval_pass_k:
                    record.update(self.pass_at_k(step, [prompts[i] for i in rows], [problems[i] for i in rows]))
        answers = [
            {"step": step, "test_index": p.index, "question": p.question, "gold": p.gold, "completion": t, "rewards": r}
            for p, t, r in zip(problems, texts, scores, strict=True)
        ]
        self.run_dir.append(self.run_dir.eval_answers_path, answers)
        self.metrics.log({"step": step, **record, **timings})

    def pass_at_k(self, step: int, prompts: list[str], problems: list[Problem]) -> dict[str, float]:
        """k = trainer.eval_pass_k samples per question at rollout.temperature: `pass_at_k_record`.

        Seeds: `request_seed(trainer.seed, -(step + 1), question)`. Training steps are >= 1, so no eval sample
        shares a seed with a training sample.
        """
        k, prefix = self.cfg.trainer.eval_pass_k, self.cfg.data.response_prefix
        completions = self.workers.generate(prompts, self.cfg.trainer.seed, -(step + 1), n=k)
        texts = [response_text(prefix, c.text) for c in completions]
        golds = [problems[c.prompt_index].gold for c in completions]
        return pass_at_k_record(texts, golds, self.workers.score(texts, golds).scores, k)

    def checkpoint(self, step: int) -> None:
        tmp = self.run_dir.begin_checkpoint(step)
        self.workers.learner.save_checkpoint(str(tmp))
        # k >= 1: the rollouts already sampled for the next steps, by versions this checkpoint no longer holds.
        with open(tmp / ROLLOUTS_AHEAD_FILE, "wb") as file:
            pickle.dump(self.ahead.settle(), file)
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
        ahead = self.run_dir.checkpoint_dir(step) / ROLLOUTS_AHEAD_FILE
        # Checkpoints written before rollouts could run ahead have no such file: nothing was ahead.
        if ahead.is_file():
            with open(ahead, "rb") as file:
                self.ahead.restore(step, pickle.load(file))
