"""What carries over from one launch to the next in the same run directory (real Ray, vLLM, wandb offline).

One module-scoped sequence of three launches into one directory:

    A  trainer.overwrite=true, 1 step                                   -> a wandb run
    B  trainer.overwrite=true, 3 steps, checkpoint at 2, a rollout engine SIGKILLed mid-generate during step 2
       and the reward worker during step 3 (each must be replaced, the new engine loaded with the current weights)
       then: as if B had been SIGKILLed in step 3's appends, before its checkpoint (step_3/ and final/ removed,
       the last line of metrics.jsonl and of rollouts.jsonl cut in half)
    C  trainer.resume=true: from the step-2 checkpoint to step 3

A replaced run must be a new wandb run, a resumed one the same; a torn last line must not stop the resume; the
fault counters must count over the whole run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, launch_command, run_launch, tiny_run_overrides
from tests.test_faults import _records, _run_with_killer

PROMPTS, N, STEPS = 2, 4, 3
RESTARTS = "faults/rollout_restarts"


@dataclass(frozen=True)
class Launches:
    run_dir: Path
    wandb_ids: dict[str, set[str]]  # launch name -> ids of the wandb runs in run_dir/wandb after it
    b_records: list[dict]  # metrics.jsonl as B left it
    torn: dict[str, str]  # file name -> the half line left at its end before C
    c: subprocess.CompletedProcess[str]


def _overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(
        model_dir,
        run_dir,
        "wandb.mode=offline",
        f"data.prompts_per_step={PROMPTS}",
        f"rollout.n={N}",
        "rollout.num_workers=2",
        "rollout.max_tokens=96",  # long enough generate calls for the killer to catch one
        f"trainer.total_steps={STEPS}",
        "trainer.checkpoint_every=2",
        *extra,
    )


def _wandb_ids(run_dir: Path) -> set[str]:
    """The run ids of the wandb offline runs under run_dir (folders `offline-run-<time>-<id>`)."""
    return {folder.name.rsplit("-", 1)[1] for folder in (run_dir / "wandb").glob("offline-run-*")}


def _tear_last_line(path: Path) -> str:
    """Cut the file's last line in half, as a SIGKILL in the middle of its write would; returns the half left."""
    text = path.read_text()
    start = text.rstrip("\n").rfind("\n") + 1
    half = text[start : start + (len(text) - start) // 2]
    path.write_text(text[:start] + half)
    return half


@pytest.fixture(scope="module")
def launches(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Launches:
    run_dir = tmp_path_factory.mktemp("continuity") / "run"
    overrides = _overrides(tiny_model_dir, run_dir)
    wandb_ids = {}

    run_launch([*overrides, "trainer.overwrite=true", "trainer.total_steps=1"])
    wandb_ids["A"] = _wandb_ids(run_dir)

    targets = [("ray::RolloutEngine.generate", 1), ("ray::_RewardWorkerShell", 2)]
    b, killed = _run_with_killer(run_dir, [*overrides, "trainer.overwrite=true"], targets)
    assert b.returncode == 0 and len(killed) == 2, b.stderr[-4000:]
    wandb_ids["B"] = _wandb_ids(run_dir)
    b_records = _records(run_dir)
    assert [r["step"] for r in b_records] == [1, 2, 3]
    assert b_records[1][RESTARTS] >= 1, "the rollout engine was not killed before the step-2 checkpoint"

    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS}")
    shutil.rmtree(run_dir / "final")
    torn = {name: _tear_last_line(run_dir / name) for name in ("metrics.jsonl", "rollouts.jsonl")}
    # Not run_launch: each test reports C's failure itself, so the wandb-id test still runs if the resume fails.
    c = subprocess.run(
        launch_command([*overrides, "trainer.resume=true"]), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    wandb_ids["C"] = _wandb_ids(run_dir)
    return Launches(run_dir, wandb_ids, b_records, torn, c)


def _resumed(launches: Launches) -> None:
    assert launches.c.returncode == 0, f"resume exited {launches.c.returncode}:\n{launches.c.stderr[-4000:]}"


def test_killed_rollout_and_reward_workers_are_replaced(launches: Launches) -> None:
    records = launches.b_records
    assert [r["faults/reward_restarts"] for r in records] == [0, 0, 1]
    assert records[-1][RESTARTS] >= 1
    assert [r["policy_version"] for r in records] == [0, 1, 2]  # the new engine got the current weights


def test_overwrite_starts_a_new_wandb_run(launches: Launches) -> None:
    first, second = launches.wandb_ids["A"], launches.wandb_ids["B"]
    assert len(first) == 1 and len(second) == 1, (first, second)  # B also removed A's wandb files
    assert first != second


def test_resume_continues_the_same_wandb_run(launches: Launches) -> None:
    _resumed(launches)
    assert launches.wandb_ids["C"] == launches.wandb_ids["B"]


def test_torn_last_lines_are_dropped_on_resume(launches: Launches) -> None:
    _resumed(launches)
    for name, half in launches.torn.items():
        assert half and not half.endswith("\n")
        [warning] = [line for line in launches.c.stderr.splitlines() if line.startswith("warning:") and name in line]
        assert str(launches.run_dir / name) in warning and "incomplete last line" in warning
    assert [r["step"] for r in _records(launches.run_dir)] == list(range(1, STEPS + 1))
    rollouts = [json.loads(line) for line in (launches.run_dir / "rollouts.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rollouts]
    assert steps == sorted(steps)
    assert {s: steps.count(s) for s in set(steps)} == {s: PROMPTS * N for s in range(1, STEPS + 1)}


def test_fault_counters_carry_over_a_resume(launches: Launches) -> None:
    _resumed(launches)
    checkpointed = launches.b_records[1][RESTARTS]  # the step-2 checkpoint was written after this record
    [step_3] = [r for r in _records(launches.run_dir) if r["step"] == STEPS]
    assert step_3[RESTARTS] == checkpointed
    assert step_3["faults/reward_restarts"] == 0
