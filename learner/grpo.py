"""Pure GRPO math: group advantages, importance ratios, the clipped policy term, KL to a reference, truncated
importance weights and the loss aggregation (token log-probs: logprobs.py).

Only torch is imported here so the maths can be unit-tested on CPU and reused unchanged by the distributed
learner. Shapes: N completions (G prompts x group_size), T completion tokens (rows padded, ``mask`` marks the
real ones). The pieces compose in the learner as

    per_token = clipped_policy_loss(lp, old, A, mask, ..., is_weights=w)[0] + kl_coef * kl_penalty(lp, ref, mask)
    loss = aggregate_loss(per_token, mask, mode, loss_denominator(mode, step_tokens, step_seqs, norm))

Every aggregation is a sum over this call's rows divided by a normalizer of the whole step, known before the
first micro-batch: the losses (and gradients) of every shard and micro-batch add up exactly to the loss of the
whole step, however it was split (a completion is never split across micro-batches).

The variants, by paper: GRPO (DeepSeekMath) = `seq_mean_token_mean` + k3 KL; Dr. GRPO = `seq_mean_token_sum`
without the std division; DAPO = `token_mean` + ``clip_eps_high > clip_eps``; GSPO = ``ratio_level="sequence"``.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOSS_AGG_MODES = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
KL_ESTIMATORS = ("k1", "k2", "k3")
RATIO_LEVELS = ("token", "sequence")


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6, scale_by_std: bool = True) -> Tensor:
    """Return ``(r - mean_g) / (std_g + eps)`` per group of ``group_size`` consecutive completions.

    With ``scale_by_std=False`` (Dr. GRPO) the advantage is just ``r - mean_g``. The std is unbiased (torch
    default). Groups whose rewards are all equal carry no learning signal, so they get exact zeros either way:
    float ``r - mean`` is not exactly 0 for e.g. ``[0.1] * 3``.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(f"rewards must be a floating-point tensor, got dtype {rewards.dtype}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (std needs two samples), got {group_size}")
    n = rewards.shape[0]
    if n % group_size != 0:
        raise ValueError(f"number of rewards {n} is not divisible by group_size {group_size}")
    r = rewards.view(n // group_size, group_size)  # (G, k)
    centered = r - r.mean(dim=1, keepdim=True)  # (G, k)
    adv = centered / (r.std(dim=1, keepdim=True) + eps) if scale_by_std else centered  # (G, k), unbiased std
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)  # (G, 1), exact equality, not std == 0
    return torch.where(constant, torch.zeros_like(r), adv).reshape(n)  # (N,)


def _check_tokens(name: str, x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have shape {tuple(ref.shape)} (N, T), got {tuple(x.shape)}")


def _as_bool_mask(mask: Tensor, logprobs: Tensor) -> Tensor:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be 2-D (N, T), got shape {tuple(logprobs.shape)}")
    _check_tokens("mask", mask, logprobs)
    return mask if mask.dtype == torch.bool else mask != 0  # (N, T) bool


def _masked(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` where ``mask``, exact zeros elsewhere (``torch.where``, so inf/NaN there reach no gradient)."""
    return torch.where(mask, x, torch.zeros_like(x))


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Plain token-mean of ``x`` over this call's unmasked tokens (0 if there are none), detached."""
    return _masked(x.detach(), mask).sum() / mask.sum().clamp(min=1)


def log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str = "token") -> Tensor:
    """(N, T) log importance ratio ``log(new / old)``, 0 at masked positions; ``old_logprobs`` is a constant.

    ``token``: per token. ``sequence`` (GSPO): every token of a row carries the row's mean token log-ratio, the log
    of the geometric mean of its token ratios, differentiable w.r.t. every token of the row. Summed over a row
    with equal weights, its gradient is GSPO's ``s_i * mean_t grad log pi(y_t)`` per token.
    """
    m = _as_bool_mask(mask, logprobs)  # (N, T)
    _check_tokens("old_logprobs", old_logprobs, logprobs)
    if level not in RATIO_LEVELS:
        raise ValueError(f"level must be one of {RATIO_LEVELS}, got {level!r}")
    token = _masked(logprobs - old_logprobs.detach(), m)  # (N, T)
    if level == "token":
        return token
    seq = token.sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp(min=1)  # (N, 1)
    return _masked(seq.expand_as(token), m)  # (N, T)


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    ratio_level: str = "token",
    is_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token PPO/GRPO clipped surrogate ``-w * min(rho*A, clip(rho, 1-eps, 1+eps_high)*A)``, (N, T).

    ``rho = exp(log_ratio(logprobs, old_logprobs, mask, ratio_level))``; ``old_logprobs``, ``advantages`` (N,) and
    the importance weights ``w`` (N, T; default 1) are constants. ``clip_eps_high`` defaults to ``clip_eps``
    (DAPO's clip-higher sets it larger). Masked positions are exact zeros in the value and the gradient: the
    log-ratio is zeroed with ``torch.where`` *before* ``exp`` so garbage there never reaches either.
    Reduce it with `aggregate_loss`.

    Metrics (detached, plain token-means over this call's unmasked tokens): ``clip_frac`` fraction of tokens
    where the clipped term is the active one (A>0 and rho>1+eps_high, or A<0 and rho<1-eps); ``ratio_mean``
    mean of rho; ``policy_kl`` Schulman's k3 estimate of KL(old || new) from the *token* ratios (whatever the
    ratio level), ``r - 1 - log r`` with ``r = new/old``, on tokens the old policy sampled.
    """
    m = _as_bool_mask(mask, logprobs)  # (N, T)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape ({logprobs.shape[0]},) (N,), got {tuple(advantages.shape)}")
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps <= 0 or high <= 0:
        raise ValueError(f"clip_eps and clip_eps_high must be > 0, got {clip_eps} and {high}")
    weights = torch.ones_like(logprobs) if is_weights is None else is_weights.detach().to(logprobs.dtype)  # (N, T)
    _check_tokens("is_weights", weights, logprobs)
    token_log_ratio = log_ratio(logprobs, old_logprobs, m)  # (N, T)
    used = token_log_ratio if ratio_level == "token" else log_ratio(logprobs, old_logprobs, m, ratio_level)
    ratio = torch.exp(used)  # (N, T), exactly 1 at masked positions
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # (N, 1)
    unclipped = ratio * adv  # (N, T)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + high) * adv  # (N, T)
    per_token = _masked(-weights * torch.minimum(unclipped, clipped), m)  # (N, T)

    is_clipped = ((adv > 0) & (ratio > 1.0 + high)) | ((adv < 0) & (ratio < 1.0 - clip_eps))  # (N, T)
    metrics = {
        "clip_frac": _masked_mean(is_clipped.to(logprobs.dtype), m),
        "ratio_mean": _masked_mean(ratio, m),
        "policy_kl": _masked_mean(torch.exp(token_log_ratio) - 1.0 - token_log_ratio, m),
    }
    return per_token, metrics


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, estimator: str = "k3") -> Tensor:
    """(N, T) per-token estimate of KL(new || ref) on tokens sampled from the policy, 0 at masked positions.

    With ``d = logprobs - ref_logprobs`` (Schulman's estimators; ``ref_logprobs`` is a constant):
    ``k1 = d`` (unbiased, can be negative), ``k2 = d^2 / 2``, ``k3 = exp(-d) - 1 + d`` (unbiased and >= 0,
    DeepSeekMath's GRPO term and verl's ``low_var_kl``, here without verl's clamp). All are 0 where the policy
    equals the reference; there k2 and k3 also have zero gradient, k1 has gradient 1 per token (zero only in
    expectation over samples).
    """
    m = _as_bool_mask(mask, logprobs)  # (N, T)
    _check_tokens("ref_logprobs", ref_logprobs, logprobs)
    d = _masked(logprobs - ref_logprobs.detach(), m)  # (N, T), exactly 0 at masked positions
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(-d) - 1.0 + d
    raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def truncated_is_weights(
    old_logprobs: Tensor, engine_logprobs: Tensor, mask: Tensor, cap: float = 2.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """TIS: (N, T) constant weights ``min(exp(old - engine), cap)`` for the gap between the policy that sampled
    (the engine's numerics, maybe older weights) and the learner's "old" policy; 1 at masked positions.

    Metrics (plain token-means over unmasked tokens): ``is_weight_mean``, ``is_truncated_frac`` (weight at the cap).
    """
    m = _as_bool_mask(mask, old_logprobs)  # (N, T)
    _check_tokens("engine_logprobs", engine_logprobs, old_logprobs)
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    raw = torch.exp(_masked(old_logprobs.detach() - engine_logprobs.detach(), m))  # (N, T)
    weights = raw.clamp(max=cap)  # (N, T)
    truncated = (raw > cap).to(raw.dtype)  # (N, T)
    metrics = {"is_weight_mean": _masked_mean(weights, m), "is_truncated_frac": _masked_mean(truncated, m)}
    return weights, metrics


def loss_denominator(mode: str, num_tokens: int, num_seqs: int, token_sum_norm: float) -> float:
    """The step's global normalizer of `aggregate_loss`: every completion token of the step (``token_mean``),
    ``num_seqs * token_sum_norm`` (``seq_mean_token_sum``: Dr. GRPO's fixed constant, e.g. max_tokens), or
    ``num_seqs`` (``seq_mean_token_mean``). Count rows the learner skips too: they belong to the step's mean."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"mode must be one of {LOSS_AGG_MODES}, got {mode!r}")
    if min(num_tokens, num_seqs) <= 0:
        raise ValueError(f"num_tokens and num_seqs must be > 0, got {num_tokens} and {num_seqs}")
    if mode == "token_mean":
        return float(num_tokens)
    if mode == "seq_mean_token_mean":
        return float(num_seqs)
    if token_sum_norm <= 0:
        raise ValueError(f"token_sum_norm must be > 0 for {mode}, got {token_sum_norm}")
    return float(num_seqs) * token_sum_norm


def aggregate_loss(per_token: Tensor, mask: Tensor, mode: str, denominator: float | Tensor) -> Tensor:
    """Scalar loss: this call's share of the step's mean, ``numerator / denominator`` (`loss_denominator`).

    The numerator is the sum of unmasked tokens (``token_mean``, ``seq_mean_token_sum``) or the sum over rows of
    each row's token-mean (``seq_mean_token_mean``; a fully masked row adds 0). ``per_token`` must already be 0 at
    masked positions (as `clipped_policy_loss` and `kl_penalty` return it).
    """
    m = _as_bool_mask(mask, per_token)  # (N, T)
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"mode must be one of {LOSS_AGG_MODES}, got {mode!r}")
    rows = _masked(per_token, m).sum(dim=1)  # (N,)
    if mode == "seq_mean_token_mean":
        rows = rows / m.sum(dim=1).clamp(min=1)  # (N,)
    return rows.sum() / denominator
