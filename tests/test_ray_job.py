"""`ray job submit -- python cluster/launch.py ...` against a 2-node cluster this test starts with `ray start`.

The head keeps Ray 2.60's default token authentication; the client passes RAY_AUTH_MODE=token so it reads the
token `ray start` saved. The rollout engine is pinned to the second node (`rollout.resource`), so the weights
travel between two raylets' object stores. Only the nodes started here are stopped (`tests/ray_nodes.py`).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, tiny_run_overrides
from tests.ray_nodes import VENV_BIN, RayCluster, ray_env


def test_ray_job_submit_on_two_nodes_trains_and_writes_the_run_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    with RayCluster(head_cpus=4, dashboard=True) as cluster:
        cluster.add_node(cpus=1, resources={"rollout_node": 1})
        run_dir = tmp_path / "run"
        submit = [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            cluster.dashboard_url,
            "--working-dir",
            str(REPO_ROOT),
            "--",
            "python",
            "cluster/launch.py",
            "--config",
            "configs/debug.yaml",
            *tiny_run_overrides(
                tiny_model_dir,
                run_dir,
                "trainer.total_steps=2",
                "trainer.checkpoint_every=0",
                "rollout.resource=rollout_node",
            ),
        ]
        deadline = time.monotonic() + 90
        while True:  # the dashboard needs a few seconds after `ray start` before it takes jobs
            probe = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "list", "--address", cluster.dashboard_url],
                env=ray_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        job = subprocess.run(submit, cwd=REPO_ROOT, env=ray_env(), capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, f"{job.stdout[-4000:]}\n{job.stderr[-4000:]}"
        assert "succeeded" in job.stdout.lower()
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        assert [r["rollout/workers"] for r in records] == [1.0, 1.0]
        assert (run_dir / "final" / "model.safetensors").is_file()
        assert (run_dir / "rollouts.jsonl").is_file() and (run_dir / "config.yaml").is_file()
