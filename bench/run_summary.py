"""The learning-run tables of docs/results.md, computed from a run's metrics.jsonl (so no number is typed by hand).

    .venv/bin/python bench/run_summary.py docs/results/metrics.jsonl [--plot docs/results/rewards.png]

Prints markdown: mean reward of the first 5 and last 5 training steps for the total and each reward function,
the evals (strict and lenient accuracy, mean reward) at the first and last eval step, the zero-std group fraction,
and step time (median, and the phase medians) over all training steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cluster.metrics import plot_rewards, reward_function_keys  # noqa: E402  (after the sys.path line above)

WINDOW = 5
PHASES = ("time/step", "time/rollout", "time/reward", "time/train", "time/sync")


def read_metrics(path: Path, window: int = WINDOW) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training-step records in step order, eval records in step order); at least 2 x `window` steps."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    steps = sorted((r for r in records if "rewards/mean" in r), key=lambda r: r["step"])
    evals = sorted((r for r in records if "eval/size" in r), key=lambda r: r["step"])
    if len(steps) < 2 * window:
        raise SystemExit(f"{path}: {len(steps)} training steps; the summary compares the first and last {WINDOW}")
    return steps, evals


def reward_rows(steps: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(metric, mean over the first WINDOW steps, mean over the last WINDOW steps) for the total and each function."""
    names = ["rewards/mean", *reward_function_keys(steps[0])]
    names += ["rewards/zero_std_frac", "rollout/tokens_mean", "rollout/stopped_frac"]
    return [
        (name, statistics.fmean(r[name] for r in steps[:WINDOW]), statistics.fmean(r[name] for r in steps[-WINDOW:]))
        for name in names
    ]


def markdown(path: Path) -> str:
    steps, evals = read_metrics(path)
    first, last = steps[0]["step"], steps[-1]["step"]
    out = [
        f"Training steps {first}..{last}; first {WINDOW} = steps {first}..{steps[WINDOW - 1]['step']}, "
        f"last {WINDOW} = steps {steps[-WINDOW]['step']}..{last}.",
        "",
        f"| metric | mean of first {WINDOW} steps | mean of last {WINDOW} steps | change |",
        "|---|---|---|---|",
    ]
    out += [f"| `{name}` | {a:.3f} | {b:.3f} | {b - a:+.3f} |" for name, a, b in reward_rows(steps)]
    if len(evals) >= 2:
        before, after = evals[0], evals[-1]
        out += [
            "",
            f"| greedy eval on {before['eval/size']} test questions | step {before['step']} | step {after['step']} |",
            "|---|---|---|",
        ]
        for name in ("eval/accuracy_strict", "eval/accuracy_lenient", "eval/reward_mean"):
            if name not in before:  # strict accuracy needs the built-in correctness and hard_format rewards
                continue
            out.append(f"| `{name}` | {before[name]:.3f} | {after[name]:.3f} |")
    out += ["", "| step time, median over all steps | seconds |", "|---|---|"]
    out += [f"| `{name}` | {statistics.median(r[name] for r in steps):.1f} |" for name in PHASES]
    restarts = {k: v for k, v in steps[-1].items() if k.startswith("faults/") and v}
    skipped = steps[-1].get("train/skipped_steps", 0)
    out += ["", f"Faults during the run: {restarts or 'none'}; skipped updates: {skipped}."]
    return "\n".join(out)


def step_times(path: Path) -> str:
    """Every training step's phase times and their median, for a run of any length (e.g. `make demo`'s)."""
    steps, _ = read_metrics(path, window=0)
    out = ["| step | " + " | ".join(f"`{name}`" for name in PHASES) + " |", "|---" * (len(PHASES) + 1) + "|"]
    out += [f"| {r['step']} | " + " | ".join(f"{r[name]:.2f}" for name in PHASES) + " |" for r in steps]
    out.append("| median | " + " | ".join(f"{statistics.median(r[name] for r in steps):.2f}" for name in PHASES) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path, help="a run's metrics.jsonl")
    parser.add_argument("--plot", type=Path, help="also redraw the run's reward curves (rewards.png) here")
    parser.add_argument("--times", action="store_true", help="only each step's phase times and their median")
    args = parser.parse_args(argv)
    if args.times:
        print(step_times(args.metrics))
        return 0
    print(markdown(args.metrics))
    if args.plot:
        plot_rewards(read_metrics(args.metrics)[0], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
