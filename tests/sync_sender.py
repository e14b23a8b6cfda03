"""A test-only stand-in for learner rank 0 in the `collective` weight sync (Ray workers import it by module path)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from learner.rendezvous import free_port
from learner.sync import DEFAULT_BUCKET_BYTES, broadcast_weights, create_sync_group, plan_buckets
from learner.weights import TIED_HEAD, synced_names


def load_state(model_dir: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The model's fp32 tensors as a learner's full state dict has them (the tied head included), and the tie flag."""
    model_dir = Path(model_dir)
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(file))
    tied = bool(json.loads((model_dir / "config.json").read_text()).get("tie_word_embeddings"))
    if tied:
        tensors[TIED_HEAD] = tensors["model.embed_tokens.weight"]
    return tensors, tied


def perturb(tensors: dict[str, torch.Tensor], seed: int, scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Deterministic noise on every tensor (the tied head keeps sharing the embedding's values)."""
    generator = torch.Generator().manual_seed(seed)
    out = {
        k: v + scale * torch.randn(v.shape, generator=generator) for k, v in sorted(tensors.items()) if k != TIED_HEAD
    }
    if TIED_HEAD in tensors:
        out[TIED_HEAD] = out["model.embed_tokens.weight"]
    return out


class SyncSender:
    """Holds the original and a perturbed copy of the weights and broadcasts either one as rank 0."""

    def __init__(self, model_dir: str, seed: int, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> None:
        self.bucket_bytes = bucket_bytes
        self.original, self.tied = load_state(model_dir)
        self.perturbed = perturb(self.original, seed)
        self.port = free_port()
        self.group = None

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), self.port

    def join(self, world_size: int) -> None:
        host, port = self.address()
        self.group = create_sync_group(host, port, 0, world_size)

    def send(self, which: str) -> float:
        """Broadcast the `original` or `perturbed` weights in bf16; returns the seconds it took."""
        start = time.perf_counter()
        weights = self.original if which == "original" else self.perturbed
        broadcast_weights(
            self.group, weights.items(), torch.bfloat16, tie_word_embeddings=self.tied, bucket_bytes=self.bucket_bytes
        )
        return time.perf_counter() - start

    def bucket_count(self) -> int:
        names = synced_names(self.original, self.tied)
        return len(
            plan_buckets([(n, self.original[n]) for n in names], torch.bfloat16, self.bucket_bytes)["bucket_bytes"]
        )
