"""Runs spread over several real Ray nodes on this host (each its own raylet and object store; `tests/ray_nodes.py`).

One module-wide cluster: the head offers `learner_node` (2 CPUs), a second node `rollout_node` (2 CPUs), a third
`reward_node` (1 CPU). The 4-step run of `tests/test_train_e2e.py`, pinned there by `*.resource`, must pass the same
run-directory checks with each sync transport. The elastic test then adds and removes nodes under a running job.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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


def _when_steps(run_dir: Path, count: int, driver: subprocess.Popen) -> None:
    while len(_records(run_dir)) < count:
        assert driver.poll() is None, "the run ended early"
        time.sleep(0.5)


def test_rollout_nodes_join_and_leave_a_running_job(cluster: RayCluster, tiny_model_dir: Path, tmp_path: Path) -> None:
    """An elastic pool (1 to 2 engines) on nodes offering `elastic_node`: a node joins after step 2 and the first
    one leaves after step 5; every step runs once, with the version it expects, on the engines present."""
    first = cluster.add_node(cpus=1, resources={"elastic_node": 1})
    run_dir = tmp_path / "run"
    steps = 8
    overrides = tiny_run_overrides(
        tiny_model_dir,
        run_dir,
        f"trainer.total_steps={steps}",
        "trainer.checkpoint_every=0",
        "data.prompts_per_step=2",
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
    try:
        _when_steps(run_dir, 2, driver)
        second = cluster.add_node(cpus=1, resources={"elastic_node": 1})
        joined_after = len(_records(run_dir))
        _when_steps(run_dir, 5, driver)
        cluster.remove_node(first)
        left_after = len(_records(run_dir))
        driver.wait(timeout=900)
        reader.join(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    log = "".join(output)
    assert driver.returncode == 0, log[-6000:]
    records = _records(run_dir)
    assert [r["step"] for r in records] == list(range(1, steps + 1))  # no step lost or repeated
    workers = [r["rollout/workers"] for r in records]
    print("rollout/workers per step:", workers, "| joined after step", joined_after, "| left after", left_after)
    assert workers[0] == 1.0
    # The joining node's engine is in the pool at the end of the step during which it joined, or the next one.
    assert 2.0 in workers[joined_after - 1 : joined_after + 1], workers
    assert workers[-1] == 1.0  # the first node's engine is gone, the run went on with the second one
    assert "rollout workers: 1 -> 2" in log and "rollout workers: 2 -> 1" in log
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rollouts}) == list(range(1, steps + 1))
    assert all(sum(r["step"] == s for r in rollouts) == 2 * 4 for s in range(1, steps + 1))
    assert all(r["policy_version"] == r["step"] - 1 for r in rollouts)
    assert all(r["policy_version"] == r["step"] - 1 for r in records)
    cluster.remove_node(second)
