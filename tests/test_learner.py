"""The FSDP2 learner group on real gloo inside real Ray actors, with the tiny Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.config import LearnerConfig
from learner.batch import TrainBatch, pad_batch
from learner.group import LearnerGroup


def _batch(rows: int, seed: int = 0) -> TrainBatch:
    gen = torch.Generator().manual_seed(seed)
    prompts = [
        torch.randint(5, 1000, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(rows)
    ]
    completions = [
        torch.randint(5, 1000, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(rows)
    ]
    return TrainBatch(
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        advantages=torch.randn(rows, generator=gen).tolist(),
        engine_logprobs=[[-1.0] * len(c) for c in completions],
    )


def test_pad_batch_layout() -> None:
    batch = TrainBatch([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], [1.0, -1.0], [[-0.1, -0.2], [-0.3, -0.4, -0.5]])
    padded = pad_batch(batch, pad_token_id=0)
    assert padded.input_ids.tolist() == [[1, 2, 3, 5, 6, 0], [0, 0, 4, 7, 8, 9]]
    assert padded.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert padded.position_ids.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]
    assert padded.completion_mask.tolist() == [[True, True, False], [True, True, True]]
    assert padded.engine_logprobs[0].tolist() == pytest.approx([-0.1, -0.2, 0.0])


def _unpadded_logprobs(model_dir: Path, batch: TrainBatch) -> list[list[float]]:
    """Reference: each row alone through transformers, no padding at all."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for prompt, completion in zip(batch.prompt_token_ids, batch.completion_token_ids, strict=True):
            logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]  # (T, V)
            rows.append(torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist())
    return rows


@pytest.mark.parametrize("num_ranks", [1, 2])
def test_learner_logprobs_equal_unpadded_reference(ray_cluster: None, tiny_model_dir: Path, num_ranks: int) -> None:
    batch = _batch(8)
    group = LearnerGroup(LearnerConfig(num_ranks=num_ranks, micro_batches=2), str(tiny_model_dir), "bfloat16", 0)
    got = group.logprobs(batch)
    group.shutdown()
    want = _unpadded_logprobs(tiny_model_dir, batch)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)


def test_sharding_and_micro_batching_give_the_same_update(ray_cluster: None, tiny_model_dir: Path) -> None:
    """L=1 with one micro-batch and L=2 with two micro-batches each: same loss, same new weights."""
    batch = _batch(8, seed=1)
    results = {}
    for num_ranks, micro in ((1, 1), (2, 2)):
        group = LearnerGroup(
            LearnerConfig(num_ranks=num_ranks, micro_batches=micro, lr=1e-3), str(tiny_model_dir), "float32", 0
        )
        metrics = group.train_step(batch)
        results[(num_ranks, micro)] = (metrics, group.logprobs(batch))
        group.shutdown()
    (m1, lp1), (m2, lp2) = results[(1, 1)], results[(2, 2)]
    assert m1["grpo_loss"] == pytest.approx(m2["grpo_loss"], abs=1e-6)
    assert m1["train/grad_norm"] == pytest.approx(m2["train/grad_norm"], rel=1e-4)
    for a, b in zip(lp1, lp2, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_update_raises_logprob_of_positive_advantage(ray_cluster: None, tiny_model_dir: Path) -> None:
    batch = _batch(4, seed=2)
    batch = TrainBatch(
        batch.prompt_token_ids, batch.completion_token_ids, [1.0, -1.0, 1.0, -1.0], batch.engine_logprobs
    )
    group = LearnerGroup(LearnerConfig(num_ranks=2, micro_batches=1, lr=1e-3), str(tiny_model_dir), "bfloat16", 0)
    before = group.logprobs(batch)
    metrics = group.train_step(batch)
    after = group.logprobs(batch)
    assert metrics["train/skipped"] == 0.0
    group.set_nan_hook(2)
    skipped = group.train_step(batch)
    unchanged = group.logprobs(batch)
    group.shutdown()
    for row, advantage in enumerate(batch.advantages):
        change = sum(after[row]) - sum(before[row])
        assert change > 0 if advantage > 0 else change < 0
    assert skipped["train/skipped"] == 1.0 and skipped["train/skipped_steps"] == 1.0
    assert unchanged == after
