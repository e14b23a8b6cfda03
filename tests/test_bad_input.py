"""Bad input through the real entry point: one clear line, exit code 2, and no run directory that looks resumable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster.config import load_config
from tests.conftest import GSM8K_DIR, REPO_ROOT, launch_command

GOOD_ROW = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}


def _data_folder(root: Path, train_rows: list[dict]) -> Path:
    root.mkdir(parents=True)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))
    (root / "test.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    return root


def _fake_previous_run(run_dir: Path, *overrides: str) -> None:
    """A run directory as a finished run leaves it: its config and one complete checkpoint."""
    cfg = load_config(REPO_ROOT / "configs" / "debug.yaml", [f"data.source={GSM8K_DIR}", *overrides])
    (run_dir / "checkpoints" / "step_1").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_1" / "trainer_state.json").write_text('{"step": 1, "policy_version": 1}')
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))


CASES = {
    "unknown key": (["rollout.nn=4"], "rollout.nn"),
    "wrong type": (["rollout.n=four"], "rollout.n"),
    "missing model path": (["model.path=/no/such/model"], "model.path"),
    "corrupt gguf": (["model.path={tmp}/bad.gguf"], "not a readable GGUF"),
    "data folder without train.jsonl": (["data.source={tmp}/empty_data"], "train.jsonl"),
    "row without ####": (["data.source={tmp}/bad_rows"], "line 2"),
    "more prompts per step than rows": (["data.source={tmp}/three_rows", "data.prompts_per_step=4"], "exceeds"),
    "resume without checkpoint": (["trainer.resume=true"], "no complete checkpoint"),
    "run dir of another config": (["trainer.resume=true", "learner.lr=0.5"], "learner.lr"),
    "previous run without resume": ([], "already holds a run"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_clear_line(case: str, tmp_path: Path) -> None:
    overrides, needle = CASES[case]
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + os.urandom(4096))
    (tmp_path / "empty_data").mkdir()
    (tmp_path / "empty_data" / "test.jsonl").write_text(json.dumps(GOOD_ROW) + "\n")
    _data_folder(tmp_path / "bad_rows", [GOOD_ROW, {"question": "No marker?", "answer": "just 5"}])
    _data_folder(tmp_path / "three_rows", [GOOD_ROW] * 3)
    run_dir = tmp_path / "run"
    if case in ("run dir of another config", "previous run without resume"):
        _fake_previous_run(run_dir)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))

    args = [f"data.source={GSM8K_DIR}", f"trainer.run_dir={run_dir}", "wandb.mode=disabled"]
    args += [o.format(tmp=tmp_path) for o in overrides]
    proc = subprocess.run(launch_command(args), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)

    assert proc.returncode == 2, proc.stderr[-3000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and needle in error_lines[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
