"""The `collective` weight sync: bucketing over a real gloo side group, and real vLLM rollout actors under Ray.

The Ray tests play learner rank 0 with a test-only sender actor (tests/sync_sender.py) and check each engine by its
checksum of what it loaded and by behaviour: greedy output changes after a perturbed sync and returns exactly after
the originals are sent back.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from actors.rollout import create_rollout_workers
from cluster.config import RolloutConfig
from learner.rendezvous import free_port
from learner.sync import (
    DEFAULT_BUCKET_BYTES,
    broadcast_weights,
    create_sync_group,
    plan_buckets,
    receive_weights,
)
from learner.weights import TIED_HEAD, synced_names, weight_checksum
from tests.sync_sender import SyncSender, load_state, perturb

PROMPTS = ["What is 2 + 3?", "Name a prime number.", "Count to five.", "Say hello.", "What is 10 - 4?"]
CFG = RolloutConfig(max_tokens=24, max_model_len=512, kv_cache_gib=1)


def _mixed_tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "a.fp32": torch.randn(7, 5, generator=generator),
        "b.fp16": torch.randn(33, generator=generator).half(),
        "c.bf16": torch.randn(3, 3, 3, generator=generator).bfloat16(),
        "d.fp64": torch.randn(40, generator=generator).double(),
        "e.big": torch.randn(40, 40, generator=generator),  # 3200 bytes in bf16: larger than a bucket
        "f.transposed": torch.randn(6, 9, generator=generator).t(),  # not contiguous
        "g.int": torch.arange(12, dtype=torch.int64).view(3, 4),  # not floating: keeps its dtype
        "h.empty": torch.empty(0, 4),
        "i.scalar": torch.tensor(1.5),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, None])
def test_buckets_round_trip_through_a_real_sync(dtype: torch.dtype | None) -> None:
    """The sender's bucketing (`broadcast_weights`) and a receiver's (`receive_weights`), over a two-member group."""
    tensors = _mixed_tensors()
    bucket_bytes = 1024
    header = plan_buckets(tensors.items(), dtype, bucket_bytes)  # the layout broadcast_weights sends
    assert len(header["bucket_bytes"]) >= 3
    entries = {e["name"]: e for e in header["tensors"]}
    big = entries["e.big"]
    assert big["offset"] == 0 and [e["bucket"] for e in header["tensors"]].count(big["bucket"]) == 1
    for index, size in enumerate(header["bucket_bytes"]):
        assert size <= bucket_bytes or index == big["bucket"]

    port, groups = free_port(), {}

    def join(rank: int):
        return lambda: groups.update({rank: create_sync_group("127.0.0.1", port, rank, 2, timeout_s=60)})

    _run_concurrently(join(0), join(1))
    received: list[tuple[str, torch.Tensor]] = []

    def send() -> None:
        broadcast_weights(groups[0], tensors.items(), dtype, tie_word_embeddings=False, bucket_bytes=bucket_bytes)

    _run_concurrently(lambda: received.extend(receive_weights(groups[1])), send)
    assert [name for name, _ in received] == list(tensors)  # sorted names: the given order
    for name, tensor in received:
        source = tensors[name]
        expected_dtype = dtype if dtype is not None and source.is_floating_point() else source.dtype
        assert tensor.dtype == expected_dtype and tensor.shape == source.shape, name
        assert torch.equal(tensor, source.to(expected_dtype)), name


def test_plan_buckets_fills_in_order_and_aligns() -> None:
    tensors = [("x", torch.zeros(10)), ("y", torch.zeros(10)), ("z", torch.zeros(300))]  # 40, 40, 1200 bytes fp32
    header = plan_buckets(tensors, None, bucket_bytes=128)
    assert [(e["bucket"], e["offset"]) for e in header["tensors"]] == [(0, 0), (0, 64), (1, 0)]
    assert header["bucket_bytes"] == [104, 1200]
    assert plan_buckets([], torch.bfloat16)["bucket_bytes"] == []


def _run_concurrently(*targets) -> None:
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as error:  # re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a sync member hung"
    if errors:
        raise errors[0]


def test_gloo_side_group_broadcasts_buckets_and_survives_an_early_stop() -> None:
    """Three members in threads of this process: receivers join before the store's master exists (they retry)."""
    port, world = free_port(), 3
    groups: dict[int, object] = {}

    def join(rank: int, delay: float = 0.0):
        def run():
            time.sleep(delay)
            groups[rank] = create_sync_group("127.0.0.1", port, rank, world, timeout_s=60)

        return run

    _run_concurrently(join(1), join(2), join(0, delay=1.0))

    state = {**_mixed_tensors(), TIED_HEAD: torch.randn(4, 4)}
    expected = weight_checksum(((n, state[n]) for n in synced_names(state, True)), torch.bfloat16)
    received: dict[tuple[int, int], list[tuple[str, torch.Tensor]]] = {}

    def receive(rank: int, sync: int, stop_after: int | None = None):
        def run():
            items = []
            stream = receive_weights(groups[rank])
            for name, tensor in stream:
                items.append((name, tensor))
                if stop_after is not None and len(items) == stop_after:
                    stream.close()  # must still drain the remaining buckets
                    break
            received[(rank, sync)] = items

        return run

    def send(sync: int):
        return lambda: broadcast_weights(
            groups[0], state.items(), torch.bfloat16, tie_word_embeddings=True, bucket_bytes=1024
        )

    _run_concurrently(receive(1, 0), receive(2, 0, stop_after=1), send(0))
    assert len(received[(2, 0)]) == 1
    for sync in (1, 2):  # the same group, reused after a receiver stopped early
        _run_concurrently(receive(1, sync), receive(2, sync), send(sync))
        for rank in (1, 2):
            items = received[(rank, sync)]
            assert [n for n, _ in items] == synced_names(state, True)
            assert TIED_HEAD not in dict(items)
            assert weight_checksum(items, torch.bfloat16) == expected


def _sync(sender, workers: list, which: str, version: int) -> tuple[list[str], float, float]:
    """Start the sender and every receiver together; returns the checksums, wall time and the sender's time."""
    start = time.perf_counter()
    send = sender.send.remote(which)
    checksums = ray.get([w.receive_weights.remote(version) for w in workers])
    sent = ray.get(send)
    return checksums, time.perf_counter() - start, sent


@pytest.mark.parametrize(
    ("count", "bucket_bytes"),
    # small buckets: the embedding (12.6 MiB) travels alone in an oversized bucket, each layer spans several buckets,
    # and all of them stream through one reload call
    [(1, DEFAULT_BUCKET_BYTES), (1, 64 * 1024), (2, 64 * 1024)],
)
def test_collective_sync_into_rollout_actors(
    ray_cluster: None, tiny_model_dir: Path, count: int, bucket_bytes: int
) -> None:
    workers = create_rollout_workers(CFG, str(tiny_model_dir), seed=0, count=count)
    sender = ray.remote(SyncSender).options(num_cpus=1).remote(str(tiny_model_dir), 123, bucket_bytes)
    try:
        original, tied = load_state(tiny_model_dir)
        perturbed = perturb(original, 123)
        assert tied and TIED_HEAD in perturbed  # the sender must drop it
        checksum_original = weight_checksum(((n, original[n]) for n in synced_names(original, tied)), torch.bfloat16)
        checksum_perturbed = weight_checksum(((n, perturbed[n]) for n in synced_names(perturbed, tied)), torch.bfloat16)
        assert checksum_perturbed != checksum_original

        greedy_before = ray.get([w.generate_greedy.remote(PROMPTS) for w in workers])
        assert ray.get([w.checksum.remote() for w in workers]) == [checksum_original] * count

        host, port = ray.get(sender.address.remote())
        joins = [sender.join.remote(count + 1)]
        joins += [w.join_sync_group.remote(host, port, rank, count + 1) for rank, w in enumerate(workers, start=1)]
        ray.get(joins)

        checksums, wall_1, sent_1 = _sync(sender, workers, "perturbed", 1)
        assert checksums == [checksum_perturbed] * count
        greedy_perturbed = ray.get([w.generate_greedy.remote(PROMPTS) for w in workers])
        assert all(g != b for g, b in zip(greedy_perturbed, greedy_before, strict=True))
        assert ray.get([w.health.remote() for w in workers]) == [1] * count

        checksums, wall_2, sent_2 = _sync(sender, workers, "original", 2)
        assert checksums == [checksum_original] * count
        assert ray.get([w.generate_greedy.remote(PROMPTS) for w in workers]) == greedy_before
        assert ray.get([w.health.remote() for w in workers]) == [2] * count

        checksums, wall_3, sent_3 = _sync(sender, workers, "perturbed", 3)
        assert checksums == [checksum_perturbed] * count
        assert ray.get([w.generate_greedy.remote(PROMPTS) for w in workers]) == greedy_perturbed
        assert ray.get([w.checksum.remote() for w in workers]) == [checksum_perturbed] * count

        size_mb = sum(original[n].numel() for n in synced_names(original, tied)) * 2 / 2**20
        print(
            f"\ncollective sync, tiny model ({size_mb:.1f} MiB bf16, {ray.get(sender.bucket_count.remote())} buckets) "
            f"-> {count} actor(s): "
            f"pack+broadcast+reload wall {wall_1:.3f}s / {wall_2:.3f}s / {wall_3:.3f}s "
            f"(sender's pack+broadcast {sent_1:.3f}s / {sent_2:.3f}s / {sent_3:.3f}s)"
        )
    finally:
        for actor in [*workers, sender]:
            ray.kill(actor)
