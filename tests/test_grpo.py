"""Tests for learner/grpo.py against slow, float64, pure-Python loop references written here."""

from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import clipped_policy_loss, group_advantages, kl_k3

F64 = torch.float64


# ---------------------------------------------------------------- loop references (plain Python floats)


def ref_advantages(rewards: list[float], k: int, eps: float = 1e-6) -> list[float]:
    out: list[float] = []
    for g in range(0, len(rewards), k):
        grp = rewards[g : g + k]
        if all(x == grp[0] for x in grp):
            out += [0.0] * k
            continue
        mean = sum(grp) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (k - 1))
        out += [(x - mean) / (std + eps) for x in grp]
    return out


def ref_loss(lp, old, adv, mask, clip_eps=0.2, num_tokens=None) -> tuple[float, dict[str, float]]:
    total = clipped = ratio_sum = kl_sum = 0.0
    count = 0
    for i in range(len(lp)):
        for t in range(len(lp[i])):
            if not mask[i][t]:
                continue
            rho = math.exp(lp[i][t] - old[i][t])
            a = adv[i]
            rho_c = min(max(rho, 1 - clip_eps), 1 + clip_eps)
            total += -min(rho * a, rho_c * a)
            clipped += float((a > 0 and rho > 1 + clip_eps) or (a < 0 and rho < 1 - clip_eps))
            ratio_sum += rho
            kl_sum += rho - 1 - math.log(rho)
            count += 1
    denom = num_tokens if num_tokens is not None else max(count, 1)
    n = max(count, 1)
    return total / denom, {"clip_frac": clipped / n, "ratio_mean": ratio_sum / n, "approx_kl": kl_sum / n}


def ref_kl(lp, ref, mask, num_tokens=None) -> float:
    total, count = 0.0, 0
    for i in range(len(lp)):
        for t in range(len(lp[i])):
            if mask[i][t]:
                r = math.exp(ref[i][t] - lp[i][t])
                total += r - 1 - math.log(r)
                count += 1
    return total / (num_tokens if num_tokens is not None else max(count, 1))


def random_batch(n: int = 6, t: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    lp = old + (torch.rand(n, t, generator=g, dtype=F64) - 0.5) * 0.8  # ratios in ~[0.67, 1.5]
    adv = torch.randn(n, generator=g, dtype=F64)
    mask = torch.rand(n, t, generator=g) > 0.3
    mask[0, 0] = True
    return lp, old, adv, mask


# ---------------------------------------------------------------- group_advantages


def test_advantages_match_loop_reference() -> None:
    g = torch.Generator().manual_seed(1)
    for k in (2, 3, 4, 8):
        rewards = torch.rand(5 * k, generator=g, dtype=F64) * 2 - 1
        rewards[:k] = 1.0  # one constant group
        got = group_advantages(rewards, k)
        want = torch.tensor(ref_advantages(rewards.tolist(), k), dtype=F64)
        assert got.shape == rewards.shape and got.dtype == F64
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_advantages_binary_rewards_and_dtype() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float32)
    got = group_advantages(rewards, 4)
    assert got.dtype == torch.float32
    want = torch.tensor(ref_advantages(rewards.tolist(), 4), dtype=torch.float32)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_constant_group_gives_exact_zeros(dtype: torch.dtype) -> None:
    naive = torch.tensor([0.1] * 3, dtype=F64)
    assert (naive - naive.mean()).abs().max() > 0  # the case where plain mean subtraction is inexact
    rewards = torch.tensor([0.1] * 3 + [0.7] * 3 + [0.0, 1.0, 0.5] + [0.0] * 3, dtype=dtype)
    got = group_advantages(rewards, 3)
    assert torch.isfinite(got).all()
    assert torch.equal(got[:6], torch.zeros(6, dtype=dtype))
    assert torch.equal(got[9:], torch.zeros(3, dtype=dtype))
    assert (got[6:9] != 0).any()


@pytest.mark.parametrize(
    ("rewards", "k"),
    [(torch.zeros(2, 4), 2), (torch.zeros(7), 2), (torch.zeros(4), 1), (torch.zeros(4, dtype=torch.long), 2)],
)
def test_advantages_errors(rewards: torch.Tensor, k: int) -> None:
    with pytest.raises(ValueError):
        group_advantages(rewards, k)


# ---------------------------------------------------------------- clipped_policy_loss


@pytest.mark.parametrize("num_tokens", [None, 37])
@pytest.mark.parametrize("float_mask", [False, True])
def test_loss_matches_loop_reference(num_tokens: int | None, float_mask: bool) -> None:
    lp, old, adv, mask = random_batch()
    m = mask.to(F64) if float_mask else mask
    loss, metrics = clipped_policy_loss(lp, old, adv, m, clip_eps=0.2, num_tokens=num_tokens)
    want, want_metrics = ref_loss(lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), 0.2, num_tokens)
    assert math.isclose(loss.item(), want, rel_tol=1e-12, abs_tol=1e-12)
    assert metrics["clip_frac"].item() > 0  # the random ratios reach past 1 +/- 0.2
    for name, value in want_metrics.items():
        assert not metrics[name].requires_grad
        assert math.isclose(metrics[name].item(), value, rel_tol=1e-12, abs_tol=1e-12), name


def test_loss_gradcheck_away_from_clip_boundaries() -> None:
    g = torch.Generator().manual_seed(2)
    # log-ratios well inside (|.| <= 0.1) or well outside ([-0.5, 0.5]) of [log 0.8, log 1.2] = [-0.22, 0.18]
    choices = torch.tensor([-0.5, -0.35, -0.1, -0.03, 0.0, 0.04, 0.1, 0.35, 0.5], dtype=F64)
    old = -torch.rand(4, 6, generator=g, dtype=F64) * 2
    log_ratio = choices[torch.randint(len(choices), (4, 6), generator=g)]
    lp = (old + log_ratio).requires_grad_(True)
    adv = torch.tensor([1.3, -0.7, 0.4, -2.0], dtype=F64)
    mask = torch.rand(4, 6, generator=g) > 0.25
    assert torch.autograd.gradcheck(lambda x: clipped_policy_loss(x, old, adv, mask)[0], (lp,))
    assert torch.autograd.gradcheck(lambda x: clipped_policy_loss(x, old, adv, mask, num_tokens=50)[0], (lp,))


def test_sgd_step_follows_advantage_sign() -> None:
    old = torch.full((2, 3), -1.0, dtype=F64)
    lp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss, _ = clipped_policy_loss(lp, old, adv, mask)
    loss.backward()
    assert lp.grad is not None
    new = lp.detach() - 0.1 * lp.grad
    assert (new[0, :2] > old[0, :2]).all()  # A > 0: more likely
    assert (new[1, :2] < old[1, :2]).all()  # A < 0: less likely
    assert torch.equal(lp.grad[:, 2], torch.zeros(2, dtype=F64))  # masked: untouched


def test_shards_and_micro_batches_add_up_to_full_step() -> None:
    lp, old, adv, mask = random_batch(n=8, t=6, seed=3)
    mask[:2] = True  # make shards hold unequal token counts so per-shard means would not add up
    mask[6:] = False
    mask[7, 0] = True
    total = int(mask.sum())
    full_lp = lp.clone().requires_grad_(True)
    full, _ = clipped_policy_loss(full_lp, old, adv, mask)
    full.backward()

    # Two data-parallel shards (split rows), each given the global token count.
    shard_sum = sum(
        clipped_policy_loss(lp[s], old[s], adv[s], mask[s], num_tokens=total)[0] for s in (slice(0, 2), slice(2, 8))
    )
    assert torch.allclose(shard_sum, full, rtol=1e-12, atol=1e-12)
    assert int(mask[:2].sum()) != int(mask[2:].sum())
    naive = sum(clipped_policy_loss(lp[s], old[s], adv[s], mask[s])[0] for s in (slice(0, 2), slice(2, 8)))
    assert not torch.allclose(naive / 2, full)  # averaging per-shard means is biased

    # Two micro-batches with gradient accumulation, global count as a tensor.
    acc_lp = lp.clone().requires_grad_(True)
    for s in (slice(0, 5), slice(5, 8)):
        loss, _ = clipped_policy_loss(acc_lp[s], old[s], adv[s], mask[s], num_tokens=torch.tensor(total))
        loss.backward()
    assert acc_lp.grad is not None and full_lp.grad is not None
    assert torch.allclose(acc_lp.grad, full_lp.grad, rtol=1e-12, atol=1e-12)


def test_masked_garbage_stays_finite() -> None:
    lp, old, adv, mask = random_batch(n=3, t=4, seed=4)
    mask[1] = False  # a fully masked row full of garbage
    lp[1] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300], dtype=F64)
    old[1, 0] = float("nan")
    lp[0, ~mask[0]] = float("nan")
    x = lp.clone().requires_grad_(True)
    loss, metrics = clipped_policy_loss(x, old, adv, mask)
    loss.backward()
    assert x.grad is not None
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(x.grad).all()
    assert torch.equal(x.grad[~mask], torch.zeros(int((~mask).sum()), dtype=F64))
    clean = lp.clone()
    clean[~mask] = -1.0
    clean_old = old.clone()
    clean_old[~mask] = -1.0
    assert torch.equal(loss, clipped_policy_loss(clean, clean_old, adv, mask)[0])


@pytest.mark.parametrize("num_tokens", [None, 5, torch.tensor(5.0)])
def test_fully_masked_batch_is_zero(num_tokens) -> None:
    lp = torch.full((2, 3), float("nan"), dtype=F64, requires_grad=True)
    old = torch.full((2, 3), float("inf"), dtype=F64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, metrics = clipped_policy_loss(lp, old, torch.ones(2, dtype=F64), mask, num_tokens=num_tokens)
    kl = kl_k3(lp, old, mask, num_tokens=num_tokens)
    (loss + kl).backward()
    assert lp.grad is not None
    assert loss.item() == 0.0 and kl.item() == 0.0
    assert torch.equal(lp.grad, torch.zeros(2, 3, dtype=F64))
    assert all(v.item() == 0.0 for v in metrics.values())


def test_clip_frac_hand_worked() -> None:
    # Row 0 has A = +1, row 1 has A = -1; tokens have ratios 1.5, 0.5, 1.1 and a masked 1.5.
    ratios = torch.tensor([[1.5, 0.5, 1.1, 1.5], [1.5, 0.5, 1.1, 1.5]], dtype=F64)
    old = torch.full((2, 4), -2.0, dtype=F64)
    lp = old + ratios.log()
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    loss, metrics = clipped_policy_loss(lp, old, torch.tensor([1.0, -1.0], dtype=F64), mask, clip_eps=0.2)
    # Clipped: (1.5, A>0) and (0.5, A<0). Not clipped: (1.5, A<0), (0.5, A>0), 1.1 either way.
    assert metrics["clip_frac"].item() == pytest.approx(2 / 6, abs=1e-15)
    # Row 0: -(1.2 + 0.5 + 1.1) = -2.8; row 1: 1.5 + 0.8 + 1.1 = 3.4; mean over 6 tokens.
    assert loss.item() == pytest.approx(0.6 / 6, abs=1e-12)
    assert metrics["ratio_mean"].item() == pytest.approx(3.1 / 3, abs=1e-12)


@pytest.mark.parametrize(
    ("shape_lp", "shape_old", "shape_adv", "shape_mask", "kwargs"),
    [
        ((2, 3), (2, 3), (2,), (2, 3), {"clip_eps": 0.0}),
        ((2, 3), (2, 4), (2,), (2, 3), {}),
        ((2, 3), (2, 3), (3,), (2, 3), {}),
        ((2, 3), (2, 3), (2, 1), (2, 3), {}),
        ((2, 3), (2, 3), (2,), (3, 2), {}),
        ((6,), (6,), (2,), (6,), {}),
        ((2, 3), (2, 3), (2,), (2, 3), {"num_tokens": 0}),
    ],
)
def test_loss_errors(shape_lp, shape_old, shape_adv, shape_mask, kwargs) -> None:
    with pytest.raises(ValueError):
        lp, old, adv = torch.zeros(shape_lp), torch.zeros(shape_old), torch.zeros(shape_adv)
        clipped_policy_loss(lp, old, adv, torch.ones(shape_mask), **kwargs)


# ---------------------------------------------------------------- kl_k3


def test_kl_k3() -> None:
    lp, ref, _, mask = random_batch(seed=5)
    assert kl_k3(lp, lp.clone(), mask).item() == 0.0
    got = kl_k3(lp, ref, mask)
    assert got.item() > 0
    assert math.isclose(got.item(), ref_kl(lp.tolist(), ref.tolist(), mask.tolist()), rel_tol=1e-12)
    got = kl_k3(lp, ref, mask, num_tokens=40)
    assert math.isclose(got.item(), ref_kl(lp.tolist(), ref.tolist(), mask.tolist(), 40), rel_tol=1e-12)
    x = lp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: kl_k3(v, ref, mask), (x,))
    with pytest.raises(ValueError):
        kl_k3(lp, ref[:, :2], mask)
