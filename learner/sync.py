"""The `collective` weight-sync transport: bucketed broadcasts over a side gloo group.

The group spans learner rank 0 (rank 0 here, the sender) and every rollout engine (ranks 1..N). It touches no
global torch.distributed state: the in-process vLLM engine has already called `init_process_group` in the rollout
process and built groups of its own over it (STACK.md), so this is a `TCPStore` (master on rank 0) wrapped in a
`PrefixStore`, under a bare `ProcessGroupGloo`, used only through its own `broadcast`.

One sync is a header, then the buckets:

1. the header's byte length (one int64), then the header (UTF-8 JSON as uint8): per tensor its name, shape, dtype,
   bucket index and byte offset, and the byte size of every bucket;
2. each bucket: a flat uint8 tensor holding the bucket's tensors back to back (offsets aligned to 64 bytes).

    # learner rank 0                                   # each rollout engine i = 1..N
    group = create_sync_group(host, port, 0, N + 1)     group = create_sync_group(host, port, i, N + 1)
    broadcast_weights(group, state_dict.items(),        engine.load_weights(receive_weights(group), version)
                      torch.bfloat16, tie_word_embeddings=True)

`receive_weights` is a generator that receives bucket after bucket and yields that bucket's tensors, so a single
vLLM `reload_weights` call can stream the whole model (it must see the whole model in one call, STACK.md) while
the extra memory stays about one bucket. A tensor larger than the bucket size travels alone in a bucket of its own
size. Every member must call `create_sync_group` concurrently (rank 0's call returns only when all have joined),
and the sender's `broadcast_weights` concurrently with every receiver's consumption of `receive_weights`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from learner.weights import synced_names

DEFAULT_BUCKET_BYTES = 128 * 2**20
"""At most this many bytes per bucket (unless one tensor alone is larger)."""

ALIGN_BYTES = 64
"""Every tensor starts at a multiple of this offset in its bucket, so its uint8 slice can be viewed as any dtype."""

HEADER_FORMAT = 1

Header = dict[str, Any]
"""{"format": 1, "bucket_bytes": [int, ...], "tensors": [{"name", "shape", "dtype", "bucket", "offset"}, ...]}"""


def create_sync_group(
    host: str, port: int, rank: int, world_size: int, timeout_s: float = 300
) -> dist.ProcessGroupGloo:
    """Join the side gloo group of the weight sync; touches no global torch.distributed state.

    Rank 0 hosts the `TCPStore` on `port` (bound on every interface; `host` is its address as the others reach
    it). Ranks 1..world_size-1 connect to it, retrying until `timeout_s` if the master is not up yet. Every rank
    blocks in gloo's rendezvous until all `world_size` members have joined, so all must call this concurrently.
    `timeout_s` also bounds every later broadcast on the group.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a group of {world_size}")
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, rank == 0, timeout, wait_for_workers=False)
    prefix_store = dist.PrefixStore("grpo_weight_sync", store)
    # The group keeps its store (and the store the TCP server) alive for as long as the group lives.
    return dist.ProcessGroupGloo(prefix_store, rank, world_size, timeout)


def _align(offset: int) -> int:
    return -(-offset // ALIGN_BYTES) * ALIGN_BYTES


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_of(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a weight-sync header")
    return dtype


def _nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    numel = 1
    for size in shape:
        numel *= size
    return numel * dtype.itemsize


def plan_buckets(
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> Header:
    """The header of a sync: where each tensor lands in which bucket, floating ones cast to `dtype` (None: kept).

    Tensors fill buckets in the given order; a tensor that would overflow a non-empty bucket starts the next one,
    and a tensor larger than `bucket_bytes` gets a bucket of its own, of its own size.
    """
    if bucket_bytes <= 0:
        raise ValueError("bucket_bytes must be positive")
    entries: list[dict[str, Any]] = []
    sizes: list[int] = []
    used = 0
    for name, tensor in named_tensors:
        target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
        nbytes = _nbytes(tensor.shape, target)
        offset = _align(used)
        if not sizes or (used > 0 and offset + nbytes > bucket_bytes):
            sizes.append(0)
            offset = 0
        used = offset + nbytes
        sizes[-1] = used
        entries.append(
            {
                "name": name,
                "shape": list(tensor.shape),
                "dtype": _dtype_name(target),
                "bucket": len(sizes) - 1,
                "offset": offset,
            }
        )
    return {"format": HEADER_FORMAT, "bucket_bytes": sizes, "tensors": entries}


def _bucket_views(header: Header, index: int, bucket: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, view into `bucket`) for every tensor of bucket `index`, in header order."""
    for entry in header["tensors"]:
        if entry["bucket"] != index:
            continue
        dtype = _dtype_of(entry["dtype"])
        start = entry["offset"]
        flat = bucket[start : start + _nbytes(entry["shape"], dtype)]
        yield entry["name"], flat.view(dtype).view(entry["shape"])


def fill_bucket(header: Header, index: int, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """A new flat uint8 CPU tensor holding bucket `index`: each of its tensors copied (and cast) into place."""
    bucket = torch.empty(header["bucket_bytes"][index], dtype=torch.uint8)  # alignment padding is never read
    for name, view in _bucket_views(header, index, bucket):
        view.copy_(tensors[name].detach())
    return bucket


def _broadcast(group: dist.ProcessGroup, tensor: torch.Tensor) -> None:
    options = dist.BroadcastOptions()
    options.rootRank = 0
    options.rootTensor = 0
    group.broadcast([tensor], options).wait()


def broadcast_weights(
    group: dist.ProcessGroup,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None = torch.bfloat16,
    *,
    tie_word_embeddings: bool,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Send one sync from rank 0: the header, then each bucket; floating tensors cast to `dtype` (the engine's).

    Carries the tensors `synced_names` picks, in its order (the tied `lm_head.weight` is dropped when
    `tie_word_embeddings`). Sender memory beyond the source tensors is about one bucket. Returns once every
    receiver has received every bucket (gloo's broadcast completes when all members took part).
    """
    if group.rank() != 0:
        raise ValueError(f"broadcast_weights runs on rank 0 of the sync group, not rank {group.rank()}")
    tensors = dict(named_tensors)
    header = plan_buckets(((n, tensors[n]) for n in synced_names(tensors, tie_word_embeddings)), dtype, bucket_bytes)
    encoded = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
    _broadcast(group, torch.tensor([encoded.numel()], dtype=torch.int64))
    _broadcast(group, encoded)
    for index in range(len(header["bucket_bytes"])):
        _broadcast(group, fill_bucket(header, index, tensors))


def receive_header(group: dist.ProcessGroup) -> Header:
    """Receive the header of the next sync (a receiver's first step; `receive_weights` calls it)."""
    length = torch.zeros(1, dtype=torch.int64)
    _broadcast(group, length)
    encoded = torch.zeros(int(length.item()), dtype=torch.uint8)
    _broadcast(group, encoded)
    header = json.loads(encoded.numpy().tobytes().decode())
    if header.get("format") != HEADER_FORMAT:
        raise ValueError(f"weight-sync header format {header.get('format')!r}, expected {HEADER_FORMAT}")
    return header


def receive_weights(group: dist.ProcessGroup) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive one sync on a rank > 0: a generator of (name, tensor), bucket after bucket.

    Nothing is received before the first `next()`. Each bucket lands in a fresh buffer and its tensors are
    yielded as views into it: vLLM's layerwise reload holds on to loaded tensors until their layer is complete,
    so a buffer is never reused; it is freed once nothing references its views. If the consumer stops early
    (an error while loading), closing the generator still receives the remaining buckets, so the sender is not
    left waiting and the group stays in step for the next sync.
    """
    if group.rank() == 0:
        raise ValueError("receive_weights runs on the receivers (ranks > 0) of the sync group")
    header = receive_header(group)
    sizes: list[int] = header["bucket_bytes"]
    received = 0
    broken = False
    try:
        for index, nbytes in enumerate(sizes):
            bucket = torch.empty(nbytes, dtype=torch.uint8)
            try:
                _broadcast(group, bucket)
            except BaseException:
                broken = True  # the group itself failed: nothing more can be received
                raise
            received += 1
            yield from _bucket_views(header, index, bucket)
    finally:
        if not broken:
            for nbytes in sizes[received:]:
                _broadcast(group, torch.empty(nbytes, dtype=torch.uint8))
