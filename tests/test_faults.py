"""Faults inside a real run (real Ray, vLLM, gloo learner, tiny model): dying actors and drivers, NaN, memory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO_ROOT, launch_command, tiny_run_overrides


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _kill_actors_when(
    driver: subprocess.Popen, run_dir: Path, targets: list[tuple[str, int]], killed: list[int], stop: threading.Event
) -> None:
    """For each (title, after_step) in turn: once `after_step` steps are logged, SIGKILL the first process of this run
    whose Ray title starts with `title`.

    Only the driver's own descendants are candidates, so runs of other tests or users on the machine are safe.
    """
    pending = list(targets)
    while pending and not stop.is_set():
        title, after_step = pending[0]
        if len(_records(run_dir)) >= after_step:
            try:
                processes = psutil.Process(driver.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for proc in processes:
                try:
                    cmdline = " ".join(proc.cmdline())
                except psutil.NoSuchProcess:
                    continue
                if cmdline.startswith(title):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    pending.pop(0)
                    break
        time.sleep(0.005)


def _run_with_killer(
    run_dir: Path, overrides: list[str], targets: list[tuple[str, int]]
) -> tuple[subprocess.CompletedProcess, list[int]]:
    killed: list[int] = []
    stop = threading.Event()
    driver = subprocess.Popen(
        launch_command(overrides), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    killer = threading.Thread(target=_kill_actors_when, args=(driver, run_dir, targets, killed, stop), daemon=True)
    killer.start()
    stdout, stderr = driver.communicate(timeout=600)
    stop.set()
    killer.join()
    return subprocess.CompletedProcess(driver.args, driver.returncode, stdout, stderr), killed


def test_sigkilled_driver_takes_its_local_cluster_down(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Nothing of a local cluster outlives a `kill -9` of its driver: not the actors, not Ray's own agents."""
    run_dir = tmp_path / "run"
    overrides = tiny_run_overrides(
        tiny_model_dir, run_dir, "trainer.total_steps=30", "trainer.checkpoint_every=0", "data.prompts_per_step=2"
    )
    driver = subprocess.Popen(
        launch_command(overrides), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while not _records(run_dir) and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _records(run_dir) and driver.poll() is None, "the run never got going"
    run_processes = psutil.Process(driver.pid).children(recursive=True)
    titles = {p.name() for p in run_processes}
    # The agents are the ones that used to survive: make sure they are among what this test watches.
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent", "raylet", "gcs_server"} <= titles, titles
    driver.kill()
    driver.wait(timeout=30)
    _, alive = psutil.wait_procs(run_processes, timeout=30)
    assert not alive, f"processes of the killed driver's cluster left behind: {alive}"


def _four_steps_with_signal(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """A continuous reward: every group has spread, so every step runs the learner and pushes (hooks can fire)."""
    return tiny_run_overrides(
        model_dir,
        run_dir,
        "trainer.total_steps=4",
        "trainer.checkpoint_every=0",
        "reward.functions=tests.train_rewards:letter_a_share",
        *extra,
    )


MISBEHAVING = ("hang_forever", "raise_error", "return_nan", "return_string")


def test_nan_update_and_misbehaving_rewards_inside_a_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One run with two kinds of fault. The loss of learner step 2 is NaN (test-only hook read by every learner rank):
    that update is skipped and not pushed. Four reward functions hang, raise, return NaN or a string on every
    completion: each scores 0 and is counted, and every step still completes."""
    run_dir = tmp_path / "run"
    faults = ",".join(f"tests.reward_faults:{name}" for name in MISBEHAVING)
    prompts, n = 2, 4
    overrides = _four_steps_with_signal(
        tiny_model_dir,
        run_dir,
        f"data.prompts_per_step={prompts}",
        f"rollout.n={n}",
        "reward.timeout_s=0.5",
        f"reward.functions=tests.train_rewards:letter_a_share,{faults}",
    )
    env = {**os.environ, "GRPO_TEST_NAN_AT_STEP": "2"}
    proc = subprocess.run(
        launch_command(overrides), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {r["step"]: r for r in _records(run_dir)}
    assert [records[s]["train/skipped"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 0.0]
    assert records[4]["train/skipped_steps"] == 1.0
    # Step 2's update was dropped and nothing was pushed: version 2 is version 1's weights, and step 3 samples it.
    assert [records[s]["sync/pushed"] for s in (1, 2, 3, 4)] == [1.0, 0.0, 1.0, 1.0]
    assert [records[s]["policy_version"] for s in (1, 2, 3, 4)] == [0, 1, 2, 3]
    completions = prompts * n
    for record in records.values():
        assert record["rewards/timeouts"] == completions  # hang_forever, cut at 0.5 s each time
        assert record["rewards/errors"] == 3 * completions  # raise, NaN, string
        for name in MISBEHAVING:
            assert record[f"rewards/{name}/mean"] == 0.0


def test_memory_stays_flat_over_50_steps(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    overrides = tiny_run_overrides(
        tiny_model_dir, run_dir, "trainer.total_steps=50", "trainer.checkpoint_every=0", "data.prompts_per_step=2"
    )
    proc = subprocess.run(launch_command(overrides), cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = {r["step"]: r for r in _records(run_dir)}
    for key in ("memory/driver_rss_mb", "memory/rollout_rss_mb", "memory/reward_rss_mb", "memory/learner_rss_mb"):
        # RSS moves with each step's longest sequence (allocator high-water marks), so compare the peak of the five
        # steps up to 10 with the peak of the five up to 50: a leak raises the second, a noisy step does not.
        at_10 = max(records[s][key] for s in range(6, 11))
        at_50 = max(records[s][key] for s in range(46, 51))
        print(
            f"{key}: peak steps 6-10 {at_10:.0f} MiB, steps 46-50 {at_50:.0f} MiB ({100 * (at_50 / at_10 - 1):+.1f}%)"
        )
        assert at_50 <= 1.10 * at_10, key


def test_learner_rank_death_stops_clearly_and_resumes(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    base = tiny_run_overrides(tiny_model_dir, run_dir, "learner.num_ranks=2", "trainer.checkpoint_every=2")
    proc, killed = _run_with_killer(run_dir, [*base, "trainer.total_steps=8"], [("ray::LearnerRank.train_step", 3)])
    assert killed and proc.returncode == 3, proc.stderr[-4000:]
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "learner rank" in message and "died during train_step" in message and "resume" in message
    latest = max(int(p.name.removeprefix("step_")) for p in (run_dir / "checkpoints").glob("step_*"))
    assert f"checkpoint step_{latest} is intact" in message
    assert (run_dir / "checkpoints" / f"step_{latest}" / "trainer_state.json").is_file()

    resumed = subprocess.run(
        launch_command([*base, "trainer.total_steps=5", "trainer.resume=true"]),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert [r["step"] for r in _records(run_dir)] == [1, 2, 3, 4, 5]


def test_engine_computing_with_other_weights_stops_the_run(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Rollout worker 1's LM head is left 4x off after it loads version 2 (test-only hook): its weight checksum
    still matches, the sync probe does not, and the run stops with exit 4 and one error line naming the engine."""
    run_dir = tmp_path / "run"
    overrides = _four_steps_with_signal(tiny_model_dir, run_dir, "rollout.num_workers=2", "data.prompts_per_step=2")
    env = {**os.environ, "GRPO_TEST_CORRUPT_ENGINE": "1:2"}
    proc = subprocess.run(
        launch_command(overrides), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 4, proc.stderr[-4000:]
    [message] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    print(message)
    assert "rollout worker 1 after weight sync v2" in message and "sync.verify_tolerance=0.1" in message
    assert float(re.search(r"probe is ([0-9.]+)", message).group(1)) > 0.1
    # Step 1's sync passed the probe; step 2 stopped at its sync, before its metrics line.
    [record] = _records(run_dir)
    assert record["step"] == 1 and record["sync/pushed"] == 1.0 and record["sync/probe_mismatch"] < 0.1


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_engine_dying_during_a_weight_sync_is_replaced(tiny_model_dir: Path, tmp_path: Path, transport: str) -> None:
    """Rollout worker 1's process dies as it starts loading version 2 (test-only hook), mid-sync: it is replaced,
    the newcomer loads version 2 before sampling, and the run completes (collective: without gloo's timeout)."""
    run_dir = tmp_path / "run"
    overrides = _four_steps_with_signal(
        tiny_model_dir, run_dir, "rollout.num_workers=2", "data.prompts_per_step=2", f"sync.transport={transport}"
    )
    env = {**os.environ, "GRPO_TEST_DIE_IN_SYNC": "1:2"}
    start = time.monotonic()
    proc = subprocess.run(
        launch_command(overrides), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    print(f"{transport}: run with an engine lost mid-sync took {time.monotonic() - start:.0f} s")
    assert "rollout workers: 2 -> 2 (lost [1], joined [2]" in proc.stdout + proc.stderr
    records = {r["step"]: r for r in _records(run_dir)}
    assert sorted(records) == [1, 2, 3, 4]
    assert [records[s]["sync/pushed"] for s in (1, 2, 3, 4)] == [1.0] * 4
    assert [records[s]["faults/rollout_restarts"] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]
    assert [records[s]["rollout/workers"] for s in (1, 2, 3, 4)] == [2.0] * 4
    # The probe runs after every sync (sync.verify_every=1): the replacement computes with version 2's weights.
    assert all(records[s]["sync/probe_mismatch"] < 0.1 for s in (2, 3, 4))
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert all(r["policy_version"] == r["step"] - 1 for r in rollouts)
