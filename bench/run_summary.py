"""The learning-run tables of docs/results.md, computed from a run's metrics.jsonl (so no number is typed by hand).

    .venv/bin/python bench/run_summary.py docs/results/metrics.jsonl [--plot docs/results/rewards.png]

Prints markdown: mean reward of the first 5 and last 5 training steps for the total and each reward function,
the zero-std group fraction, lengths and the trivial-reasoning share (`rollout/trivial_think_frac`, where the run
logged it); `rewards/correctness/mean` of the first 20 against the last 20 steps with a bootstrap 95% interval of
the difference (`cluster/stats.py`: 10,000 resamples, seed 0); the evals (`eval/*` on the eval subset and, where
logged, `eval_final/*` on the step-0 and final eval set) at the first and last eval step with 95% Wilson intervals
of each accuracy and pass@k, and every eval step of the subset; and step time (median, and the phase medians).

    .venv/bin/python bench/run_summary.py --sample RUN_DIR docs/results
    .venv/bin/python bench/run_summary.py --answers docs/results/eval_answers_sample.jsonl

`--sample` keeps the small part of a run directory that docs/results holds: rollouts.jsonl of the first and last
training step (`rollouts_sample.jsonl`) and, from eval_answers.jsonl, the answers to the first QUESTIONS rows of
the test split at the first and last eval that answered them (`eval_answers_sample.jsonl`). `--answers` prints
those questions with the two answers side by side: the rule is "the first rows of the test split", not a choice.
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
from cluster.run_dir import read_jsonl  # noqa: E402
from cluster.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_mean_difference, wilson_interval  # noqa: E402

WINDOW = 5
# The issue-15 goal compares the first and last 20 steps' correctness: windows long enough for the bootstrap.
CORRECTNESS_WINDOW = 20
PHASES = ("time/step", "time/rollout", "time/reward", "time/train", "time/sync")
# Logged per step since issue 15 (rewards/reasoning.py); older runs' records lack them.
REASONING = ("rollout/trivial_think_frac", "rollout/think_words_mean")
# Proportions of the eval questions: reported with Wilson intervals (`<prefix>/size` questions each).
PROPORTIONS = ("accuracy_strict", "accuracy_lenient", "pass_at_k", "pass_at_k_lenient")
# The held-out questions shown side by side: test rows 0..QUESTIONS-1.
QUESTIONS = 5


def read_metrics(path: Path, window: int = WINDOW) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training-step records in step order, eval records in step order); at least 2 x `window` steps."""
    records = read_jsonl(path)
    steps = sorted((r for r in records if "rewards/mean" in r), key=lambda r: r["step"])
    evals = sorted((r for r in records if "eval/size" in r), key=lambda r: r["step"])
    if len(steps) < 2 * window:
        raise SystemExit(f"{path}: {len(steps)} training steps; the summary compares the first and last {WINDOW}")
    return steps, evals


def reward_rows(steps: list[dict[str, Any]]) -> list[tuple[str, float, float]]:
    """(metric, mean over the first WINDOW steps, mean over the last WINDOW steps) for the total and each function."""
    names = ["rewards/mean", *reward_function_keys(steps[0])]
    names += ["rewards/zero_std_frac", "rollout/tokens_mean", "rollout/stopped_frac"]
    names += [name for name in REASONING if name in steps[0]]
    return [
        (name, statistics.fmean(r[name] for r in steps[:WINDOW]), statistics.fmean(r[name] for r in steps[-WINDOW:]))
        for name in names
    ]


def correctness_difference(steps: list[dict[str, Any]]) -> tuple[float, float, float, float, float] | None:
    """(first-window mean, last-window mean, difference, low, high) of `rewards/correctness/mean` over the first
    and last CORRECTNESS_WINDOW steps, the interval by bootstrap; None for a run shorter than two windows."""
    if len(steps) < 2 * CORRECTNESS_WINDOW:
        return None
    first = [r["rewards/correctness/mean"] for r in steps[:CORRECTNESS_WINDOW]]
    last = [r["rewards/correctness/mean"] for r in steps[-CORRECTNESS_WINDOW:]]
    difference, low, high = bootstrap_mean_difference(first, last)
    return statistics.fmean(first), statistics.fmean(last), difference, low, high


def proportion(record: dict[str, Any], prefix: str, name: str) -> tuple[float, float, float]:
    """(share, low, high): an eval proportion and its Wilson interval over the record's `<prefix>/size` questions."""
    size, share = record[f"{prefix}/size"], record[f"{prefix}/{name}"]
    successes = round(share * size)
    if abs(successes - share * size) > 1e-6:
        raise SystemExit(f"step {record['step']}: {prefix}/{name}={share} is not a count out of {size}")
    return (share, *wilson_interval(successes, size))


def _share(value: tuple[float, float, float]) -> str:
    return f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"


def eval_lines(evals: list[dict[str, Any]], prefix: str) -> list[str]:
    """First and last eval of `prefix` (`eval` or `eval_final`): each proportion with its Wilson interval."""
    logged = [r for r in evals if f"{prefix}/size" in r]
    if len(logged) < 2:
        return []
    before, after = logged[0], logged[-1]
    out = [
        "",
        f"| greedy eval `{prefix}/*` on {before[f'{prefix}/size']} test questions, 95% Wilson intervals "
        f"| step {before['step']} | step {after['step']} | intervals overlap |",
        "|---|---|---|---|",
    ]
    for name in (n for n in PROPORTIONS if f"{prefix}/{n}" in before):
        first, last = proportion(before, prefix, name), proportion(after, prefix, name)
        overlap = "yes" if first[1] <= last[2] and last[1] <= first[2] else "no"
        label = f"`{prefix}/{name}`" + (f" (k = {before[f'{prefix}/pass_k']})" if name.startswith("pass") else "")
        out.append(f"| {label} | {_share(first)} | {_share(last)} | {overlap} |")
    for name in ("reward_mean", "trivial_think_frac", "think_words_mean"):
        if f"{prefix}/{name}" in before:
            out.append(f"| `{prefix}/{name}` | {before[f'{prefix}/{name}']:.3f} | {after[f'{prefix}/{name}']:.3f} | |")
    return out


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
    correctness = correctness_difference(steps)
    if correctness:
        a, b, difference, low, high = correctness
        out += [
            "",
            f"`rewards/correctness/mean`: first {CORRECTNESS_WINDOW} steps {a:.3f}, last {CORRECTNESS_WINDOW} steps "
            f"{b:.3f}, difference {difference:+.3f}, bootstrap 95% interval [{low:+.3f}, {high:+.3f}] "
            f"({BOOTSTRAP_RESAMPLES} resamples of the per-step means, seed {BOOTSTRAP_SEED}).",
        ]
    out += eval_lines(evals, "eval_final") + eval_lines(evals, "eval")
    if len(evals) > 2:
        # strict accuracy needs the built-in correctness and hard_format rewards
        names = [name for name in ("accuracy_strict", "accuracy_lenient") if f"eval/{name}" in evals[0]]
        out += ["", "| eval step | " + " | ".join(f"`eval/{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
        out += [f"| {r['step']} | " + " | ".join(_share(proportion(r, "eval", n)) for n in names) + " |" for r in evals]
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


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def first_rows_at_the_ends(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The answers to test rows 0..QUESTIONS-1 at the first and the last eval step that answered all of them."""
    wanted = set(range(QUESTIONS))
    rows_at: dict[int, set[int]] = {}
    for answer in answers:
        rows_at.setdefault(answer["step"], set()).add(answer["test_index"])
    steps = sorted(step for step, rows in rows_at.items() if wanted <= rows)
    if len(steps) < 2:
        raise SystemExit(f"fewer than two evals answered test rows 0..{QUESTIONS - 1}")
    ends = (steps[0], steps[-1])
    kept = [a for a in answers if a["step"] in ends and a["test_index"] in wanted]
    return sorted(kept, key=lambda a: (a["test_index"], a["step"]))


def write_sample(run_dir: Path, out_dir: Path) -> None:
    rollouts = read_jsonl(run_dir / "rollouts.jsonl")
    ends = (min(r["step"] for r in rollouts), max(r["step"] for r in rollouts))
    _write_jsonl(out_dir / "rollouts_sample.jsonl", [r for r in rollouts if r["step"] in ends])
    answers = first_rows_at_the_ends(read_jsonl(run_dir / "eval_answers.jsonl"))
    _write_jsonl(out_dir / "eval_answers_sample.jsonl", answers)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def answers_side_by_side(path: Path) -> str:
    """Markdown: per question, its gold answer and the greedy answers of the first and last eval with their rewards."""
    answers = first_rows_at_the_ends(read_jsonl(path))
    first, last = answers[0]["step"], answers[1]["step"]
    out: list[str] = []
    for before, after in zip(answers[::2], answers[1::2], strict=True):
        rewards = [" ".join(f"{k}={v:g}" for k, v in a["rewards"].items()) for a in (before, after)]
        out += [
            f"**Test row {before['test_index']}** (gold {before['gold']}): {_cell(before['question'])}",
            "",
            f"| step {first} | step {last} |",
            "|---|---|",
            f"| {_cell(before['completion'])} | {_cell(after['completion'])} |",
            f"| {rewards[0]} | {rewards[1]} |",
            "",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics", type=Path, nargs="?", help="a run's metrics.jsonl")
    parser.add_argument("--plot", type=Path, help="also redraw the run's reward curves (rewards.png) here")
    parser.add_argument("--times", action="store_true", help="only each step's phase times and their median")
    parser.add_argument("--sample", type=Path, nargs=2, metavar=("RUN_DIR", "OUT_DIR"), help="write the samples")
    parser.add_argument("--answers", type=Path, help="print an eval_answers sample's questions side by side")
    args = parser.parse_args(argv)
    if args.sample:
        write_sample(*args.sample)
        return 0
    if args.answers:
        print(answers_side_by_side(args.answers))
        return 0
    if args.metrics is None:
        parser.error("give a metrics.jsonl, --sample or --answers")
    if args.times:
        print(step_times(args.metrics))
        return 0
    print(markdown(args.metrics))
    if args.plot:
        plot_rewards(read_metrics(args.metrics)[0], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
