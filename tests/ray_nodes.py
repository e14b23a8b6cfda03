"""Real Ray nodes on this one host, for the multi-node and `ray job submit` tests: each node is a `ray start --block`
process in its own session, with its own raylet and object store, every port free-picked so nothing collides with
another cluster on the machine. A node is stopped through its own process group only (never `ray stop`, which
would stop every Ray on the host).

    with RayCluster(head_cpus=2, head_resources={"learner_node": 1}) as cluster:
        worker = cluster.add_node(cpus=2, resources={"rollout_node": 1})
        ...  # RAY_ADDRESS=cluster.address for a driver; cluster.dashboard_url for `ray job submit`
        cluster.remove_node(worker)
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
from types import TracebackType

from tests.conftest import REPO_ROOT

VENV_BIN = Path(sys.executable).parent
OBJECT_STORE_BYTES = 1_000_000_000  # per node: the runs here move tens of MB; SmolLM2's weights are 270 MB


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def ray_env() -> dict[str, str]:
    """The environment for `ray` commands, nodes and drivers: this venv's binaries first, no RAY_ADDRESS inherited,
    and Ray 2.60's default token authentication on (clients read the token `ray start --head` saved)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    return env


class RayCluster:
    def __init__(self, head_cpus: int, head_resources: dict[str, float] | None = None, dashboard: bool = False):
        # Ray's unix sockets live under the temp dir; pytest's tmp_path is too long for their 107-byte limit.
        self.temp_dir = tempfile.mkdtemp(prefix="raynodes-", dir="/tmp")
        gcs, self.dashboard_port = free_ports(2)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        head_args = ["--head", f"--port={gcs}", f"--temp-dir={self.temp_dir}"]
        if dashboard:
            head_args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1"]
            head_args += [f"--dashboard-port={self.dashboard_port}"]
        else:
            head_args += ["--include-dashboard=false"]
        self.nodes: list[subprocess.Popen] = []
        self.head = self._start(head_args, head_cpus, head_resources)
        self.wait_for_nodes(1)

    def add_node(self, cpus: int, resources: dict[str, float] | None = None) -> subprocess.Popen:
        """Start one more node (raylet, object store) joining the head; returns once Ray counts it."""
        before = self._alive_nodes()
        node = self._start([f"--address={self.address}"], cpus, resources)
        deadline = time.monotonic() + 300  # a loaded 2-core host took over 120 s once
        while self._alive_nodes() <= before:
            assert time.monotonic() < deadline, "the new node never joined the cluster"
            time.sleep(1)
        return node

    def _start(self, role_args: list[str], cpus: int, resources: dict[str, float] | None) -> subprocess.Popen:
        client, agent_http, agent_grpc, runtime_env_agent, metrics, node_manager, object_manager = free_ports(7)
        args = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            *role_args,
            f"--num-cpus={cpus}",
            f"--resources={json.dumps(resources or {})}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
        ]
        node = subprocess.Popen(
            args,
            cwd=REPO_ROOT,
            env=ray_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopping it touches nothing else
        )
        self.nodes.append(node)
        return node

    def _alive_nodes(self) -> int:
        """Alive nodes as the GCS reports them (0 while the head is not up yet)."""
        probe = subprocess.run(
            [str(VENV_BIN / "python"), "-c", _COUNT_NODES, self.address],
            env=ray_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return int(probe.stdout.strip() or 0) if probe.returncode == 0 else 0

    def wait_for_nodes(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while self._alive_nodes() < count:
            assert time.monotonic() < deadline, f"the cluster never reached {count} nodes"
            time.sleep(1)

    def remove_node(self, node: subprocess.Popen) -> None:
        """Stop one node as a machine leaving would: its raylet and every actor on it go."""
        os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:  # `ray start --block` stops its processes one by one, slowly at times
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(timeout=30)
        self.nodes.remove(node)

    def shutdown(self) -> None:
        for node in reversed(list(self.nodes)):
            self.remove_node(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.shutdown()


# Counts alive nodes through the GCS client alone (no driver connects, so nothing is scheduled by the probe).
_COUNT_NODES = """
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=10)
print(sum(1 for n in nodes.values() if n.state == 0))
"""
