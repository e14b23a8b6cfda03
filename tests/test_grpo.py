"""Tests for learner/grpo.py against slow, float64, pure-Python loop references written here."""

from __future__ import annotations

import math

import pytest
import torch

from learner.grpo import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate_loss,
    clipped_policy_loss,
    group_advantages,
    kl_penalty,
    log_ratio,
    loss_denominator,
    truncated_is_weights,
)

F64 = torch.float64
NORM = 7.0  # the token_sum_norm (Dr. GRPO's constant) used throughout


# ---------------------------------------------------------------- loop references (plain Python floats)


def ref_advantages(rewards: list[float], k: int, eps: float = 1e-6, scale_by_std: bool = True) -> list[float]:
    out: list[float] = []
    for g in range(0, len(rewards), k):
        grp = rewards[g : g + k]
        if all(x == grp[0] for x in grp):
            out += [0.0] * k
            continue
        mean = sum(grp) / k
        std = math.sqrt(sum((x - mean) ** 2 for x in grp) / (k - 1))
        out += [(x - mean) / (std + eps) if scale_by_std else x - mean for x in grp]
    return out


def ref_per_token(lp, old, adv, mask, lo=0.2, hi=None, level="token", w=None) -> tuple[list[list[float]], dict]:
    """Per-token clipped terms (0 where masked) and the metrics, one token at a time."""
    hi = lo if hi is None else hi
    out, clipped, ratio_sum, kl_sum, count = [], 0.0, 0.0, 0.0, 0
    for i in range(len(lp)):
        live = [t for t in range(len(lp[i])) if mask[i][t]]
        seq_log = sum(lp[i][t] - old[i][t] for t in live) / max(len(live), 1)
        row = [0.0] * len(lp[i])
        for t in live:
            token_log = lp[i][t] - old[i][t]
            rho = math.exp(token_log if level == "token" else seq_log)
            a = adv[i]
            rho_c = min(max(rho, 1 - lo), 1 + hi)
            row[t] = -(1.0 if w is None else w[i][t]) * min(rho * a, rho_c * a)
            clipped += float((a > 0 and rho > 1 + hi) or (a < 0 and rho < 1 - lo))
            ratio_sum += rho
            kl_sum += math.exp(token_log) - 1 - token_log
            count += 1
        out.append(row)
    n = max(count, 1)
    return out, {"clip_frac": clipped / n, "ratio_mean": ratio_sum / n, "policy_kl": kl_sum / n}


def ref_aggregate(per_token, mask, mode: str, denominator: float) -> float:
    total = 0.0
    for i in range(len(per_token)):
        live = [per_token[i][t] for t in range(len(per_token[i])) if mask[i][t]]
        row = sum(live)
        total += row / max(len(live), 1) if mode == "seq_mean_token_mean" else row
    return total / denominator


def ref_kl(lp, ref, mask, estimator: str) -> list[list[float]]:
    out = []
    for i in range(len(lp)):
        row = []
        for t in range(len(lp[i])):
            d = lp[i][t] - ref[i][t] if mask[i][t] else 0.0
            row.append({"k1": d, "k2": d * d / 2, "k3": math.exp(-d) - 1 + d}[estimator])
        out.append(row)
    return out


def ref_denominator(mode: str, mask) -> float:
    tokens = sum(sum(1 for x in row if x) for row in mask)
    return {"token_mean": tokens, "seq_mean_token_sum": len(mask) * NORM, "seq_mean_token_mean": len(mask)}[mode]


def random_batch(n: int = 6, t: int = 5, seed: int = 0):
    """Random log-probs with ratios in ~[0.67, 1.5]; row 1 has constant (zero) advantage, row 2 is fully masked."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=F64) * 3
    lp = old + (torch.rand(n, t, generator=g, dtype=F64) - 0.5) * 0.8
    adv = torch.randn(n, generator=g, dtype=F64)
    adv[1] = 0.0
    mask = torch.rand(n, t, generator=g) > 0.3
    mask[0, 0] = True
    mask[2] = False
    return lp, old, adv, mask


def local_denominator(mode: str, mask: torch.Tensor) -> float:
    return loss_denominator(mode, max(1, int(mask.sum())), mask.shape[0], NORM)


# ---------------------------------------------------------------- group_advantages


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_advantages_match_loop_reference(scale_by_std: bool) -> None:
    g = torch.Generator().manual_seed(1)
    for k in (2, 3, 4, 8):
        rewards = torch.rand(5 * k, generator=g, dtype=F64) * 2 - 1
        rewards[:k] = 1.0  # one constant group
        got = group_advantages(rewards, k, scale_by_std=scale_by_std)
        want = torch.tensor(ref_advantages(rewards.tolist(), k, scale_by_std=scale_by_std), dtype=F64)
        assert got.shape == rewards.shape and got.dtype == F64
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_advantages_binary_rewards_and_dtype() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float32)
    got = group_advantages(rewards, 4)
    assert got.dtype == torch.float32
    want = torch.tensor(ref_advantages(rewards.tolist(), 4), dtype=torch.float32)
    assert torch.allclose(got, want, atol=1e-6)
    # Dr. GRPO by hand: group 1 has mean 0.25, group 2 mean 0.5; no std division.
    assert group_advantages(rewards, 4, scale_by_std=False).tolist() == [
        0.75,
        -0.25,
        -0.25,
        -0.25,
        0.5,
        0.5,
        -0.5,
        -0.5,
    ]


@pytest.mark.parametrize("scale_by_std", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_constant_group_gives_exact_zeros(dtype: torch.dtype, scale_by_std: bool) -> None:
    naive = torch.tensor([0.1] * 3, dtype=F64)
    assert (naive - naive.mean()).abs().max() > 0  # the case where plain mean subtraction is inexact
    rewards = torch.tensor([0.1] * 3 + [0.7] * 3 + [0.0, 1.0, 0.5] + [0.0] * 3, dtype=dtype)
    got = group_advantages(rewards, 3, scale_by_std=scale_by_std)
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


# ---------------------------------------------------------------- clipped_policy_loss + aggregate_loss


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("lo", "hi"), [(0.2, None), (0.1, 0.28)])
@pytest.mark.parametrize("weighted", [False, True])
def test_loss_matches_loop_reference(mode: str, level: str, lo: float, hi: float | None, weighted: bool) -> None:
    lp, old, adv, mask = random_batch()
    w = torch.rand(lp.shape, generator=torch.Generator().manual_seed(9), dtype=F64) * 2 if weighted else None
    per_token, metrics = clipped_policy_loss(lp, old, adv, mask, lo, hi, level, w)
    want_tokens, want_metrics = ref_per_token(
        lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), lo, hi, level, None if w is None else w.tolist()
    )
    assert torch.allclose(per_token, torch.tensor(want_tokens, dtype=F64), rtol=1e-12, atol=1e-12)
    for name, value in want_metrics.items():
        assert not metrics[name].requires_grad
        assert math.isclose(metrics[name].item(), value, rel_tol=1e-12, abs_tol=1e-12), name
    for denominator in (ref_denominator(mode, mask.tolist()), 37.0):
        loss = aggregate_loss(per_token, mask.to(F64), mode, denominator)  # a float mask works too
        want = ref_aggregate(want_tokens, mask.tolist(), mode, denominator)
        assert math.isclose(loss.item(), want, rel_tol=1e-12, abs_tol=1e-12)


def test_random_batch_reaches_every_branch() -> None:
    lp, old, adv, mask = random_batch()
    _, metrics = clipped_policy_loss(lp, old, adv, mask, 0.1, 0.28)
    assert 0 < metrics["clip_frac"].item() < 1  # some tokens are past the clip range, some are not


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_loss_gradcheck_away_from_clip_boundaries(mode: str, level: str, estimator: str) -> None:
    g = torch.Generator().manual_seed(2)
    # log-ratios well inside (|.| <= 0.04) or well outside ([-0.5, 0.5]) of [log 0.8, log 1.28] = [-0.22, 0.25]
    choices = torch.tensor([-0.5, -0.35, -0.04, -0.01, 0.0, 0.02, 0.04, 0.35, 0.5], dtype=F64)
    old = -torch.rand(5, 6, generator=g, dtype=F64) * 2
    lp = (old + choices[torch.randint(len(choices), (5, 6), generator=g)]).requires_grad_(True)
    ref = old + torch.rand(5, 6, generator=g, dtype=F64) - 0.5
    adv = torch.tensor([1.3, -0.7, 0.0, 0.4, -2.0], dtype=F64)  # row 2: a constant group's zero
    mask = torch.rand(5, 6, generator=g) > 0.25
    mask[4] = False  # a fully masked row
    weights = torch.rand(5, 6, generator=g, dtype=F64) + 0.5
    # GSPO's clip range applies to the sequence ratio, which stays inside [1 - 0.2, 1 + 0.28] for these rows.
    lo, hi = (0.2, 0.28) if level == "token" else (0.4, 0.5)

    def loss(x: torch.Tensor) -> torch.Tensor:
        per_token = clipped_policy_loss(x, old, adv, mask, lo, hi, level, weights)[0]
        per_token = per_token + 0.3 * kl_penalty(x, ref, mask, estimator)
        return aggregate_loss(per_token, mask, mode, local_denominator(mode, mask))

    assert torch.autograd.gradcheck(loss, (lp,))


def test_sgd_step_follows_advantage_sign() -> None:
    old = torch.full((2, 3), -1.0, dtype=F64)
    lp = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    for level in ("token", "sequence"):
        lp.grad = None
        aggregate_loss(clipped_policy_loss(lp, old, adv, mask, ratio_level=level)[0], mask, "token_mean", 4).backward()
        assert lp.grad is not None
        new = lp.detach() - 0.1 * lp.grad
        assert (new[0, :2] > old[0, :2]).all()  # A > 0: more likely
        assert (new[1, :2] < old[1, :2]).all()  # A < 0: less likely
        assert torch.equal(lp.grad[:, 2], torch.zeros(2, dtype=F64))  # masked: untouched


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("level", ["token", "sequence"])
def test_shards_and_micro_batches_add_up_to_full_step(mode: str, level: str) -> None:
    lp, old, adv, mask = random_batch(n=8, t=6, seed=3)
    mask[:2] = True  # make shards hold unequal token counts so per-shard means would not add up
    mask[6:] = False
    mask[7, 0] = True
    ref = old - 0.1
    denominator = local_denominator(mode, mask)

    def step_loss(x: torch.Tensor, rows: slice, denom: float | torch.Tensor) -> torch.Tensor:
        per_token = clipped_policy_loss(x[rows], old[rows], adv[rows], mask[rows], 0.2, 0.28, level)[0]
        per_token = per_token + 0.1 * kl_penalty(x[rows], ref[rows], mask[rows])
        return aggregate_loss(per_token, mask[rows], mode, denom)

    full_lp = lp.clone().requires_grad_(True)
    full = step_loss(full_lp, slice(0, 8), denominator)
    full.backward()

    # Two data-parallel shards (split rows), each given the global normalizer.
    shard_sum = sum(step_loss(lp, s, denominator) for s in (slice(0, 2), slice(2, 8)))
    assert torch.allclose(shard_sum, full, rtol=1e-12, atol=1e-12)
    naive = sum(step_loss(lp, s, local_denominator(mode, mask[s])) for s in (slice(0, 2), slice(2, 8)))
    assert not torch.allclose(naive / 2, full)  # averaging per-shard means is biased

    # Three micro-batches with gradient accumulation, the normalizer as a tensor.
    acc_lp = lp.clone().requires_grad_(True)
    for s in (slice(0, 3), slice(3, 5), slice(5, 8)):
        step_loss(acc_lp, s, torch.tensor(denominator, dtype=F64)).backward()
    assert acc_lp.grad is not None and full_lp.grad is not None
    assert torch.allclose(acc_lp.grad, full_lp.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_masked_garbage_stays_finite(level: str) -> None:
    lp, old, adv, mask = random_batch(n=3, t=4, seed=4)
    mask[1] = False  # a fully masked row full of garbage
    lp[1] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e300], dtype=F64)
    old[1, 0] = float("nan")
    lp[0, ~mask[0]] = float("nan")
    x = lp.clone().requires_grad_(True)
    for mode in LOSS_AGG_MODES:
        x.grad = None
        per_token, metrics = clipped_policy_loss(x, old, adv, mask, ratio_level=level)
        per_token = per_token + kl_penalty(x, old, mask)
        loss = aggregate_loss(per_token, mask, mode, 5.0)
        loss.backward()
        assert x.grad is not None
        assert torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
        assert torch.isfinite(x.grad).all()
        assert torch.equal(x.grad[~mask], torch.zeros(int((~mask).sum()), dtype=F64))
        clean, clean_old = lp.clone(), old.clone()
        clean[~mask], clean_old[~mask] = -1.0, -1.0
        again = clipped_policy_loss(clean, clean_old, adv, mask, ratio_level=level)[0] + kl_penalty(
            clean, clean_old, mask
        )
        assert torch.equal(loss, aggregate_loss(again, mask, mode, 5.0))


def test_fully_masked_batch_is_zero() -> None:
    lp = torch.full((2, 3), float("nan"), dtype=F64, requires_grad=True)
    old = torch.full((2, 3), float("inf"), dtype=F64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    per_token, metrics = clipped_policy_loss(lp, old, torch.ones(2, dtype=F64), mask, ratio_level="sequence")
    per_token = per_token + kl_penalty(lp, old, mask, "k3")
    weights, is_metrics = truncated_is_weights(old, lp.detach(), mask)
    for mode in LOSS_AGG_MODES:
        lp.grad = None
        loss = aggregate_loss(per_token, mask, mode, torch.tensor(5.0, dtype=F64))
        loss.backward(retain_graph=True)
        assert lp.grad is not None
        assert loss.item() == 0.0 and torch.equal(lp.grad, torch.zeros(2, 3, dtype=F64))
    assert all(v.item() == 0.0 for v in metrics.values())
    assert torch.equal(weights, torch.ones(2, 3, dtype=F64)) and all(v.item() == 0.0 for v in is_metrics.values())


def test_clip_frac_hand_worked() -> None:
    # Row 0 has A = +1, row 1 has A = -1; tokens have ratios 1.5, 0.5, 1.1 and a masked 1.5.
    ratios = torch.tensor([[1.5, 0.5, 1.1, 1.5], [1.5, 0.5, 1.1, 1.5]], dtype=F64)
    old = torch.full((2, 4), -2.0, dtype=F64)
    lp = old + ratios.log()
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    per_token, metrics = clipped_policy_loss(lp, old, adv, mask, clip_eps=0.2)
    # Clipped: (1.5, A>0) and (0.5, A<0). Not clipped: (1.5, A<0), (0.5, A>0), 1.1 either way.
    assert metrics["clip_frac"].item() == pytest.approx(2 / 6, abs=1e-15)
    # Row 0: -(1.2 + 0.5 + 1.1) = -2.8; row 1: 1.5 + 0.8 + 1.1 = 3.4; mean over 6 tokens.
    assert aggregate_loss(per_token, mask, "token_mean", 6).item() == pytest.approx(0.6 / 6, abs=1e-12)
    assert metrics["ratio_mean"].item() == pytest.approx(3.1 / 3, abs=1e-12)
    # Per sequence: (-2.8 / 3 + 3.4 / 3) / 2 rows; Dr. GRPO: (-2.8 + 3.4) / (2 rows * 10).
    assert aggregate_loss(per_token, mask, "seq_mean_token_mean", 2).item() == pytest.approx(0.1, abs=1e-12)
    assert aggregate_loss(per_token, mask, "seq_mean_token_sum", 2 * 10).item() == pytest.approx(0.03, abs=1e-12)
    # Clip-higher (DAPO): eps_high = 0.6 lets 1.5 through for A > 0: row 0 is -(1.5 + 0.5 + 1.1) = -3.1.
    per_token, metrics = clipped_policy_loss(lp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.6)
    assert metrics["clip_frac"].item() == pytest.approx(1 / 6, abs=1e-15)
    assert aggregate_loss(per_token, mask, "token_mean", 6).item() == pytest.approx(0.3 / 6, abs=1e-12)


def test_sequence_ratio_is_the_geometric_mean_hand_worked() -> None:
    # Row 0 token ratios 2, 0.5, 4 (geometric mean 2^(2/3)); row 1 one token of ratio 0.9 and a masked one.
    old = torch.full((2, 3), -3.0, dtype=F64)
    lp = old + torch.tensor([[2.0, 0.5, 4.0], [0.9, 7.0, 7.0]], dtype=F64).log()
    mask = torch.tensor([[True, True, True], [True, False, False]])
    seq = log_ratio(lp, old, mask, "sequence").exp()
    assert seq[0].tolist() == pytest.approx([2 ** (2 / 3)] * 3, rel=1e-12)
    assert seq[1].tolist() == pytest.approx([0.9, 1.0, 1.0], rel=1e-12)
    per_token, metrics = clipped_policy_loss(lp, old, torch.tensor([1.0, 1.0], dtype=F64), mask, 3e-4, 4e-4, "sequence")
    assert per_token[0].tolist() == pytest.approx([-(1 + 4e-4)] * 3, rel=1e-12)  # clipped above
    assert per_token[1].tolist() == pytest.approx([-0.9, 0.0, 0.0], rel=1e-12)  # below 1 - eps with A > 0: unclipped
    assert metrics["clip_frac"].item() == pytest.approx(3 / 4, abs=1e-15)


@pytest.mark.parametrize(
    ("shape_lp", "shape_old", "shape_adv", "shape_mask", "kwargs"),
    [
        ((2, 3), (2, 3), (2,), (2, 3), {"clip_eps": 0.0}),
        ((2, 3), (2, 3), (2,), (2, 3), {"clip_eps_high": -0.1}),
        ((2, 3), (2, 3), (2,), (2, 3), {"ratio_level": "seq"}),
        ((2, 3), (2, 3), (2,), (2, 3), {"is_weights": torch.ones(2, 2)}),
        ((2, 3), (2, 4), (2,), (2, 3), {}),
        ((2, 3), (2, 3), (3,), (2, 3), {}),
        ((2, 3), (2, 3), (2, 1), (2, 3), {}),
        ((2, 3), (2, 3), (2,), (3, 2), {}),
        ((6,), (6,), (2,), (6,), {}),
    ],
)
def test_loss_errors(shape_lp, shape_old, shape_adv, shape_mask, kwargs) -> None:
    with pytest.raises(ValueError):
        lp, old, adv = torch.zeros(shape_lp), torch.zeros(shape_old), torch.zeros(shape_adv)
        clipped_policy_loss(lp, old, adv, torch.ones(shape_mask), **kwargs)


def test_aggregation_errors() -> None:
    with pytest.raises(ValueError):
        aggregate_loss(torch.zeros(2, 3), torch.ones(2, 3), "sum", 1.0)
    with pytest.raises(ValueError):
        loss_denominator("token_mean", 0, 2, 1.0)
    with pytest.raises(ValueError):
        loss_denominator("seq_mean", 4, 2, 1.0)
    with pytest.raises(ValueError):
        loss_denominator("seq_mean_token_sum", 4, 2, 0)
    assert loss_denominator("token_mean", 40, 4, 0) == 40.0  # the norm is used by seq_mean_token_sum only
    assert loss_denominator("token_mean", 40, 4, 200) == 40.0
    assert loss_denominator("seq_mean_token_sum", 40, 4, 200) == 800.0
    assert loss_denominator("seq_mean_token_mean", 40, 4, 200) == 4.0


# ---------------------------------------------------------------- kl_penalty


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_estimators_match_loop_reference(estimator: str) -> None:
    lp, ref, _, mask = random_batch(seed=5)
    got = kl_penalty(lp, ref, mask, estimator)
    assert torch.allclose(got, torch.tensor(ref_kl(lp.tolist(), ref.tolist(), mask.tolist(), estimator), dtype=F64))
    if estimator != "k1":
        assert (got >= 0).all() and got[mask].min() > 0
    x = lp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: kl_penalty(v, ref, mask, estimator).sum(), (x,))


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_at_the_reference_is_exactly_zero(estimator: str) -> None:
    lp, _, _, mask = random_batch(seed=6)
    x = lp.clone().requires_grad_(True)
    kl = kl_penalty(x, lp.clone(), mask, estimator)
    kl.sum().backward()
    assert x.grad is not None
    assert torch.equal(kl, torch.zeros_like(kl))
    # k2 and k3 are flat there; k1 = logp - ref has slope 1 on every token (its gradient vanishes only in expectation).
    want_grad = mask.to(F64) if estimator == "k1" else torch.zeros_like(lp)
    assert torch.equal(x.grad, want_grad)


def test_kl_errors() -> None:
    lp, ref, _, mask = random_batch(seed=5)
    with pytest.raises(ValueError):
        kl_penalty(lp, ref[:, :2], mask)
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, mask, "k4")


# ---------------------------------------------------------------- truncated_is_weights


def test_tis_matches_loop_reference() -> None:
    lp, engine, _, mask = random_batch(seed=7)
    engine = engine - 0.2  # push some ratios past the cap
    weights, metrics = truncated_is_weights(lp, engine, mask, cap=1.3)
    want, raw = [], []
    for i in range(lp.shape[0]):
        ratios = [math.exp(lp[i, t] - engine[i, t]) if mask[i, t] else 1.0 for t in range(lp.shape[1])]
        want.append([min(r, 1.3) for r in ratios])
        raw += [r for t, r in enumerate(ratios) if mask[i, t]]
    assert torch.allclose(weights, torch.tensor(want, dtype=F64), rtol=1e-12, atol=0)
    assert not weights.requires_grad
    assert metrics["is_weight_mean"].item() == pytest.approx(sum(min(r, 1.3) for r in raw) / len(raw), rel=1e-12)
    truncated = sum(r > 1.3 for r in raw) / len(raw)
    assert 0 < truncated < 1 and metrics["is_truncated_frac"].item() == pytest.approx(truncated, abs=1e-15)


def test_tis_weights_are_exactly_one_when_engine_equals_learner() -> None:
    lp, _, adv, mask = random_batch(seed=8)
    weights, metrics = truncated_is_weights(lp, lp.clone(), mask)
    assert torch.equal(weights, torch.ones_like(lp))
    assert metrics["is_weight_mean"].item() == 1.0 and metrics["is_truncated_frac"].item() == 0.0
    old = lp + 0.05
    assert torch.equal(
        clipped_policy_loss(lp, old, adv, mask, is_weights=weights)[0], clipped_policy_loss(lp, old, adv, mask)[0]
    )
    with pytest.raises(ValueError):
        truncated_is_weights(lp, lp, mask, cap=0.0)
