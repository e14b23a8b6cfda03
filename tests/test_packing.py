"""Packing a step for the learner (learner/batch.py) and scoring it (learner/policy.py), without Ray.

The shared-prompt layout (one row per group, block attention mask) must give the same log-probs and the same
gradient as the plain batch (one row per completion), and both must equal each completion run alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learner.batch import TrainBatch, make_units, pack, plan_micro_batches
from learner.policy import ScoredPolicy
from tests.conftest import alone_logprobs


def _batch() -> TrainBatch:
    """Two groups of three; group 1's rows are not adjacent to each other in the batch."""
    prompts = [[11, 12, 13], [21, 22], [11, 12, 13], [21, 22], [11, 12, 13], [21, 22]]
    completions = [[31, 32], [41], [33, 34, 35], [42, 43, 44, 45], [36], [46, 47]]
    return TrainBatch(
        prompt_token_ids=prompts,
        completion_token_ids=completions,
        advantages=[1.0, -0.5, -1.0, 0.25, 0.5, 2.0],
        engine_logprobs=[[-1.0] * len(c) for c in completions],
        group_ids=[0, 1, 0, 1, 0, 1],
    )


def test_by_row_lays_tokens_out_per_completion_by_hand() -> None:
    batch = _batch()
    packed = pack(make_units(batch, shared_prompt=True), batch, pad_token_id=0)
    assert packed.rows == [0, 2, 4, 1, 3, 5]
    values = torch.arange(1.0, packed.num_tokens + 1).requires_grad_(True)  # (M,) = 1 .. 13
    laid, mask = packed.by_row(values)
    assert laid.tolist() == [
        [1, 2, 0, 0],  # row 0: 2 tokens
        [3, 4, 5, 0],  # row 2: 3 tokens
        [6, 0, 0, 0],  # row 4
        [7, 0, 0, 0],  # row 1
        [8, 9, 10, 11],  # row 3
        [12, 13, 0, 0],  # row 5
    ]
    assert mask.tolist() == [[v != 0 for v in row] for row in laid.tolist()]
    (laid * 2).sum().backward()
    assert values.grad is not None and values.grad.tolist() == [2.0] * packed.num_tokens
    empty = pack([], batch, pad_token_id=0)
    laid, mask = empty.by_row(torch.zeros(0))
    assert laid.shape == mask.shape == (0, 1)


def test_shared_prompt_layout_by_hand() -> None:
    batch = _batch()
    units = make_units(batch, shared_prompt=True)
    assert [(u.prompt, u.rows) for u in units] == [([11, 12, 13], [0, 2, 4]), ([21, 22], [1, 3, 5])]
    packed = pack(units[:1], batch, pad_token_id=0)
    assert packed.input_ids.tolist() == [[11, 12, 13, 31, 32, 33, 34, 35, 36]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 3]]
    # Completion 0's first token is predicted by the prompt's last position (2), its second by its first (3).
    assert packed.score_index.tolist() == [2, 3, 2, 5, 6, 2]
    assert packed.targets.tolist() == [31, 32, 33, 34, 35, 36]
    assert packed.token_row.tolist() == [0, 0, 1, 1, 1, 2] and packed.rows == [0, 2, 4]
    assert packed.advantages.tolist() == [1.0, 1.0, -1.0, -1.0, -1.0, 0.5]
    mask = packed.attention_mask[0, 0].int().tolist()
    assert mask[5] == [1, 1, 1, 0, 0, 1, 0, 0, 0]  # completion 1's first token: the prompt and itself
    assert mask[7] == [1, 1, 1, 0, 0, 1, 1, 1, 0]
    assert mask[8] == [1, 1, 1, 0, 0, 0, 0, 0, 1]


def test_plain_layout_and_token_budget() -> None:
    batch = _batch()
    units = make_units(batch, shared_prompt=False)
    assert [u.rows for u in units] == [[0], [1], [2], [3], [4], [5]]
    lengths = [u.length(batch) for u in units]  # 5 3 6 6 4 4
    plan = plan_micro_batches(units, batch, max_tokens=12)
    assert [[u.rows[0] for u in mb] for mb in plan] == [[2, 3], [0, 4], [5, 1]]
    assert all(len(mb) * max(lengths[u.rows[0]] for u in mb) <= 12 for mb in plan)
    assert [len(mb) for mb in plan_micro_batches(units, batch, max_tokens=1)] == [1] * 6  # too long: alone
    with pytest.raises(ValueError, match="share one prompt"):
        make_units(TrainBatch([[1], [2]], [[3], [4]], [1.0, -1.0], [[0.0], [0.0]], [0, 0]), shared_prompt=True)


def test_empty_micro_batch_scores_nothing() -> None:
    packed = pack([], _batch(), pad_token_id=7)
    assert packed.input_ids.tolist() == [[7]] and packed.num_tokens == 0 and packed.rows == []


def _scores_and_grads(
    policy: ScoredPolicy, batch: TrainBatch, shared: bool, budget: int
) -> tuple[list[list[float]], dict[str, torch.Tensor]]:
    policy.zero_grad()
    rows: list[list[float]] = [[] for _ in range(len(batch))]
    for units in plan_micro_batches(make_units(batch, shared), batch, budget):
        mb = pack(units, batch, pad_token_id=0)
        logprobs, _ = policy.score(mb)  # (M,)
        (logprobs * mb.advantages).sum().backward()  # a loss with every token's gradient in it
        for local, row in enumerate(mb.rows):
            rows[row] = logprobs[mb.token_row == local].tolist()
    return rows, {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompt_equals_plain_batch_and_each_row_alone(tiny_model_dir: Path, temperature: float) -> None:
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    policy = ScoredPolicy(lm, temperature, chunk_tokens=4)
    g = torch.Generator().manual_seed(0)
    base = _batch()
    # Realistic token ids in the tiny model's vocab, same structure as _batch().
    prompts = {0: torch.randint(5, 2000, (9,), generator=g).tolist(), 1: torch.randint(5, 2000, (4,), generator=g)}
    batch = TrainBatch(
        prompt_token_ids=[list(map(int, prompts[gid])) for gid in base.group_ids],
        completion_token_ids=[
            torch.randint(5, 2000, (len(c),), generator=g).tolist() for c in base.completion_token_ids
        ],
        advantages=base.advantages,
        engine_logprobs=base.engine_logprobs,
        group_ids=base.group_ids,
    )
    want = alone_logprobs(lm, batch, temperature)
    shared, shared_grads = _scores_and_grads(policy, batch, shared=True, budget=64)
    plain, plain_grads = _scores_and_grads(policy, batch, shared=False, budget=20)
    for s, p, w in zip(shared, plain, want, strict=True):
        assert s == pytest.approx(w, abs=2e-5)
        assert p == pytest.approx(w, abs=2e-5)
    assert shared_grads.keys() == plain_grads.keys() and shared_grads
    for name, grad in shared_grads.items():
        # fp32 sums in another order: equal to ~1e-6 of the tensor's largest entry (measured 2e-6 on the embedding)
        assert (grad - plain_grads[name]).abs().max() <= 1e-5 * grad.abs().max(), name
