"""Runs spread over several real Ray nodes on this host (each its own raylet and object store; `tests/ray_nodes.py`).

One module-wide cluster: the head offers `learner_node` (2 CPUs), a second node `rollout_node` (2 CPUs), a third
`reward_node` (1 CPU). The 4-step run of `tests/test_train_e2e.py`, pinned there by `*.resource`, must pass the same
run-directory checks with each sync transport. The elastic test then adds and removes nodes under a running job;
it holds the step during which a node joins (SIGSTOP on that step's engine) until the node is up, so a loaded host
that takes minutes to start a raylet cannot let the run finish first.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import tests.test_train_e2e as e2e
from tests.conftest import REPO_ROOT, launch_command, tiny_run_overrides
from tests.ray_nodes import VENV_BIN, RayCluster, ray_env

PINNED = ["learner.resource=learner_node", "rollout.resource=rollout_node", "reward.resource=reward_node"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with RayCluster(head_cpus=2, head_resources={"learner_node": 1}, dashboard=True) as nodes:
        nodes.add_node(cpus=2, resources={"rollout_node": 1})
        nodes.add_node(cpus=1, resources={"reward_node": 1})
        yield nodes


def _launch(cluster: RayCluster, overrides: list[str]) -> subprocess.Popen:
    env = {**ray_env(), "RAY_ADDRESS": cluster.address}
    return subprocess.Popen(
        launch_command(overrides), cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _ray_list(cluster: RayCluster, what: str) -> list[dict]:
    listed = subprocess.run(
        [str(VENV_BIN / "ray"), "list", what, "--address", cluster.dashboard_url, "--format", "json", "--detail"],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    return json.loads(listed.stdout)


@pytest.mark.parametrize("transport", ["object_store", "collective"])
def test_three_nodes_give_the_single_node_run_directory(
    cluster: RayCluster, tiny_model_dir: Path, tmp_path: Path, transport: str
) -> None:
    run_dir = tmp_path / "run"
    overrides = e2e._overrides(tiny_model_dir, run_dir, "trainer.eval_size=4", f"sync.transport={transport}", *PINNED)
    driver = _launch(cluster, overrides)
    output, _ = driver.communicate(timeout=900)
    assert driver.returncode == 0, output[-6000:]
    e2e.test_run_directory_has_every_artifact(run_dir)
    e2e.test_rollouts_agree_with_rewards_advantages_and_versions(run_dir)

    # Every actor of each kind ran on the node offering its kind's resource (dead actors stay listed).
    nodes = {n["node_id"]: n["resources_total"] for n in _ray_list(cluster, "nodes")}
    where = {"LearnerRank": "learner_node", "RolloutEngine": "rollout_node", "_RewardWorkerShell": "reward_node"}
    for actor in _ray_list(cluster, "actors"):
        if actor["class_name"] in where:
            assert where[actor["class_name"]] in nodes[actor["node_id"]], (actor["class_name"], actor["node_id"])
    assert len({n for n in nodes if any(k in nodes[n] for k in where.values())}) == 3


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _when(reached: Callable[[], bool], driver: subprocess.Popen) -> None:
    while not reached():
        assert driver.poll() is None, "the run ended early"
        time.sleep(0.1)


def _rollout_engine_on(node: subprocess.Popen) -> psutil.Process:
    """The rollout engine's process on `node`: a descendant of that node's `ray start`, so no other run's."""
    engines = []
    for process in psutil.Process(node.pid).children(recursive=True):
        try:
            if process.cmdline()[0].startswith("ray::RolloutEngine"):
                engines.append(process)
        except (psutil.NoSuchProcess, IndexError):  # a process that just ended, or one without a command line
            continue
    assert len(engines) == 1, engines
    return engines[0]


def test_rollout_nodes_join_and_leave_a_running_job(cluster: RayCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    """An elastic pool (1 to 2 engines) on nodes offering `elastic_node` (1 CPU each: one engine per node). A node
    joins during step 2 and the pool has its engine within one step; once a step sampled on both engines the first
    node leaves, and the pool is down to one engine by the end of that step. Every step runs once, every completion
    carries the version its step samples (step s: version s-1), and every sync's probe passes on every engine."""
    first = cluster.add_node(cpus=1, resources={"elastic_node": 1})
    run_dir = tmp_path / "run"
    steps = 6
    overrides = tiny_run_overrides(
        tiny_model_dir,
        run_dir,
        f"trainer.total_steps={steps}",
        "trainer.checkpoint_every=0",
        "data.prompts_per_step=2",
        "rollout.max_tokens=8",
        "rollout.num_workers=1",
        "rollout.max_workers=2",
        "rollout.resource=elastic_node",
        "learner.resource=learner_node",
        "reward.resource=reward_node",
        "reward.functions=tests.train_rewards:letter_a_share",
    )
    driver = _launch(cluster, overrides)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(driver.stdout or []), daemon=True)
    reader.start()
    second: subprocess.Popen | None = None
    try:
        _when(lambda: len(_records(run_dir)) >= 1, driver)
        # Step 2 is under way: its engine is held (SIGSTOP) until the new node is in the cluster, so the node joins
        # during step 2 however long a loaded host takes to start a raylet (minutes, at worst).
        engine = _rollout_engine_on(first)
        engine.suspend()
        try:
            second = cluster.add_node(cpus=1, resources={"elastic_node": 1})
        finally:
            engine.resume()
        assert len(_records(run_dir)) == 1, "step 2 ended while its engine was held"
        _when(lambda: any(r["rollout/workers"] == 2.0 for r in _records(run_dir)), driver)
        grown = next(r["step"] for r in _records(run_dir) if r["rollout/workers"] == 2.0)
        _when(lambda: len(_records(run_dir)) > grown, driver)  # step `grown + 1` sampled on both engines
        left_during = len(_records(run_dir)) + 1
        cluster.remove_node(first)
        driver.wait(timeout=900)
        reader.join(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
        if second is not None:
            cluster.remove_node(second)
    log = "".join(output)
    assert driver.returncode == 0, log[-6000:]
    records = {r["step"]: r for r in _records(run_dir)}
    workers = [records[s]["rollout/workers"] for s in range(1, steps + 1)]
    print(f"rollout/workers per step: {workers}; joined during step 2, left during step {left_during}")
    # Joined during step 2: its engine was in the pool at the end of step 2 or step 3, sampling from the next one.
    assert grown in (2, 3), workers
    assert left_during <= steps, (grown, left_during)  # a step ran after the node left
    assert workers == [1.0] * (grown - 1) + [2.0] * (left_during - grown) + [1.0] * (steps - left_during + 1)
    assert "rollout workers: 1 -> 2 (lost none, joined [1]" in log and "rollout workers: 2 -> 1 (lost [0]" in log
    # Each step once, its completions all there (a node leaving mid-step cost at most the redo of its prompts),
    # rewards and advantages consistent, and every completion sampled by version step - 1.
    by_step = e2e.check_run_directory(run_dir, steps, lambda step: step - 1)
    assert all(len(by_step[s]) == 2 * 4 for s in range(1, steps + 1))
    # The probe after every sync (sync.verify_every=1) found every engine, the newcomer too, computing with the
    # learner's weights.
    for step, record in records.items():
        assert (
            record["sync/probe_mismatch"] < 0.1 if record["sync/pushed"] else math.isnan(record["sync/probe_mismatch"])
        ), step
