"""Rollout throughput: the project's Ray rollout path against a bare in-process vLLM engine, in one run.

    .venv/bin/python bench/rollout.py --prompts 8 --n 4 --max-tokens 200 --repeats 3 --data ../shared/gsm8k

Every path gets the same prompts (the first `--prompts` GSM8K train questions through `build_prompt` with the
model's chat template), the same sampling (n, temperature 1.0, `max_tokens`, stop `</answer>`, logprobs=0) and the
same per-prompt seeds (`request_seed(seed, step=1, prompt_index)`). Paths:

- `actor R=1`: a local Ray cluster, `create_rollout_workers(..., count=1)` and `generate_with_workers`, timed in
  the driver around the call (Ray scheduling, result serialization and the `Completion` building included);
- `bare`: a plain `vllm.LLM` with the project's engine settings (in-process engine, `uni` executor, the same
  dtype, eager mode, max_model_len, KV cache env), in its own subprocess of this script, timed around `generate`;
  `OMP_NUM_THREADS` is unset there, and torch keeps its default of one thread per core: vLLM's CPU worker replaces
  `torch.set_num_threads` with a no-op in `init_device`, before `load_model` tries to cut the threads to 1;
- `bare OMP=1`: the same, with `OMP_NUM_THREADS=1` set as Ray sets it in a `num_cpus=1` actor (1 torch thread);
- `engine, no Ray`: the project's `RolloutEngine` in its own subprocess with `OMP_NUM_THREADS=1`, no Ray
  (separates Ray's cost from the wrapper's);
- `actor R=2` (unless `--skip-r2`): two rollout actors (one core each, as `rollout.cpus_per_worker` gives R=2 on
  2 cores) splitting the prompts.
`actor R=1` runs on every core (`rollout.cpus_per_worker` defaults to cores / R on a local cluster), so `bare` is its
same-cores baseline.

Every subprocess engine and actor stays up for the whole run; the paths are measured round-robin (the starting
path rotates each round) so background load falls on all of them. Throughput is generated completion tokens over
the wall seconds of one generate call; the table shows median, min and max over `--repeats` after one warm-up.
For each path it also reports the torch threads the engine really uses and the CPU seconds its process burned per
wall second of generation (`cores`), read with psutil from the engine's process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

# Run as a script (`python bench/rollout.py`): make the repo root importable.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import GSM8K_DIR, SMOLLM2_GGUF, machine_line  # noqa: E402  (after the sys.path line above)

MODEL_CACHE = REPO_ROOT / ".cache" / "models"
GOAL_RATIO = 0.9


@dataclass
class Sample:
    """One timed generate call."""

    tokens: int
    """Generated completion tokens, summed over every prompt and sample."""
    seconds: float
    cpu_seconds: float
    """CPU time (user + system) of the engine's process during the call."""
    digest: str
    """Hash of every completion's token ids in (prompt, sample) order: equal digests mean identical outputs."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


@dataclass
class PathResult:
    name: str
    threads: str
    """What the engine's process runs with: torch threads, OMP_NUM_THREADS, CPU affinity."""
    samples: list[Sample] = field(default_factory=list)


def thread_info() -> dict:
    """Threading facts of the calling process (called inside every engine's process after its engine is up)."""
    import psutil
    import torch

    return {
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "affinity": sorted(os.sched_getaffinity(0)),
        "os_threads": psutil.Process().num_threads(),
        "nice": psutil.Process().nice(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }


def describe_threads(info: dict) -> str:
    omp = info["omp_num_threads"] if info["omp_num_threads"] is not None else "unset"
    text = f"torch {info['torch_threads']}, OMP_NUM_THREADS {omp}, cpus {info['affinity']}, nice {info['nice']}"
    return text + (f", LD_PRELOAD {info['ld_preload']}" if info["ld_preload"] else "")


def process_cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def token_digest(groups: list[list[list[int]]]) -> str:
    """`groups[prompt][sample]` is one completion's token ids."""
    return hashlib.sha256(json.dumps(groups).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# Subprocess side: one engine per process, driven over stdin/stdout (one JSON line per reply).


def serve(mode: str) -> int:
    """Build one engine (`bare` vLLM LLM or the project's `engine`), then answer `run` lines with one JSON line each.

    The first stdin line is the job (prompts, seeds, rollout config, model folder, engine seed). vLLM may print on
    stdout, so the real stdout is kept for the replies and file descriptor 1 is pointed at stderr.
    """
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    job = json.loads(sys.stdin.readline())

    from actors.rollout import STOP_STRING, RolloutEngine, engine_env
    from cluster.config import RolloutConfig

    cfg = RolloutConfig(**job["rollout"])
    prompts, seeds, n = job["prompts"], job["seeds"], cfg.n
    env = engine_env(cfg)
    if "OMP_NUM_THREADS" in os.environ:  # a path's own thread count (`bare OMP=1`, `engine, no Ray`) wins
        del env["OMP_NUM_THREADS"]
    os.environ.update(env)  # before vllm is imported, as the actor does

    if mode == "engine":
        engine = RolloutEngine(job["model_dir"], cfg, job["engine_seed"])

        def generate() -> list[list[list[int]]]:
            completions = engine.generate(prompts, list(range(len(prompts))), seeds, n)
            groups: list[list[list[int]]] = [[] for _ in prompts]
            for completion in completions:
                groups[completion.prompt_index].append(completion.token_ids)
            return groups

    else:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt

        llm = LLM(
            model=job["model_dir"],
            dtype=cfg.dtype,
            enforce_eager=True,
            max_model_len=cfg.max_model_len,
            seed=job["engine_seed"],
            distributed_executor_backend="uni",
            gpu_memory_utilization=cfg.gpu_memory_utilization,
        )
        tokenizer = llm.get_tokenizer()
        token_prompts = [
            TokensPrompt(prompt_token_ids=tokenizer(p, add_special_tokens=False).input_ids) for p in prompts
        ]
        params = [
            SamplingParams(
                n=n,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                max_tokens=cfg.max_tokens,
                stop=[STOP_STRING],
                include_stop_str_in_output=True,
                logprobs=0,
                seed=seed,
            )
            for seed in seeds
        ]

        def generate() -> list[list[list[int]]]:
            outputs = llm.generate(token_prompts, params, use_tqdm=False)
            return [[list(s.token_ids) for s in sorted(out.outputs, key=lambda s: s.index)] for out in outputs]

    replies.write(json.dumps({"ready": True, **thread_info()}) + "\n")
    for line in sys.stdin:
        if line.strip() != "run":
            break
        cpu0, start = process_cpu_seconds(os.getpid()), time.perf_counter()
        groups = generate()
        seconds = time.perf_counter() - start
        cpu_seconds = process_cpu_seconds(os.getpid()) - cpu0
        tokens = sum(len(ids) for group in groups for ids in group)
        sample = Sample(tokens, seconds, cpu_seconds, token_digest(groups))
        replies.write(json.dumps({**asdict(sample), "torch_threads": thread_info()["torch_threads"]}) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------------------------
# Driver side.


class SubprocessPath:
    """An engine in a subprocess of this script; `run_once` asks it for one timed generate call."""

    def __init__(self, name: str, mode: str, job: dict, env_overrides: dict[str, str | None]) -> None:
        self.name = name
        env = dict(os.environ)
        for key, value in env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench_rollout_{mode}_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        self._send(json.dumps(job))

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def _reply(self) -> dict:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"{self.name}: engine subprocess exited ({self.proc.wait()}); log tail:\n{tail}")
        return json.loads(line)

    def wait_ready(self) -> PathResult:
        info = self._reply()
        return PathResult(self.name, describe_threads(info))

    def run_once(self) -> Sample:
        self._send("run")
        reply = self._reply()
        return Sample(reply["tokens"], reply["seconds"], reply["cpu_seconds"], reply["digest"])

    def close(self) -> None:
        """End the subprocess; its log is deleted when it exited cleanly, kept (and named) otherwise."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        code = self.proc.wait(timeout=60)
        self.log.close()
        if code == 0:
            os.unlink(self.log.name)
        else:
            print(f"{self.name}: engine subprocess exited {code}; log kept at {self.log.name}", file=sys.stderr)


class ActorPath:
    """The project's rollout path: `generate_with_workers` over Ray actors, timed from the driver."""

    def __init__(self, name: str, workers: list, prompts: list[str], seeds: list[int], n: int) -> None:
        import ray

        self.name, self.workers, self.prompts, self.seeds, self.n = name, workers, prompts, seeds, n
        self.infos = ray.get([worker.__ray_call__.remote(lambda _engine: thread_info()) for worker in workers])

    def threads(self) -> str:
        return "; ".join(describe_threads(info) for info in self.infos)

    def run_once(self) -> Sample:
        from actors.rollout import generate_with_workers

        pids = [info["pid"] for info in self.infos]
        cpu0, start = sum(map(process_cpu_seconds, pids)), time.perf_counter()
        completions = generate_with_workers(self.workers, self.prompts, self.seeds, self.n)
        seconds = time.perf_counter() - start
        cpu_seconds = sum(map(process_cpu_seconds, pids)) - cpu0
        groups: list[list[list[int]]] = [[] for _ in self.prompts]
        for completion in completions:
            groups[completion.prompt_index].append(completion.token_ids)
        tokens = sum(len(ids) for group in groups for ids in group)
        return Sample(tokens, seconds, cpu_seconds, token_digest(groups))


def median_rate(result: PathResult) -> float:
    return statistics.median(s.tokens_per_s for s in result.samples)


def format_table(results: list[PathResult], baselines: list[str]) -> str:
    """One row per path; one ratio column per baseline path (ratio of median tokens/s)."""
    by_name = {r.name: r for r in results}
    bases = [(name, median_rate(by_name[name])) for name in baselines if name in by_name]
    ratio_heads = " ".join(f"{'/' + name:>12}" for name, _ in bases)
    header = (
        f"{'path':<16} {'tok/s median':>12} {'min':>7} {'max':>7} {'compl. tokens':>13} {'cores':>5} "
        f"{ratio_heads}  {'outputs':<12}  threads"
    )
    lines = [header, "-" * len(header)]
    for result in results:
        rates = [s.tokens_per_s for s in result.samples]
        tokens = sorted({s.tokens for s in result.samples})
        digests = sorted({s.digest for s in result.samples})
        cores = statistics.median(s.cpu_seconds / s.seconds for s in result.samples)
        ratios = " ".join(f"{median_rate(result) / base:>12.3f}" for _, base in bases)
        lines.append(
            f"{result.name:<16} {statistics.median(rates):>12.1f} {min(rates):>7.1f} {max(rates):>7.1f} "
            f"{'/'.join(map(str, tokens)):>13} {cores:>5.2f} {ratios}  {','.join(digests):<12}  {result.threads}"
        )
    return "\n".join(lines)


def ratio_line(results: list[PathResult], name: str, baseline: str) -> str:
    """Ratio of medians, and the per-round ratios (both paths run in every round)."""
    by_name = {r.name: r for r in results}
    path, base = by_name[name], by_name[baseline]
    ratio = median_rate(path) / median_rate(base)
    pairs = [a.tokens_per_s / b.tokens_per_s for a, b in zip(path.samples, base.samples, strict=True)]
    verdict = "meets" if ratio >= GOAL_RATIO else "misses"
    return (
        f"{name} / {baseline}: {ratio:.3f} (per round {', '.join(f'{r:.3f}' for r in pairs)}); "
        f"{verdict} the goal of >= {GOAL_RATIO}"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8, help="first N GSM8K train questions")
    parser.add_argument("--n", type=int, default=4, help="completions per prompt")
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--data", default=str(GSM8K_DIR), help="GSM8K folder or hub id")
    parser.add_argument("--model", default=SMOLLM2_GGUF, help="model.path (resolved like the trainer does)")
    parser.add_argument("--seed", type=int, default=0, help="trainer.seed: engine seed and request_seed base")
    parser.add_argument("--skip-r2", action="store_true", help="leave out the two-actor path")
    parser.add_argument("--skip-extras", action="store_true", help="only `actor R=1`, `bare` (and `actor R=2`)")
    parser.add_argument("--json-out", help="also write every sample to this JSON file")
    parser.add_argument("--serve", choices=["bare", "engine"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.serve:
        return serve(args.serve)

    import ray
    from transformers import AutoTokenizer

    from actors.rollout import create_rollout_workers, request_seed
    from cluster.config import RolloutConfig
    from cluster.data import build_prompt, load_problems
    from cluster.model_source import resolve_model_path

    rollout = RolloutConfig(num_workers=1, n=args.n, max_tokens=args.max_tokens, temperature=1.0)
    model_dir = str(resolve_model_path(args.model, str(MODEL_CACHE)))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    problems = load_problems(args.data, "train")[: args.prompts]
    prompts = [build_prompt(tokenizer, p.question) for p in problems]
    seeds = [request_seed(args.seed, 1, i) for i in range(len(prompts))]
    job = {
        "rollout": asdict(rollout),
        "model_dir": model_dir,
        "engine_seed": args.seed,
        "prompts": prompts,
        "seeds": seeds,
    }
    print(f"machine: {machine_line()}; load average {os.getloadavg()}", flush=True)
    print(f"model {model_dir}; {len(prompts)} prompts x n={args.n}, max_tokens={args.max_tokens}", flush=True)

    # Subprocess engines first (each waits for its job line), started one at a time so their starts do not overlap.
    # The driver's own OMP_NUM_THREADS (if any) is dropped for `bare` so vLLM chooses as it would in a fresh shell.
    specs = [("bare", "bare", {"OMP_NUM_THREADS": None})]
    if not args.skip_extras:
        specs += [
            ("bare OMP=1", "bare", {"OMP_NUM_THREADS": "1"}),
            ("engine, no Ray", "engine", {"OMP_NUM_THREADS": "1"}),
        ]
    subprocs: list[SubprocessPath] = []
    paths: list[tuple[SubprocessPath | ActorPath, PathResult]] = []
    try:
        for name, mode, env in specs:
            started = time.perf_counter()
            sub = SubprocessPath(name, mode, job, env)
            subprocs.append(sub)
            paths.append((sub, sub.wait_ready()))
            print(f"{name}: engine up in {time.perf_counter() - started:.1f}s", flush=True)

        # As cluster/trainer.py starts a local cluster: R=1 gets every core (rollout.cpus_per_worker auto), the
        # two R=2 actors one core each; logical CPUs cover both sets, which are never measured at the same time.
        ray.init(
            num_cpus=2 * (os.cpu_count() or 1),
            include_dashboard=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}},
            log_to_driver=False,
        )
        started = time.perf_counter()
        workers = create_rollout_workers(rollout, model_dir, args.seed, count=1)
        if not args.skip_r2:
            workers += create_rollout_workers(replace(rollout, num_workers=2), model_dir, args.seed, count=2)
        print(f"{len(workers)} rollout actor(s) up in {time.perf_counter() - started:.1f}s", flush=True)
        actor1 = ActorPath("actor R=1", workers[:1], prompts, seeds, args.n)
        paths.insert(0, (actor1, PathResult(actor1.name, actor1.threads())))
        if not args.skip_r2:
            actor2 = ActorPath("actor R=2", workers[1:], prompts, seeds, args.n)
            paths.append((actor2, PathResult(actor2.name, actor2.threads())))

        for round_index in range(args.repeats + 1):
            shift = round_index % len(paths)
            for runner, result in paths[shift:] + paths[:shift]:
                sample = runner.run_once()
                label = "warm-up" if round_index == 0 else f"round {round_index}"
                print(
                    f"{label:<8} {result.name:<16} {sample.tokens_per_s:7.1f} tok/s  {sample.tokens} tokens "
                    f"in {sample.seconds:.2f}s  cores {sample.cpu_seconds / sample.seconds:.2f}  "
                    f"load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                if round_index:
                    result.samples.append(sample)
    finally:
        for sub in subprocs:
            sub.close()
        ray.shutdown()

    results = [result for _, result in paths]
    print()
    print(format_table(results, baselines=["bare", "bare OMP=1"]))
    print()
    for baseline in ("bare", "bare OMP=1"):
        if baseline in {r.name for r in results}:
            print(ratio_line(results, "actor R=1", baseline))
    print(f"load average at the end {os.getloadavg()}")
    if args.json_out:
        dump = {"machine": machine_line(), "args": vars(args), "results": [asdict(r) for r in results]}
        Path(args.json_out).write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
