"""How close the learner's step comes to what these cores can do, with each of its savings switched on in turn.

    .venv/bin/python bench/learner.py --out docs/results/learner.json

One learner rank (a Ray actor, FSDP2 on gloo, as in training) runs full GRPO steps (first pass, clipped loss,
backward, AdamW) of SmolLM2-135M on a fixed synthetic step: `--prompts` real GSM8K questions built into prompts
as the trainer builds them (chat template, worked example, `data.response_prefix`), `--n` completions each of
random tokens with lengths drawn uniformly from [`--min-tokens`, `--max-tokens`], and rewards such that
`--zero-groups` of the groups have zero spread (as a real step often has). Configurations, in fp32 and bf16:

- `plain`: one row per completion, every row trained (what the learner did before shared prompts and skipping);
- `+shared_prompt`: each group's prompt computed once, its completions attending to it;
- `+skip_zero_advantage`: rows whose advantage is exactly 0 not forwarded;
- `both`: the defaults.

Each configuration: one warm-up step, then the median of `--repeats` timed steps. Printed per configuration:
step seconds, completion tokens of the step per second, peak resident memory of the learner process *during*
the steps (a sampler thread, every 50 ms), and achieved FLOP/s counting only the work a step must do: the
matmuls of 6 x (non-embedding parameters) x (prompt tokens once per group with signal + completion tokens of
rows with signal) + 6 x (vocab x hidden) x (completion tokens with signal) (attention scores are left out).

Against it, the machine's dense matmul rate at the model's shapes, measured here in the same run with torch on
the same threads: one forward's GEMMs for 2048 tokens (30 layers of q, k, v, o, gate, up, down, then the head).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import GSM8K_DIR, SMOLLM2_GGUF, PeakRss, machine_line  # noqa: E402

CONFIGS = {
    "plain": {"shared_prompt": False, "skip_zero_advantage": False},
    "+shared_prompt": {"shared_prompt": True, "skip_zero_advantage": False},
    "+skip_zero_advantage": {"shared_prompt": False, "skip_zero_advantage": True},
    "both": {"shared_prompt": True, "skip_zero_advantage": True},
}
GOAL_SHARE = 0.70


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="GSM8K questions (groups) in the step")
    parser.add_argument("--n", type=int, default=4, help="completions per question")
    parser.add_argument("--min-tokens", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--zero-groups", type=float, default=0.25, help="share of groups with zero reward spread")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per configuration (after 1 warm-up)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--only", help="comma-separated configuration names")
    parser.add_argument("--model", default=SMOLLM2_GGUF)
    parser.add_argument("--data", default=str(GSM8K_DIR))
    parser.add_argument("--out", type=Path, help="also write every number here as JSON")
    parser.add_argument(
        "--profile",
        metavar="DTYPE",
        help="instead: profile one `both` step in this process (torch.profiler) and print the top ops by CPU time",
    )
    return parser.parse_args(argv)


def synthetic_step(args: argparse.Namespace, model_dir: Path) -> Any:
    """The fixed TrainBatch every configuration trains on (same seed, same rows)."""
    import torch
    from transformers import AutoTokenizer

    from cluster.config import load_config
    from cluster.data import build_prompt, load_problems
    from learner.batch import TrainBatch
    from learner.grpo import group_advantages

    prefix = load_config(REPO_ROOT / "configs" / "debug.yaml", [f"data.source={args.data}"]).data.response_prefix
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems = load_problems(args.data, "train")[: args.prompts]
    gen = torch.Generator().manual_seed(0)
    prompts, completions, groups, rewards = [], [], [], []
    zero_groups = round(args.zero_groups * args.prompts)
    for group, problem in enumerate(problems):
        ids = tokenizer(build_prompt(tokenizer, problem.question, prefix), add_special_tokens=False).input_ids
        for _ in range(args.n):
            length = int(torch.randint(args.min_tokens, args.max_tokens + 1, (1,), generator=gen))
            prompts.append(ids)
            completions.append(torch.randint(100, len(tokenizer), (length,), generator=gen).tolist())
            groups.append(group)
            rewards.append(1.0 if group < zero_groups else float(torch.rand(1, generator=gen)))
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float64), args.n).tolist()
    return TrainBatch(prompts, completions, advantages, [[0.0] * len(c) for c in completions], groups)


def useful_flops(batch: Any, body_params: int, head_params: int) -> float:
    """Matmul FLOPs a step cannot avoid: signal rows only, each group's prompt once (see the module docstring)."""
    signal = [i for i, a in enumerate(batch.advantages) if a != 0.0]
    prompt_tokens = sum(len(batch.prompt_token_ids[i]) for i in {batch.group_ids[i]: i for i in signal}.values())
    completion_tokens = sum(len(batch.completion_token_ids[i]) for i in signal)
    return 6.0 * body_params * (prompt_tokens + completion_tokens) + 6.0 * head_params * completion_tokens


def matmul_rate(dtype_name: str, hidden: int, intermediate: int, kv: int, vocab: int, layers: int) -> float:
    """Dense GEMM FLOP/s of one forward's matmuls at the model's shapes (2048 tokens), median of 3."""
    import torch

    dtype = getattr(torch, dtype_name)
    tokens = 2048
    x = torch.randn(tokens, hidden, dtype=dtype)
    # q, k, v, o, gate, up; then down from the intermediate width
    shapes = [
        (hidden, hidden),
        (hidden, kv),
        (hidden, kv),
        (hidden, hidden),
        (hidden, intermediate),
        (hidden, intermediate),
    ]
    weights = [torch.randn(k, n, dtype=dtype) for k, n in shapes]
    down = torch.randn(intermediate, hidden, dtype=dtype)
    mid = torch.randn(tokens, intermediate, dtype=dtype)
    head = torch.randn(hidden, vocab, dtype=dtype)
    flops = layers * (sum(2 * tokens * k * n for k, n in shapes) + 2 * tokens * intermediate * hidden)
    flops += 2 * tokens * hidden * vocab
    times = []
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(layers):
            for w in weights:
                x @ w
            mid @ down
        x @ head
        times.append(time.perf_counter() - start)
    return flops / statistics.median(times[1:])


def run_config(model_dir: Path, batch: Any, dtype: str, switches: dict[str, bool], repeats: int) -> dict[str, Any]:
    import ray

    from cluster.config import LearnerConfig
    from learner.group import LearnerGroup

    cfg = LearnerConfig(lr=1e-6, param_dtype=dtype, **switches)
    group = LearnerGroup(cfg, str(model_dir), temperature=1.0, sync_dtype="bfloat16", seed=0)
    pid = ray.get(group.ranks[0].__ray_call__.remote(lambda _self: os.getpid()))
    try:
        group.train_step(batch)  # warm-up: allocator, thread pools, first optimizer state
        times = []
        with PeakRss(pid) as peak:
            for _ in range(repeats):
                start = time.perf_counter()
                group.train_step(batch)
                times.append(time.perf_counter() - start)
    finally:
        group.shutdown()
    return {"step_s": statistics.median(times), "peak_rss_mb": peak.peak_mb}


def profile_step(model_dir: Path, batch: Any, dtype: str, rows: int = 20) -> None:
    """Where one step's time goes: a single learner rank in this process (world size 1), one warm-up step, then
    one profiled step; the table is torch.profiler's ops by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from cluster.config import LearnerConfig
    from learner.learner_rank import LearnerRank
    from learner.rendezvous import free_port

    cfg = LearnerConfig(lr=1e-6, param_dtype=dtype)
    rank = LearnerRank(0, 1, "127.0.0.1", free_port(), str(model_dir), cfg, 1.0, "bfloat16", 0)
    rank.train_step(batch, batch.num_tokens, len(batch))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        rank.train_step(batch, batch.num_tokens, len(batch))
        seconds = time.perf_counter() - start
    print(f"{dtype} `both` step: {seconds:.2f} s, torch threads {torch.get_num_threads()}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    rank.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray
    from transformers import AutoConfig

    from cluster.model_source import resolve_model_path

    print(f"machine: {machine_line()}", flush=True)
    model_dir = resolve_model_path(args.model, str(REPO_ROOT / ".cache" / "models"))
    hf = AutoConfig.from_pretrained(model_dir)
    head_params = hf.vocab_size * hf.hidden_size
    kv = hf.num_key_value_heads * hf.hidden_size // hf.num_attention_heads
    per_layer = 2 * hf.hidden_size**2 + 2 * hf.hidden_size * kv + 3 * hf.hidden_size * hf.intermediate_size
    body_params = hf.num_hidden_layers * per_layer
    batch = synthetic_step(args, model_dir)
    need = useful_flops(batch, body_params, head_params)
    tokens = batch.num_tokens
    print(
        f"step: {len(batch)} completions, {tokens} completion tokens, prompts {len(batch.prompt_token_ids[0])}+ "
        f"tokens, {sum(a == 0.0 for a in batch.advantages)} rows with advantage 0; useful work {need / 1e12:.2f} "
        f"TFLOP",
        flush=True,
    )
    if args.profile:
        profile_step(model_dir, batch, args.profile)
        return 0
    dtypes = args.dtypes.split(",")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
    )
    results: list[dict[str, Any]] = []
    names = args.only.split(",") if args.only else list(CONFIGS)
    print(f"{'dtype':<9} {'config':<22} {'step s':>8} {'tok/s':>8} {'GFLOP/s':>9} {'peak MiB':>9}", flush=True)
    for dtype in dtypes:
        for name in names:
            row = {"dtype": dtype, "config": name, **run_config(model_dir, batch, dtype, CONFIGS[name], args.repeats)}
            row["tokens_per_s"] = tokens / row["step_s"]
            row["useful_gflops"] = need / row["step_s"] / 1e9
            results.append(row)
            print(
                f"{dtype:<9} {name:<22} {row['step_s']:>8.2f} {row['tokens_per_s']:>8.1f} "
                f"{row['useful_gflops']:>9.1f} {row['peak_rss_mb']:>9.0f}",
                flush=True,
            )
    ray.shutdown()

    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as the learner rank uses every core
    shapes = (hf.hidden_size, hf.intermediate_size, kv, hf.vocab_size, hf.num_hidden_layers)
    rates = {dtype: matmul_rate(dtype, *shapes) / 1e9 for dtype in dtypes}
    print("\nmatmul at the model's shapes (GFLOP/s): " + ", ".join(f"{d} {r:.1f}" for d, r in rates.items()))
    best_dense = max(rates.values())
    for row in results:
        row["share_of_best_matmul"] = row["useful_gflops"] / best_dense
    best = max(results, key=lambda r: r["useful_gflops"])
    verdict = "met" if best["share_of_best_matmul"] >= GOAL_SHARE else "not met"
    print(
        f"best: {best['dtype']} {best['config']} at {best['useful_gflops']:.1f} GFLOP/s = "
        f"{best['share_of_best_matmul']:.2f} of the best dense matmul rate ({best_dense:.1f}); goal >= "
        f"{GOAL_SHARE}: {verdict}"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        out = {"machine": machine_line(), "args": {**vars(args), "out": str(args.out)}, "useful_tflop": need / 1e12}
        out |= {"rows": results, "matmul_gflops": rates}
        args.out.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
