"""`ray job submit -- python cluster/launch.py ...` against a head this test starts with `ray start --head`.

The head keeps Ray 2.60's default token authentication; the client passes RAY_AUTH_MODE=token so it reads the
token `ray start` saved. Every fixed-default port gets a free one, so the head cannot collide with another
cluster on the machine, and only the head started here is stopped (its `ray start --block` process group).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO_ROOT, tiny_run_overrides

VENV_BIN = Path(sys.executable).parent


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_ray_job_submit_trains_and_writes_the_run_dir(tiny_model_dir: Path, tmp_path: Path) -> None:
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env_agent, metrics = _free_ports(7)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    # Ray's unix sockets live under the temp dir; pytest's tmp_path is too long for their 107-byte limit.
    ray_tmp = tempfile.mkdtemp(prefix="rayjob-", dir="/tmp")
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={gcs}",
            "--num-cpus=6",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics}",
            f"--temp-dir={ray_tmp}",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run_dir = tmp_path / "run"
        submit = [
            str(VENV_BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--working-dir",
            str(REPO_ROOT),
            "--",
            "python",
            "cluster/launch.py",
            "--config",
            "configs/debug.yaml",
            *tiny_run_overrides(tiny_model_dir, run_dir, "trainer.total_steps=2", "trainer.checkpoint_every=0"),
        ]
        client_env = {**env, "RAY_AUTH_MODE": "token"}
        deadline = time.monotonic() + 90
        while True:  # the dashboard needs a few seconds after `ray start` before it takes jobs
            probe = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "list", "--address", f"http://127.0.0.1:{dashboard}"],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        job = subprocess.run(submit, cwd=REPO_ROOT, env=client_env, capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, f"{job.stdout[-4000:]}\n{job.stderr[-4000:]}"
        assert "succeeded" in job.stdout.lower()
        steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2]
        assert (run_dir / "final" / "model.safetensors").is_file()
        assert (run_dir / "rollouts.jsonl").is_file() and (run_dir / "config.yaml").is_file()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
