"""Weight identity shared by both ends of a sync: which tensors travel, and an exact checksum of them.

The checksum is taken over the values as the engine stores them (cast to the engine dtype, bf16 by default),
summing their raw bit patterns as integers: exact and independent of summation order or thread count, so
the learner's checksum and each rollout engine's can be compared for equality.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

# vLLM ties lm_head to the embedding itself and ignores this tensor; sending it would only cost bandwidth.
TIED_HEAD = "lm_head.weight"

_INT_VIEW = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}


def synced_names(names: Iterable[str], tie_word_embeddings: bool) -> list[str]:
    """The parameter names a sync carries, in a fixed order."""
    return sorted(n for n in names if not (tie_word_embeddings and n == TIED_HEAD))


Fingerprint = tuple[str, tuple[int, ...], int]


def tensor_fingerprint(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> Fingerprint:
    """(name, shape, sum of the bit patterns of the values cast to `dtype`): small, exact, order-free."""
    bits = tensor.detach().to(device="cpu", dtype=dtype).contiguous().view(_INT_VIEW[dtype])
    return name, tuple(tensor.shape), int(bits.sum(dtype=torch.int64))


def checksum_of(fingerprints: Iterable[Fingerprint]) -> str:
    """A short hex digest of fingerprints, independent of the order they were taken in."""
    digest = hashlib.sha256()
    for name, shape, bit_sum in sorted(fingerprints):
        digest.update(f"{name}:{shape}:{bit_sum};".encode())
    return digest.hexdigest()[:16]


def weight_checksum(named_tensors: Iterable[tuple[str, torch.Tensor]], dtype: torch.dtype) -> str:
    return checksum_of(tensor_fingerprint(name, tensor, dtype) for name, tensor in named_tensors)


def torch_dtype(name: str) -> torch.dtype:
    """`"bfloat16"` -> torch.bfloat16, for the dtype names the config accepts."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r}")
    return dtype
