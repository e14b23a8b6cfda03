"""The run directory: what a run leaves behind, and what a resumed run reads back.

    run_dir/
      config.yaml          the resolved config
      metrics.jsonl        one line per step and per eval (same names as wandb)
      rollouts.jsonl       one line per completion
      eval_answers.jsonl   one line per greedy eval answer (step, test row, completion, rewards)
      checkpoints/step_N/  learner shards (torch.distributed.checkpoint) + trainer_state.json
      rewards.png          reward curves, redrawn every step
      final/               the trained policy as an HF folder
      wandb_id.txt, wandb/ the wandb run's id and files (when wandb is on)

Checkpoints are written under a temporary name and renamed when complete, so a crash mid-write never leaves
a checkpoint that resume would read. On resume, lines of steps after the checkpoint are dropped, so every
step ends up in the jsonl files exactly once. Each batch of jsonl lines is appended with one write call, so a
crash can tear at most the file's last line; resume drops such an incomplete line (and says so).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from cluster.config import Config, config_to_yaml

# Keys that may change between a run and its resumption without mixing two different experiments.
RESUMABLE_CHANGES = {
    "trainer.total_steps",
    "trainer.resume",
    "trainer.overwrite",
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "trainer.keep_checkpoints",
    "rollout.num_workers",
    "reward.num_workers",
    "wandb.mode",
    "wandb.name",
}
_TMP_SUFFIX = ".tmp"


class RunDirError(ValueError):
    """The run directory cannot be used as asked (exists, no checkpoint, belongs to another config)."""


def _flatten(tree: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in tree.items() for key, value in values.items()}


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "config.yaml"
        self.metrics_path = self.root / "metrics.jsonl"
        self.rollouts_path = self.root / "rollouts.jsonl"
        self.eval_answers_path = self.root / "eval_answers.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.plot_path = self.root / "rewards.png"
        self.final = self.root / "final"
        self.wandb_id_path = self.root / "wandb_id.txt"
        self.wandb_dir = self.root / "wandb"
        # The jsonl files with a line per step (or eval step): a resumed run drops their lines after the checkpoint.
        self.step_files = (self.metrics_path, self.rollouts_path, self.eval_answers_path)

    # ---- checks, before anything is written -----------------------------------------------------------------

    def check_usable(self, cfg: Config) -> int:
        """Raise RunDirError if this run may not use the directory; return the step to resume from (0: fresh)."""
        previous = self.config_path.is_file() or self.metrics_path.is_file() or self.checkpoints.is_dir()
        if not cfg.trainer.resume:
            if previous and not cfg.trainer.overwrite:
                raise RunDirError(
                    f"trainer.run_dir={str(self.root)!r} already holds a run: pass trainer.resume=true to continue "
                    "it, trainer.overwrite=true to replace it, or choose another trainer.run_dir"
                )
            return 0
        latest = self.latest_checkpoint()
        if latest is None:
            raise RunDirError(f"trainer.resume=true but trainer.run_dir={str(self.root)!r} has no complete checkpoint")
        # A key the saved config lacks came with a later version of this trainer: the old run ran at its default.
        saved = {**_flatten(Config().to_dict()), **_flatten(yaml.safe_load(self.config_path.read_text()))}
        current = _flatten(cfg.to_dict())
        differing = sorted(k for k in current if k not in RESUMABLE_CHANGES and saved[k] != current[k])
        if differing and not cfg.trainer.overwrite:
            changes = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in differing)
            raise RunDirError(
                f"trainer.run_dir={str(self.root)!r} belongs to a different config ({changes}); "
                "refusing to mix runs (trainer.overwrite=true resumes anyway)"
            )
        return latest

    # ---- writing --------------------------------------------------------------------------------------------

    def start(self, cfg: Config, resume_step: int) -> None:
        """Create (or, when overwriting a fresh run, clear) the directory and record the resolved config."""
        if resume_step == 0 and self.root.exists():
            # The wandb id goes too: a replaced run is a new wandb run; only a resumed one continues the old id.
            for path in (*self.step_files, self.plot_path, self.config_path, self.wandb_id_path):
                path.unlink(missing_ok=True)
            for folder in (self.checkpoints, self.final, self.wandb_dir):
                shutil.rmtree(folder, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        _atomic_write(self.config_path, config_to_yaml(cfg))
        if resume_step:
            for path in self.step_files:
                self._truncate_after(path, resume_step)

    @staticmethod
    def _truncate_after(path: Path, step: int) -> None:
        """Drop lines of steps after the checkpoint (they will be produced again) and a torn last line."""
        if not path.is_file():
            return
        kept = [record for record in read_jsonl(path) if record["step"] <= step]
        _atomic_write(path, "".join(json.dumps(record) + "\n" for record in kept))

    def append(self, path: Path, records: Iterable[dict[str, Any]]) -> None:
        """Append lines with one write call: a crash mid-append tears at most the last line, never an earlier one."""
        # json.dumps escapes non-ASCII, so a cut can never split a character: the torn line is the only damage.
        data = "".join(json.dumps(record) + "\n" for record in records).encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # only a full disk or a quota does this to a regular file
                raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.is_file() else []

    # ---- checkpoints ----------------------------------------------------------------------------------------

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints / f"step_{step}"

    def begin_checkpoint(self, step: int) -> Path:
        tmp = self.checkpoint_dir(step).with_name(f"step_{step}{_TMP_SUFFIX}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        return tmp

    def commit_checkpoint(self, tmp: Path, step: int, trainer_state: dict[str, Any], keep: int) -> None:
        """Write the driver's state last, then rename: only a complete checkpoint gets its final name."""
        _atomic_write(tmp / "trainer_state.json", json.dumps(trainer_state))
        final = self.checkpoint_dir(step)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for old in self.complete_checkpoints()[:-keep]:
            shutil.rmtree(self.checkpoint_dir(old))

    def complete_checkpoints(self) -> list[int]:
        if not self.checkpoints.is_dir():
            return []
        steps = [
            int(p.name.removeprefix("step_"))
            for p in self.checkpoints.iterdir()
            if p.name.startswith("step_")
            and p.name.removeprefix("step_").isdigit()
            and (p / "trainer_state.json").is_file()
        ]
        return sorted(steps)

    def latest_checkpoint(self) -> int | None:
        steps = self.complete_checkpoints()
        return steps[-1] if steps else None

    def trainer_state(self, step: int) -> dict[str, Any]:
        return json.loads((self.checkpoint_dir(step) / "trainer_state.json").read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a jsonl file this module appended to; an incomplete last line is dropped with a warning.

    Lines are written whole and newline-terminated, so text after the last newline can only be a write that a
    crash cut short. A complete line that is not JSON is real damage: json.loads raises.
    """
    text = path.read_text()
    complete, _, torn = text.rpartition("\n")
    if torn:
        print(
            f"warning: {path}: dropping an incomplete last line ({len(torn)} characters), "
            "left by a write the crash cut short",
            file=sys.stderr,
        )
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)
