"""Which system prompt? Step-0 completions of SmolLM2 under each candidate, scored by the real reward functions.

    .venv/bin/python bench/prompt_probe.py --questions 32 --n 4 > docs/results/prompt_probe.txt

The model, sampler and prompt layout are the learning run's (`--config`, default configs/gsm8k_smollm2_cpu.yaml:
the packaged SmolLM2-135M-Instruct, temperature 0.7, 200 tokens, `data.response_prefix` "<think>\\n"), in one
in-process `RolloutEngine` (the class every rollout actor wraps, no Ray). The questions are the first
`--questions` rows of the run's first-epoch shuffle of the train split (`step_problem_indices`, step 1), each
sampled `--n` times with the run's per-prompt seeds (`request_seed(trainer.seed, 1, i)`), the same for every
variant. Each completion is scored as the trainer scores it (`response_prefix + completion`, every built-in
reward function) and read by `rewards/reasoning.py`.

Per variant it prints the mean of each reward function and of the total, the share in the strict format
(`hard_format` > 0), the share of trivial `<think>` blocks (empty, placeholder or a copy of the question), the
mean words inside `<think>`, the mean completion tokens, and the wall seconds. Sampling is seeded, so the numbers
repeat on this machine whatever its load; only the wall time changes.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_line  # noqa: E402  (after the sys.path line above)
from cluster.config import load_config  # noqa: E402
from cluster.data import SYSTEM_PROMPT  # noqa: E402
from rewards.reasoning import is_trivial_think, think_words  # noqa: E402
from rewards.reward_functions import REWARD_FUNCTIONS, score  # noqa: E402

# BEFORE: the system prompt until issue 15. Its format line holds a copyable `...` for the reasoning, which the
# 60-step run's policy learned to write instead of reasoning (docs/results.md section 1). Kept here as the baseline.
OLD_SYSTEM_PROMPT = (
    "You are a careful math tutor. Reason step by step inside <think> </think>, then write only the final number "
    "inside <answer> </answer>. Respond in exactly this format:\n"
    "<think>\n...\n</think>\n<answer>\n...\n</answer>\n"
    "Example. Question: Tom has 3 apples and buys 5 more. How many apples does he have?\n"
    "<think>\nTom starts with 3 apples and buys 5, so 3 + 5 = 8.\n</think>\n<answer>\n8\n</answer>"
)
# Candidates that were not chosen, each without any placeholder.
_INSTRUCTION = (
    "You are a careful math tutor. Think step by step inside <think> </think>, writing out each calculation, "
    "then write only the final number inside <answer> </answer>, exactly as in {which}.\n"
)
_ONE_STEP_EXAMPLE = (
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\n"
    "<think>\nTom starts with 3 apples and buys 5, so 3 + 5 = 8.\n</think>\n<answer>\n8\n</answer>"
)
_TWO_STEP_EXAMPLE = (
    "Question: Mia buys 4 pens at $2 each and pays with a $10 bill. How much change does she get?\n"
    "<think>\nThe pens cost 4 * 2 = 8 dollars. Her change is 10 - 8 = 2 dollars.\n</think>\n<answer>\n2\n</answer>"
)
VARIANTS = {
    "before: old prompt, `...` format line": OLD_SYSTEM_PROMPT,
    "one-step example only": _INSTRUCTION.format(which="this example") + _ONE_STEP_EXAMPLE,
    "AFTER: cluster/data.py SYSTEM_PROMPT": SYSTEM_PROMPT,
    "two examples": _INSTRUCTION.format(which="these examples") + _ONE_STEP_EXAMPLE + "\n" + _TWO_STEP_EXAMPLE,
}


def summarize(texts: list[str], questions: list[str], golds: list[str], tokens: list[int]) -> dict[str, float]:
    """Means over the completions: each reward function, the total, strict format, trivial think, lengths."""
    scores = [score(t, g) for t, g in zip(texts, golds, strict=True)]
    row = {name: statistics.fmean(s[name] for s in scores) for name in (*REWARD_FUNCTIONS, "total")}
    row["strict format"] = statistics.fmean(s["hard_format"] > 0 for s in scores)
    row["trivial think"] = statistics.fmean(is_trivial_think(t, q) for t, q in zip(texts, questions, strict=True))
    row["think words"] = statistics.fmean(think_words(t) for t in texts)
    row["tokens"] = statistics.fmean(tokens)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=32, help="train questions (N)")
    parser.add_argument("--n", type=int, default=4, help="samples per question")
    # Batches as in docs/results/prompt_probe.txt (made in batches of 8 when chunked prefill still crashed seeded
    # calls over the 4,096-token step budget; the engines now take whole prompts only, actors/rollout.py).
    parser.add_argument("--batch", type=int, default=8, help="questions per generate call")
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "gsm8k_smollm2_cpu.yaml"))
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for cluster/launch.py")
    args = parser.parse_args(argv)

    from actors.rollout import RolloutEngine, request_seed
    from cluster.data import build_prompt, load_problems, response_text, step_problem_indices
    from cluster.model_source import resolve_model_path

    cfg = load_config(args.config, args.overrides)
    train = load_problems(cfg.data.source, "train")
    problems = [train[i] for i in step_problem_indices(len(train), args.questions, cfg.trainer.seed, step=1)]
    engine = RolloutEngine(str(resolve_model_path(cfg.model.path, cfg.model.cache_dir)), cfg.rollout, cfg.trainer.seed)
    seeds = [request_seed(cfg.trainer.seed, 1, i) for i in range(len(problems))]
    prefix = cfg.data.response_prefix

    print(f"$ .venv/bin/python bench/prompt_probe.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    print(machine_line())
    print(
        f"{len(problems)} train questions x {args.n} samples, T={cfg.rollout.temperature}, "
        f"max_tokens={cfg.rollout.max_tokens}, response_prefix={prefix!r}, model {cfg.model.path}\n"
    )
    rows, samples = {}, {}
    started = time.perf_counter()
    for name, system_prompt in VARIANTS.items():
        start = time.perf_counter()
        prompts = [build_prompt(engine.tokenizer, p.question, prefix, system_prompt) for p in problems]
        completions = [
            c
            for first in range(0, len(prompts), args.batch)
            for c in engine.generate(
                prompts[first : first + args.batch],
                list(range(first, first + len(prompts[first : first + args.batch]))),
                seeds[first : first + args.batch],
                args.n,
            )
        ]
        texts = [response_text(prefix, c.text) for c in completions]
        questions = [problems[c.prompt_index].question for c in completions]
        golds = [problems[c.prompt_index].gold for c in completions]
        rows[name] = summarize(texts, questions, golds, [len(c.token_ids) for c in completions])
        rows[name]["wall s"] = time.perf_counter() - start  # the first variant's includes the engine's warm-up
        samples[name] = texts[:2]
        print(f"{name}: {rows[name]['wall s']:.0f} s", file=sys.stderr)

    columns = list(next(iter(rows.values())))
    print("| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    seconds = time.perf_counter() - started
    print(f"\nwall time of the generate calls and scoring: {seconds:.0f} s (engine start not included)")
    for name, system_prompt in VARIANTS.items():
        print(f"\n## {name}\nsystem prompt:\n{system_prompt}\n\nfirst question's first two completions:")
        for text in samples[name]:
            print("  " + text.replace("\n", "\n  ") + "\n  --")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
