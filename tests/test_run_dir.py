"""Which runs may use a run directory: fresh, replaced, resumed, and resumed under a changed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cluster.config import Config, load_config
from cluster.run_dir import RunDir, RunDirError
from tests.conftest import GSM8K_DIR


def _config(run_dir: Path, *overrides: str) -> Config:
    return load_config(None, [f"trainer.run_dir={run_dir}", f"data.source={GSM8K_DIR}", *overrides])


def _run_with_checkpoint(root: Path) -> RunDir:
    run_dir = RunDir(root)
    run_dir.start(_config(root), resume_step=0)
    tmp = run_dir.begin_checkpoint(2)
    run_dir.commit_checkpoint(tmp, 2, {"step": 2, "policy_version": 2}, keep=1)
    return run_dir


def test_fresh_directory_starts_at_step_0(tmp_path: Path) -> None:
    assert RunDir(tmp_path / "run").check_usable(_config(tmp_path / "run")) == 0


def test_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run_dir = _run_with_checkpoint(tmp_path / "run")
    with pytest.raises(RunDirError, match="already holds a run"):
        run_dir.check_usable(_config(tmp_path / "run"))
    assert run_dir.check_usable(_config(tmp_path / "run", "trainer.overwrite=true")) == 0
    assert run_dir.check_usable(_config(tmp_path / "run", "trainer.resume=true")) == 2


def test_resume_refuses_a_changed_config_but_not_a_resumable_change(tmp_path: Path) -> None:
    run_dir = _run_with_checkpoint(tmp_path / "run")
    with pytest.raises(RunDirError, match=r"learner\.lr: 1e-06 -> 0\.001"):
        run_dir.check_usable(_config(tmp_path / "run", "trainer.resume=true", "learner.lr=1e-3"))
    assert run_dir.check_usable(_config(tmp_path / "run", "trainer.resume=true", "trainer.total_steps=50")) == 2


def test_resume_of_a_run_saved_before_a_key_existed(tmp_path: Path) -> None:
    """A key missing from the saved config.yaml (added by a later version) counts as its default."""
    run_dir = _run_with_checkpoint(tmp_path / "run")
    saved = yaml.safe_load(run_dir.config_path.read_text())
    del saved["trainer"]["max_staleness"]
    run_dir.config_path.write_text(yaml.safe_dump(saved))
    assert run_dir.check_usable(_config(tmp_path / "run", "trainer.resume=true")) == 2
    with pytest.raises(RunDirError, match=r"trainer\.max_staleness: 0 -> 1"):
        run_dir.check_usable(_config(tmp_path / "run", "trainer.resume=true", "trainer.max_staleness=1"))
