"""The chunked head log-probs (learner/logprobs.py) against a float64 loop, with gradcheck and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from learner.logprobs import linear_token_logprobs

F64 = torch.float64


def ref_log_softmax(row: list[float], temperature: float) -> list[float]:
    xs = [x / temperature for x in row]
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _inputs(rows: int, hidden: int, vocab: int, seed: int, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, hidden, generator=g, dtype=F64).to(dtype)
    w = (torch.randn(vocab, hidden, generator=g, dtype=F64) * 2).to(dtype)
    t = torch.randint(vocab, (rows,), generator=g)
    return h, w, t


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_logprobs_and_entropy_match_float64_loop(temperature: float, chunk: int) -> None:
    h, w, t = _inputs(7, 5, 11, seed=0)
    logprobs, entropy = linear_token_logprobs(h, w, t, temperature, chunk)
    logits = (h @ w.t()).tolist()
    for i in range(7):
        logp = ref_log_softmax(logits[i], temperature)
        assert math.isclose(logprobs[i].item(), logp[int(t[i])], rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(entropy[i].item(), -sum(math.exp(v) * v for v in logp), rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradient_matches_autograd_of_the_full_log_softmax(temperature: float) -> None:
    h, w, t = _inputs(6, 4, 9, seed=1)
    h.requires_grad_(True)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: linear_token_logprobs(a, b, t, temperature, 4)[0], (h, w))
    weights = torch.randn(6, dtype=F64)
    (linear_token_logprobs(h, w, t, temperature, 2)[0] * weights).sum().backward()
    got_h, got_w = h.grad.clone(), w.grad.clone()
    h.grad, w.grad = None, None
    full = torch.log_softmax(h @ w.t() / temperature, dim=-1).gather(1, t[:, None])[:, 0]  # the (M, V) way
    (full * weights).sum().backward()
    assert torch.allclose(got_h, h.grad, rtol=1e-12, atol=1e-12)
    assert torch.allclose(got_w, w.grad, rtol=1e-12, atol=1e-12)


def test_bf16_inputs_give_float32_scores_close_to_float64() -> None:
    h, w, t = _inputs(16, 32, 50, seed=2)
    got, _ = linear_token_logprobs(h.to(torch.bfloat16), w.to(torch.bfloat16), t, 0.7, 5)
    want, _ = linear_token_logprobs(h, w, t, 0.7, 5)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max() < 0.5  # bf16 inputs (3 significant digits), float32 softmax


def test_no_rows_still_backpropagates_zeros() -> None:
    """An empty micro-batch (a rank without rows) must still run backward, with exactly zero gradients."""
    h = torch.zeros(0, 4, dtype=F64, requires_grad=True)
    w = torch.randn(9, 4, dtype=F64, requires_grad=True)
    logprobs, entropy = linear_token_logprobs(h, w, torch.zeros(0, dtype=torch.long))
    assert logprobs.shape == (0,) and entropy.shape == (0,)
    logprobs.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


def test_bad_inputs_are_refused() -> None:
    h, w, t = _inputs(3, 4, 5, seed=3)
    with pytest.raises(ValueError, match="temperature"):
        linear_token_logprobs(h, w, t, 0.0)
    with pytest.raises(ValueError, match="targets"):
        linear_token_logprobs(h, w, t[:2])
    with pytest.raises(ValueError, match="dtypes"):
        linear_token_logprobs(h, w.float(), t)
    with pytest.raises(ValueError, match="chunk"):
        linear_token_logprobs(h, w, t, 1.0, 0)
