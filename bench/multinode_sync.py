"""Weight-sync time across Ray nodes, for both transports: learner on one node, one engine on each of two others.

    .venv/bin/python bench/multinode_sync.py --repeats 5

Starts a 3-node Ray cluster on this host (`tests/ray_nodes.py`: three raylets, each with its own object store; the
head offers `learner_node`, the two others `rollout_node` with one CPU each), joins it as the driver and, per
transport, starts the real `Workers` (1 learner rank, 2 vLLM engines; configs/debug.yaml, SmolLM2-135M by default)
and times `Workers.sync_weights` `--repeats` times: gather on the learner, transfer, reload in both engines,
checksums compared (the probe is off). The weights do not change between pushes; the work is the same.

On one host this measures the multi-raylet path (object transfer between object stores, or the gloo group over
loopback), not a network: across machines add the bytes over the link (SmolLM2 bf16: 269 MB per engine for the
object store, pulled once per node; the collective sends it once per engine from rank 0).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import add_workload_args, debug_config, machine_line  # noqa: E402  (after sys.path)


def time_syncs(transport: str, args: argparse.Namespace) -> list[float]:
    from cluster.model_source import resolve_model_path
    from cluster.placement import Workers

    cfg = debug_config(
        args,
        "rollout.num_workers=2",
        "rollout.cpus_per_worker=1",
        "rollout.resource=rollout_node",
        "learner.resource=learner_node",
        "sync.verify_every=0",
        f"sync.transport={transport}",
    )
    workers = Workers.start(cfg, resolve_model_path(cfg.model.path, cfg.model.cache_dir))
    try:
        seconds = []
        for version in range(1, args.repeats + 1):
            start = time.perf_counter()
            workers.sync_weights(version)
            seconds.append(time.perf_counter() - start)
        return seconds
    finally:
        workers.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_args(parser, prompts=2, max_tokens=16)
    parser.add_argument("--repeats", type=int, default=5, help="syncs per transport (the first includes warm-up)")
    args = parser.parse_args()

    from tests.ray_nodes import RayCluster, ray_env

    os.environ.update(ray_env())  # token authentication on before Ray is imported: it reads the mode once
    import ray

    with RayCluster(head_cpus=2, head_resources={"learner_node": 1}) as cluster:
        cluster.add_node(cpus=1, resources={"rollout_node": 1})
        cluster.add_node(cpus=1, resources={"rollout_node": 1})
        os.environ["RAY_ADDRESS"] = cluster.address
        ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}})
        try:
            rows = {transport: time_syncs(transport, args) for transport in ("object_store", "collective")}
        finally:
            ray.shutdown()
    print(f"\nmachine: {machine_line()}")
    print(f"model: {args.model}; 3 Ray nodes on this host: learner (1 rank) | engine 1 | engine 2")
    print("| transport | first sync (s) | later syncs (s) | median of later (s) |")
    print("|---|---|---|---|")
    for transport, seconds in rows.items():
        later = " / ".join(f"{s:.2f}" for s in seconds[1:])
        print(f"| {transport} | {seconds[0]:.2f} | {later} | {statistics.median(seconds[1:]):.2f} |")


if __name__ == "__main__":
    main()
