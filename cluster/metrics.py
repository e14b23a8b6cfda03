"""Metric sinks: `metrics.jsonl` in the run directory, wandb (disabled / offline / online), and `rewards.png`.

Every record carries `step`; the same names go to every sink, so the jsonl file and the wandb run agree.
"""

from __future__ import annotations

import statistics
import uuid
from pathlib import Path
from typing import Any

from cluster.config import Config
from cluster.run_dir import RunDir


def reward_metrics(totals: list[float], parts: list[dict[str, float]], group_size: int) -> dict[str, float]:
    """`rewards/*` of one step: total's mean/std/max/min, each function's mean, share of zero-spread groups."""
    groups = [totals[i : i + group_size] for i in range(0, len(totals), group_size)]
    metrics = {
        "rewards/mean": statistics.fmean(totals),
        "rewards/std": statistics.stdev(totals) if len(totals) > 1 else 0.0,
        "rewards/max": max(totals),
        "rewards/min": min(totals),
        # Groups whose rewards are all equal get zero advantage: no learning signal from them.
        "rewards/zero_std_frac": sum(len(set(g)) == 1 for g in groups) / len(groups),
    }
    for name in parts[0]:
        if name != "total":
            metrics[f"rewards/{name}/mean"] = statistics.fmean(p[name] for p in parts)
    return metrics


class MetricsLogger:
    def __init__(self, cfg: Config, run_dir: RunDir, resume_step: int) -> None:
        self.run_dir = run_dir
        self.history = [r for r in run_dir.read_metrics() if r["step"] <= resume_step]
        self.wandb_run = None
        if cfg.wandb.mode != "disabled":
            import wandb

            self.wandb_run = wandb.init(
                project=cfg.wandb.project,
                name=cfg.wandb.name or None,
                mode=cfg.wandb.mode,
                dir=str(run_dir.root),
                config=cfg.to_dict(),
                # The run id lives with the run directory, so a resumed run continues the same wandb run.
                id=_wandb_id(run_dir),
                resume="allow",
            )
            self.wandb_run.define_metric("*", step_metric="step")

    def log(self, record: dict[str, Any]) -> None:
        self.run_dir.append(self.run_dir.metrics_path, [record])
        self.history.append(record)
        if self.wandb_run is not None:
            self.wandb_run.log(record)

    def plot(self) -> None:
        plot_rewards(self.history, self.run_dir.plot_path)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _wandb_id(run_dir: RunDir) -> str:
    """The run directory's wandb id, made on its first use (`RunDir.start` deletes it when a run is replaced)."""
    path = run_dir.wandb_id_path
    if not path.is_file():
        path.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()


def reward_function_keys(record: dict[str, Any]) -> list[str]:
    """`rewards/<function>/mean` for each reward function in a step record (not the total's `rewards/mean`)."""
    return sorted(k for k in record if k.startswith("rewards/") and k.endswith("/mean") and k.count("/") == 2)


def plot_rewards(records: list[dict[str, Any]], path: Path) -> None:
    """Draw `path`: the total's mean (with min-max band) and each function's mean over the training steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "rewards/mean" in r]
    if not train:
        return
    steps = [r["step"] for r in train]
    fig, (ax_total, ax_parts) = plt.subplots(1, 2, figsize=(11, 4))
    ax_total.plot(steps, [r["rewards/mean"] for r in train], label="mean")
    ax_total.fill_between(
        steps, [r["rewards/min"] for r in train], [r["rewards/max"] for r in train], alpha=0.2, label="min..max"
    )
    ax_total.set(title="total reward", xlabel="step", ylim=(0, 3.6))
    ax_total.legend()
    for key in reward_function_keys(train[0]):
        ax_parts.plot(steps, [r[key] for r in train], label=key.split("/")[1])
    ax_parts.set(title="reward per function (mean)", xlabel="step")
    ax_parts.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
