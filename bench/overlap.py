"""Step time with rollout ahead of training (trainer.max_staleness = 1) against the on-policy loop (k = 0).

    .venv/bin/python bench/overlap.py --steps 6 --pairs 2 --out docs/results/overlap.json

Runs alternate k = 0 and k = 1 (`--pairs` of each, so drift of the machine hits both alike), each a fresh local
Ray cluster running `--steps` steps of the real training loop on `configs/debug.yaml` (SmolLM2-135M, R = 1, L = 1,
W = 1, the default bf16 learner). k = 0: rollout and training alternate and each may use every core. k = 1: the
learner ranks and the rollout engines are pinned to their own halves of the cores (actors/cores.py) and the next
step's rollout runs while this step trains. Both sample with the same seeds from policies that differ by one
lr = 1e-6 update at most, so their completions (and lengths) match closely; the table shows the tokens per step.

Per run: the median over steps 2..N (step 1 holds warm-up, and at k = 1 has nothing ahead of it) of
`time/step`, `time/train`, `time/rollout` (generate, wherever it ran), `time/rollout_wait` (the part of the
rollout the step waited for), `time/overlap` (seconds of the learner's step during which rollout work ran) and the
completion tokens of the step; the overlap share is time/overlap / time/step. Goal: k = 1 step time <= 0.75 x k = 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import add_workload_args, debug_config, machine_line  # noqa: E402  (after sys.path)
from cluster.trainer import prepare_run, running_loop  # noqa: E402

GOAL = 0.75
KEYS = ("time/step", "time/train", "time/rollout", "time/rollout_wait", "time/overlap", "tokens")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="training steps per run (median over 2..N)")
    parser.add_argument("--pairs", type=int, default=2, help="runs of each k, alternating")
    add_workload_args(parser, prompts=4, max_tokens=128)
    parser.add_argument("--out", type=Path, help="also write every number here as JSON")
    parser.add_argument("--summary-of", type=Path, help="print the summary of an earlier --out file, run nothing")
    args = parser.parse_args(argv)
    if args.steps < 3:
        parser.error("--steps must be at least 3: step 1 is warm-up and is left out of the median")
    return args


def run_once(args: argparse.Namespace, staleness: int) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix=f"overlap_k{staleness}_"))
    cfg = debug_config(
        args,
        f"trainer.max_staleness={staleness}",
        f"trainer.total_steps={args.steps}",
        f"trainer.run_dir={scratch}",
        "trainer.eval_size=0",
        "sync.verify_every=0",  # the probe is a separate cost of its own (sync.verify_every, 10 by default)
        "wandb.mode=disabled",
    )
    run = prepare_run(cfg)
    steps = []
    with running_loop(run) as loop:
        for step in range(1, args.steps + 1):
            record = loop.train_step(step)
            tokens = record["rollout/tokens_mean"] * record["rollout/groups_sampled"] * cfg.rollout.n
            steps.append({"step": step, **{k: record[k] for k in KEYS if k != "tokens"}, "tokens": tokens})
    median = {k: statistics.median(row[k] for row in steps[1:]) for k in KEYS}
    share = median["time/overlap"] / median["time/step"]
    result = {"k": staleness, "steps": steps, "median": median, "overlap_share": share}
    print(
        f"k={staleness}  "
        + "  ".join(f"{k.removeprefix('time/')} {median[k]:7.2f}" for k in KEYS)
        + f"  overlap share {result['overlap_share']:.2f}",
        flush=True,
    )
    return result


def summarize(runs: list[dict[str, Any]]) -> tuple[dict[int, dict[str, float]], float]:
    """Print the mean of the per-run medians per k, the step ratio, and what bounds the k = 1 step; returns both."""
    by_k = {k: [r for r in runs if r["k"] == k] for k in (0, 1)}
    summary = {k: {key: statistics.fmean(r["median"][key] for r in rs) for key in KEYS} for k, rs in by_k.items()}
    ratio = summary[1]["time/step"] / summary[0]["time/step"]
    print("\nmean over runs of the per-run medians:")
    print(f"{'':4} {'step s':>8} {'train s':>8} {'rollout s':>10} {'waited s':>9} {'overlap s':>10} {'tokens':>7}")
    for k, row in summary.items():
        print(
            f"k={k:<2} {row['time/step']:8.2f} {row['time/train']:8.2f} {row['time/rollout']:10.2f} "
            f"{row['time/rollout_wait']:9.2f} {row['time/overlap']:10.2f} {row['tokens']:7.0f}"
        )
    share = statistics.fmean(r["overlap_share"] for r in by_k[1])
    verdict = "met" if ratio <= GOAL else "not met"
    print(f"k=1 step time / k=0 step time: {ratio:.3f} (goal <= {GOAL}: {verdict}); k=1 overlap share {share:.2f}")
    # On its half of the cores each phase runs slower; a perfect overlap still waits for the slower one.
    slow = {key: summary[1][key] / summary[0][key] for key in ("time/train", "time/rollout")}
    bound = max(summary[1]["time/train"], summary[1]["time/rollout"]) / summary[0]["time/step"]
    print(
        f"on half the cores: train x{slow['time/train']:.2f}, rollout x{slow['time/rollout']:.2f} slower; "
        f"a perfect overlap of these k=1 phases: slower phase / k=0 step = {bound:.3f}"
    )
    return summary, ratio


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary_of:
        summarize(json.loads(args.summary_of.read_text())["runs"])
        return 0
    print(f"machine: {machine_line()}", flush=True)
    print(f"workload: {args.prompts} prompts x {args.n} completions, max {args.max_tokens} tokens, {args.steps} steps")
    runs = [run_once(args, staleness) for _ in range(args.pairs) for staleness in (0, 1)]
    summary, ratio = summarize(runs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"args": {**vars(args), "out": str(args.out)}, "machine": machine_line(), "runs": runs}
        args.out.write_text(json.dumps({**payload, "summary": summary, "ratio": ratio}, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
