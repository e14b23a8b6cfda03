"""Where a training step's time and memory go, per configuration, plus weight-sync and reward-scoring baselines.

    .venv/bin/python bench/step_profile.py --steps 3 --out docs/results/step_profile.json

Configurations: R rollout workers in {1, 2} x L learner ranks in {1, 2} x `sync.transport` in {object_store,
collective}. Each one is a fresh local Ray cluster running `--steps` steps of the real training loop
(`configs/debug.yaml`: SmolLM2-135M, W = 1 reward worker, the default bf16 mixed-precision learner, with the prompt
count and max tokens given here) and prints one table: every step's `time/rollout|reward|train|sync|step` and
rollout tokens/s, the median of steps 2..N (step 1 holds warm-up), and per actor kind the largest resident memory
sampled at the end of each step (`memory/*`, MiB; a kind with several actors reports its largest).

Two baselines, each with its goal:
- weight sync: `time/sync` of R = 1, L = 1 (gather on the learner, push, reload in the engine, checksum checked)
  against a bare `get_model_state_dict` + one vLLM `reload_weights` call in one process with no Ray (a subprocess
  of this script, 1 torch thread like the rollout actor). Goal: at most 1.5x the bare time.
- reward scoring: one `score_with_workers` call on W = 1 reward actor (the one the R = 1, L = 1 object-store run
  started), completions/s for several batch sizes, median of 3 after a warm-up. Goal: at least 5,000/s. The
  completions are built from GSM8K train solutions in four shapes (right answer in format, wrong answer in format,
  no tags, cut off inside <think>), so every reward function takes each branch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import add_workload_args, debug_config, machine_line  # noqa: E402  (after sys.path)
from cluster.data import Problem  # noqa: E402
from cluster.trainer import prepare_run, running_loop  # noqa: E402

SYNC_GOAL = 1.5
REWARD_GOAL = 5000.0
PHASES = ("time/rollout", "time/reward", "time/train", "time/sync", "time/step", "throughput/tokens_per_s")
MEMORY = ("memory/driver_rss_mb", "memory/rollout_rss_mb", "memory/reward_rss_mb", "memory/learner_rss_mb")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3, help="training steps per configuration (median over 2..N)")
    add_workload_args(parser, prompts=4, max_tokens=128)
    parser.add_argument("--only", help="run one configuration, e.g. R1-L2-collective")
    parser.add_argument("--reward-batches", default="32,1024,8192", help="batch sizes for the reward throughput")
    parser.add_argument("--out", type=Path, help="also write every number here as JSON")
    parser.add_argument("--bare-sync", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # the baseline's subprocess
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be at least 2: step 1 is warm-up and is left out of the median")
    return args


def configurations(only: str | None) -> list[tuple[int, int, str]]:
    every = list(itertools.product((1, 2), (1, 2), ("object_store", "collective")))
    chosen = [c for c in every if only is None or config_name(*c) == only]
    if not chosen:
        raise SystemExit(f"--only {only}: not one of {', '.join(config_name(*c) for c in every)}")
    return chosen


def config_name(rollout_workers: int, learner_ranks: int, transport: str) -> str:
    return f"R{rollout_workers}-L{learner_ranks}-{transport}"


def profile(args: argparse.Namespace, rollout_workers: int, learner_ranks: int, transport: str) -> dict[str, Any]:
    """Run `--steps` real training steps on a fresh local cluster; the reward baseline rides on R1-L1-object_store."""
    name = config_name(rollout_workers, learner_ranks, transport)
    scratch = Path(tempfile.mkdtemp(prefix=f"step_profile_{name}_"))
    cfg = debug_config(
        args,
        f"rollout.num_workers={rollout_workers}",
        f"learner.num_ranks={learner_ranks}",
        f"sync.transport={transport}",
        f"trainer.total_steps={args.steps}",
        f"trainer.run_dir={scratch}",
        "trainer.eval_size=0",
        "wandb.mode=disabled",
    )
    run = prepare_run(cfg)
    result: dict[str, Any] = {"config": name, "model_dir": str(run.model_dir), "steps": []}
    with running_loop(run) as loop:
        for step in range(1, args.steps + 1):
            record = loop.train_step(step)
            result["steps"].append({"step": step, **{k: record[k] for k in (*PHASES, *MEMORY)}})
        if (rollout_workers, learner_ranks, transport) == (1, 1, "object_store"):
            batches = [int(b) for b in args.reward_batches.split(",")]
            result["reward_throughput"] = reward_throughput(loop.workers.reward, run.train_problems, batches)
    later = result["steps"][1:]
    result["median"] = {k: statistics.median(row[k] for row in later) for k in PHASES}
    result["peak_rss_mb"] = {k: max(row[k] for row in result["steps"]) for k in MEMORY}
    print_config(result)
    return result


def reward_completions(problems: list[Problem], count: int) -> tuple[list[str], list[str]]:
    """`count` completions in four shapes built from GSM8K train rows, and their gold answers."""
    texts, golds = [], []
    for k in range(count):
        problem = problems[k % len(problems)]
        body = f"{problem.question[:200]}\nLet me work it out step by step."
        shape = k % 4
        if shape == 0:
            text = f"<think>\n{body}\n</think>\n<answer>\n{problem.gold}\n</answer>"
        elif shape == 1:
            text = f"<think>\n{body}\n</think>\n<answer>\n{problem.gold}1\n</answer>"
        elif shape == 2:
            text = f"{body}\nThe answer is {problem.gold}."
        else:
            text = f"<think>\n{body}"
        texts.append(text)
        golds.append(problem.gold)
    return texts, golds


def reward_throughput(workers: list, problems: list[Problem], batches: list[int]) -> list[dict[str, float]]:
    from actors.reward import score_with_workers

    rows = []
    for batch in batches:
        texts, golds = reward_completions(problems, batch)
        score_with_workers(workers, texts, golds)  # warm-up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            scored = score_with_workers(workers, texts, golds)
            seconds.append(time.perf_counter() - start)
            if scored.errors or scored.timeouts:
                raise RuntimeError(f"reward baseline: {scored.errors} errors, {scored.timeouts} timeouts")
        median = statistics.median(seconds)
        rows.append({"batch": batch, "seconds": median, "per_s": batch / median})
    return rows


def bare_sync(model_dir: str) -> dict[str, Any]:
    """In this process, no Ray: fp32 transformers model -> get_model_state_dict -> one vLLM reload_weights call."""
    import torch
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from transformers import AutoModelForCausalLM

    from actors.rollout import RolloutEngine
    from cluster.config import RolloutConfig
    from learner.weights import synced_names

    rollout_cfg = RolloutConfig()
    engine = RolloutEngine(model_dir, rollout_cfg, seed=0)  # the project's engine settings; only its LLM is used
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    dtype = getattr(torch, rollout_cfg.dtype)
    seconds = []
    for _ in range(4):  # the first is warm-up
        start = time.perf_counter()
        state = get_model_state_dict(model)
        items = [(name, state[name].to(dtype)) for name in synced_names(state, engine.tied)]
        engine.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(items)})
        seconds.append(time.perf_counter() - start)
    return {"seconds": statistics.median(seconds[1:]), "runs": seconds}


def run_bare_sync(model_dir: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}  # as Ray sets it for a 1-CPU actor
    out = subprocess.run(
        [sys.executable, __file__, "--bare-sync", str(model_dir)], env=env, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"bare sync subprocess failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def print_config(result: dict[str, Any]) -> None:
    short = [k.split("/")[1] for k in PHASES]
    print(f"\n{result['config']}")
    print(f"{'step':>6}" + "".join(f"{c:>15}" for c in short))
    for row in result["steps"]:
        print(f"{row['step']:>6}" + "".join(f"{row[k]:>15.3f}" for k in PHASES))
    print(f"{'median':>6}" + "".join(f"{result['median'][k]:>15.3f}" for k in PHASES))
    print("peak RSS MiB: " + ", ".join(f"{k.split('/')[1][:-7]} {v:.0f}" for k, v in result["peak_rss_mb"].items()))
    for row in result.get("reward_throughput", []):
        verdict = "met" if row["per_s"] >= REWARD_GOAL else "not met"
        print(
            f"reward W=1, batch {row['batch']}: {row['per_s']:.0f} completions/s (goal >= {REWARD_GOAL:.0f}: {verdict})"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bare_sync:
        print(json.dumps(bare_sync(args.bare_sync)))
        return 0
    print(f"machine: {machine_line()}", flush=True)
    results = [profile(args, *c) for c in configurations(args.only)]
    summary: dict[str, Any] = {"machine": machine_line(), "configs": results}
    baseline_cfg = [r for r in results if r["config"].startswith("R1-L1-")]
    if baseline_cfg:
        bare = run_bare_sync(Path(baseline_cfg[0]["model_dir"]))
        summary["bare_sync_s"] = bare["seconds"]
        print(f"\nbare get_model_state_dict + reload_weights: {bare['seconds']:.3f} s (median of 3 after a warm-up)")
        for result in baseline_cfg:
            ratio = result["median"]["time/sync"] / bare["seconds"]
            result["sync_over_bare"] = ratio
            verdict = "met" if ratio <= SYNC_GOAL else "not met"
            print(
                f"{result['config']}: time/sync {result['median']['time/sync']:.3f} s = {ratio:.2f}x bare "
                f"(goal <= {SYNC_GOAL}x: {verdict})"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, **summary}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
