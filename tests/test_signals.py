"""SIGINT / SIGTERM to the real driver: finish the step, checkpoint, stop every actor, exit 0 / 143; then resume."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT, launch_command, run_launch, tiny_run_overrides


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


# SIGINT with the rollout running one step ahead (trainer.max_staleness=1): the rollouts it collected ahead go
# into the checkpoint, and the resumed run continues from them.
@pytest.mark.parametrize(("signum", "exit_code", "staleness"), [(signal.SIGTERM, 143, 0), (signal.SIGINT, 0, 1)])
def test_signal_checkpoints_stops_cleanly_and_resumes(
    tiny_model_dir: Path, tmp_path: Path, signum: signal.Signals, exit_code: int, staleness: int
) -> None:
    run_dir = tmp_path / "run"
    base = tiny_run_overrides(
        tiny_model_dir,
        run_dir,
        "trainer.checkpoint_every=0",
        "data.prompts_per_step=2",
        f"trainer.max_staleness={staleness}",
    )
    driver = subprocess.Popen(
        launch_command([*base, "trainer.total_steps=40"]),
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(_steps(run_dir)) < 2 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_steps(run_dir)) >= 2, "the run never got going"
    run_processes = psutil.Process(driver.pid).children(recursive=True)  # Ray's daemons, actors, vLLM engines
    driver.send_signal(signum)
    _, stderr = driver.communicate(timeout=180)

    assert driver.returncode == exit_code, stderr[-3000:]
    done = _steps(run_dir)
    assert done == list(range(1, len(done) + 1)) and len(done) < 40
    assert (run_dir / "checkpoints" / f"step_{done[-1]}" / "trainer_state.json").is_file()
    _, alive = psutil.wait_procs(run_processes, timeout=30)
    assert not alive, f"processes of the run left behind: {alive}"

    run_launch([*base, f"trainer.total_steps={done[-1] + 2}", "trainer.resume=true"])
    assert _steps(run_dir) == list(range(1, done[-1] + 3))
