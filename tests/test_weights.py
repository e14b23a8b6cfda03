"""Tests for learner.weights: the exact weight checksum and the object-store wire format (pure torch/numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.weights import from_wire, tensor_fingerprint, to_wire, weight_checksum


def test_fingerprint_sums_bf16_bit_patterns_two_per_word() -> None:
    # bf16 1.0 = 0x3F80 = 16256 and 2.0 = 0x4000 = 16384; little-endian pairs them into one int32 word.
    pair = tensor_fingerprint("w", torch.tensor([1.0, 2.0]), torch.bfloat16)
    assert pair == ("w", (2,), 16256 + 16384 * 65536)
    single = tensor_fingerprint("w", torch.tensor([1.0, 2.0, -2.0]), torch.bfloat16)  # odd count: one per word
    assert single == ("w", (3,), 16256 + 16384 + (0xC000 - 65536))


def test_fingerprint_matches_an_independent_int64_reference_and_sees_one_ulp() -> None:
    weights = torch.randn(64, 33, generator=torch.Generator().manual_seed(0))  # 2112 values: paired
    bits = weights.to(torch.bfloat16).view(torch.int16).flatten().to(torch.int64)
    reference = int((bits[0::2] & 0xFFFF).sum() + (bits[1::2] * 65536).sum())  # low half unsigned, high signed
    assert tensor_fingerprint("w", weights, torch.bfloat16)[2] == reference
    nudged = weights.to(torch.bfloat16).clone()
    nudged.view(torch.int16)[7, 3] += 1  # one bf16 ulp in one value
    assert weight_checksum([("w", nudged)], torch.bfloat16) != weight_checksum([("w", weights)], torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_wire_round_trip_is_bit_exact_and_zero_copy(dtype: torch.dtype) -> None:
    tensor = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).to(dtype)
    bits = to_wire(tensor)
    assert isinstance(bits, np.ndarray) and bits.shape == (3, 5) and bits.itemsize == tensor.element_size()
    bits.setflags(write=False)  # as Ray hands it out of shared memory
    back = from_wire(bits, dtype)
    assert back.dtype == dtype and torch.equal(back, tensor)
    assert back.data_ptr() == bits.ctypes.data  # a view, not a copy
    assert tensor_fingerprint("w", back, dtype) == tensor_fingerprint("w", tensor, dtype)
