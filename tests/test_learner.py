"""The FSDP2 learner group on real gloo inside real Ray actors, with the tiny Llama."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cluster.config import LearnerConfig
from learner.batch import TrainBatch
from learner.group import LearnerGroup, split_by_group
from learner.grpo import group_advantages
from tests.conftest import alone_logprobs

N = 4  # completions per group


def _batch(groups: int, seed: int = 0, rewards: list[float] | None = None) -> TrainBatch:
    """`groups` GRPO groups of N rows with random prompts/completions; advantages from `rewards` (or random)."""
    gen = torch.Generator().manual_seed(seed)
    prompts, completions, group_ids = [], [], []
    for group in range(groups):
        prompt = torch.randint(5, 1000, (int(torch.randint(3, 9, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(N):
            prompts.append(prompt)
            length = int(torch.randint(1, 12, (1,), generator=gen))
            completions.append(torch.randint(5, 1000, (length,), generator=gen).tolist())
            group_ids.append(group)
    if rewards is None:
        rewards = torch.rand(groups * N, generator=gen).tolist()
    advantages = group_advantages(torch.tensor(rewards, dtype=torch.float64), N).tolist()
    return TrainBatch(prompts, completions, advantages, [[-1.0] * len(c) for c in completions], group_ids)


def test_split_by_group_keeps_groups_whole_and_balances_tokens() -> None:
    batch = _batch(5, seed=3)
    shards = split_by_group(batch, list(range(len(batch))), 2)
    assert sorted(r for s in shards for r in s) == list(range(len(batch)))
    for shard in shards:
        assert {batch.group_ids[r] for r in shard}.isdisjoint(
            {batch.group_ids[r] for s in shards if s is not shard for r in s}
        )
    assert split_by_group(batch, [], 3) == [[], [], []]


@pytest.mark.parametrize(("num_ranks", "temperature"), [(1, 0.7), (2, 1.0), (2, 0.7)])
def test_learner_logprobs_equal_unpadded_reference(
    ray_cluster: None, tiny_model_dir: Path, num_ranks: int, temperature: float
) -> None:
    batch = _batch(3)
    cfg = LearnerConfig(num_ranks=num_ranks, max_tokens_per_micro_batch=40, param_dtype="float32")
    group = LearnerGroup(cfg, str(tiny_model_dir), temperature, "bfloat16", 0)
    got = group.logprobs(batch)
    group.shutdown()
    from transformers import AutoModelForCausalLM

    want = alone_logprobs(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), batch, temperature)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, abs=1e-4)


def _one_step(model_dir: Path, batch: TrainBatch, **cfg: object) -> tuple[dict, list, list]:
    group = LearnerGroup(LearnerConfig(lr=1e-3, param_dtype="float32", **cfg), str(model_dir), 0.7, "float32", 0)
    metrics, learner_logprobs = group.train_step(batch)
    after = group.logprobs(batch)
    group.shutdown()
    return metrics, learner_logprobs, after


def test_shared_prompt_skip_and_splits_give_the_same_update(ray_cluster: None, tiny_model_dir: Path) -> None:
    """The same fp32 update whether prompts are shared or not, zero-advantage rows skipped or not, on 1 or 2 ranks
    with one or several micro-batches, with or without activation checkpointing. Group 1 has zero spread and group 2
    two rows exactly at its mean."""
    rewards = [0.1, 0.9, 0.5, 0.3] + [1.0] * N + [0.0, 1.0, 0.5, 0.5] + [0.2, 0.7, 0.7, 0.4]
    batch = _batch(4, seed=1, rewards=rewards)
    assert sum(a == 0.0 for a in batch.advantages) == N + 2
    runs = {
        "L1 shared skip": _one_step(tiny_model_dir, batch),
        "L1 plain no-skip": _one_step(
            tiny_model_dir, batch, shared_prompt=False, skip_zero_advantage=False, max_tokens_per_micro_batch=30
        ),
        "L2 shared skip small": _one_step(tiny_model_dir, batch, num_ranks=2, max_tokens_per_micro_batch=20),
        "L2 plain skip": _one_step(tiny_model_dir, batch, num_ranks=2, shared_prompt=False),
        "L1 shared skip checkpointed": _one_step(tiny_model_dir, batch, activation_checkpointing=True),
    }
    base_metrics, base_logprobs, base_after = runs["L1 shared skip"]
    assert base_metrics["train/rows_trained"] == len(batch) - N - 2
    assert runs["L1 plain no-skip"][0]["train/rows_trained"] == len(batch)
    for name, (metrics, learner_logprobs, after) in runs.items():
        assert metrics["train/updates"] == 1.0, name
        assert metrics["grpo_loss"] == pytest.approx(base_metrics["grpo_loss"], abs=1e-6), name
        assert metrics["train/grad_norm"] == pytest.approx(base_metrics["train/grad_norm"], rel=1e-4), name
        for a, b in zip(after, base_after, strict=True):
            assert a == pytest.approx(b, abs=1e-4), name
        for row, (value, base) in enumerate(zip(learner_logprobs, base_logprobs, strict=True)):
            if batch.advantages[row] == 0.0 and "no-skip" not in name:
                assert value is None, name  # not forwarded
            elif base is not None:
                assert value == pytest.approx(base, abs=1e-4), name


def test_all_zero_advantage_step_takes_no_optimizer_step(ray_cluster: None, tiny_model_dir: Path) -> None:
    batch = _batch(2, rewards=[0.5] * N + [2.0] * N)
    group = LearnerGroup(LearnerConfig(lr=1e-2, param_dtype="float32"), str(tiny_model_dir), 1.0, "float32", 0)
    before = group.logprobs(batch)
    metrics, learner_logprobs = group.train_step(batch)
    after = group.logprobs(batch)
    group.shutdown()
    assert metrics["train/updates"] == 0.0 and metrics["train/rows_trained"] == 0.0
    assert learner_logprobs == [None] * len(batch)
    assert after == before  # bit-exact: no AdamW step (which would move weights through weight decay or momentum)


def test_two_ppo_epochs_clip_and_both_updates_count(ray_cluster: None, tiny_model_dir: Path) -> None:
    batch = _batch(3, seed=4)
    group = LearnerGroup(
        LearnerConfig(lr=5e-2, ppo_epochs=2, clip_eps=0.05, param_dtype="float32"),
        str(tiny_model_dir),
        1.0,
        "float32",
        0,
    )
    before = group.logprobs(batch)
    metrics, _ = group.train_step(batch)
    after = group.logprobs(batch)
    group.shutdown()
    assert metrics["train/updates"] == 2.0
    assert metrics["train/clip_frac"] > 0  # the second epoch's ratio left [1 - eps, 1 + eps] for some tokens
    assert after != before


def test_update_raises_logprob_of_positive_advantage(ray_cluster: None, tiny_model_dir: Path) -> None:
    batch = _batch(2, seed=2, rewards=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    group = LearnerGroup(
        LearnerConfig(num_ranks=2, lr=1e-3, param_dtype="bfloat16"), str(tiny_model_dir), 1.0, "bfloat16", 0
    )
    before = group.logprobs(batch)
    metrics, _ = group.train_step(batch)
    after = group.logprobs(batch)
    assert metrics["train/skipped"] == 0.0 and metrics["train/updates"] == 1.0
    group.set_nan_hook(2)
    skipped, _ = group.train_step(batch)
    unchanged = group.logprobs(batch)
    group.shutdown()
    for row, advantage in enumerate(batch.advantages):
        change = sum(after[row]) - sum(before[row])
        assert change > 0 if advantage > 0 else change < 0
    assert skipped["train/skipped"] == 1.0 and skipped["train/skipped_steps"] == 1.0
    assert skipped["train/updates"] == 0.0
    assert unchanged == after


@pytest.mark.parametrize(("estimator", "param_dtype"), [("k3", "bfloat16"), ("k2", "float32")])
def test_kl_to_reference_is_exactly_zero_at_the_start_then_positive(
    ray_cluster: None, tiny_model_dir: Path, estimator: str, param_dtype: str
) -> None:
    """Policy = reference at step 1: with every advantage 0 (constant groups) the only term is the KL, whose value
    and gradient are exactly 0 there, so nothing moves; every row is still trained (no zero-advantage skip). After
    an update with signal the KL to the reference is positive."""
    cfg = LearnerConfig(lr=1e-2, kl_coef=0.5, kl_estimator=estimator, param_dtype=param_dtype, num_ranks=2)
    group = LearnerGroup(cfg, str(tiny_model_dir), 1.0, "float32", 0)
    flat = _batch(2, rewards=[0.5] * N + [2.0] * N)
    metrics, learner_logprobs = group.train_step(flat)
    assert metrics["train/rows_trained"] == len(flat) and None not in learner_logprobs
    assert metrics["train/ref_kl"] == 0.0 and metrics["train/grad_norm"] == 0.0 and metrics["grpo_loss"] == 0.0
    signal = _batch(2, seed=2, rewards=[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    first, _ = group.train_step(signal)
    second, _ = group.train_step(signal)
    group.shutdown()
    assert first["train/ref_kl"] == 0.0 and first["train/grad_norm"] > 0  # this step starts at the reference too
    assert second["train/ref_kl"] > 0 and math.isfinite(second["train/is_weight_mean"])


@pytest.mark.parametrize(
    "variant",
    [
        {"loss_agg": "seq_mean_token_mean", "ratio_level": "sequence"},
        {"loss_agg": "seq_mean_token_sum", "loss_agg_norm": 16, "clip_eps_high": 0.28},
    ],
)
def test_sequence_level_variants_are_split_invariant(ray_cluster: None, tiny_model_dir: Path, variant: dict) -> None:
    """Per-sequence aggregation and the GSPO ratio group tokens by completion inside each micro-batch: the update is
    the same on 1 rank with one micro-batch as on 2 ranks with several, zero-advantage rows skipped or not."""
    batch = _batch(4, seed=1, rewards=[0.1, 0.9, 0.5, 0.3] + [1.0] * N + [0.0, 1.0, 0.5, 0.5] + [0.2, 0.7, 0.7, 0.4])
    whole = _one_step(tiny_model_dir, batch, skip_zero_advantage=False, **variant)
    split = _one_step(tiny_model_dir, batch, num_ranks=2, max_tokens_per_micro_batch=20, **variant)
    assert whole[0]["train/rows_trained"] == len(batch) > split[0]["train/rows_trained"]
    assert split[0]["grpo_loss"] == pytest.approx(whole[0]["grpo_loss"], abs=1e-6)
    assert split[0]["train/grad_norm"] == pytest.approx(whole[0]["train/grad_norm"], rel=1e-4)
    for a, b in zip(split[2], whole[2], strict=True):
        assert a == pytest.approx(b, abs=1e-4)
