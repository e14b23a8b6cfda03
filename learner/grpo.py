"""Pure GRPO math: group-relative advantages, the clipped policy loss and the KL term (token log-probs: logprobs.py).

Only torch is imported here so the maths can be unit-tested on CPU and reused unchanged by the
distributed learner. Shapes: N completions (G prompts x group_size), T completion tokens, V vocab.
Losses are *sums over unmasked tokens divided by ``num_tokens``*: give every shard / micro-batch of a
step the step's global unmasked-token count and their losses (and gradients) add up exactly to the
token-mean over the whole step, independent of how the batch was split.
"""

from __future__ import annotations

import torch
from torch import Tensor

NumTokens = float | int | Tensor | None


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """Return ``(r - mean_g) / (std_g + eps)`` per group of ``group_size`` consecutive completions.

    The std is unbiased (torch default). Groups whose rewards are all equal carry no learning signal,
    so they get exact zeros: float ``r - mean`` is not exactly 0 for e.g. ``[0.1] * 3``.
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
    mean = r.mean(dim=1, keepdim=True)  # (G, 1)
    std = r.std(dim=1, keepdim=True)  # (G, 1), unbiased
    constant = (r == r[:, :1]).all(dim=1, keepdim=True)  # (G, 1), exact equality, not std == 0
    adv = torch.where(constant, torch.zeros_like(r), (r - mean) / (std + eps))  # (G, k)
    return adv.reshape(n)  # (N,)


def _check_tokens(name: str, x: Tensor, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} must have shape {tuple(ref.shape)} (N, T), got {tuple(x.shape)}")


def _as_bool_mask(mask: Tensor, logprobs: Tensor) -> Tensor:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be 2-D (N, T), got shape {tuple(logprobs.shape)}")
    _check_tokens("mask", mask, logprobs)
    return mask if mask.dtype == torch.bool else mask != 0  # (N, T) bool


def _denominator(mask: Tensor, num_tokens: NumTokens, like: Tensor) -> Tensor:
    """Token count to divide by: this call's unmasked tokens (>= 1) unless the caller gives the global one."""
    if num_tokens is None:
        return mask.sum().clamp(min=1).to(like.dtype)
    if isinstance(num_tokens, Tensor):  # not checked: a value check would force a device sync
        return num_tokens.to(device=like.device, dtype=like.dtype)
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    return torch.tensor(float(num_tokens), device=like.device, dtype=like.dtype)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Plain token-mean of ``x`` over this call's unmasked tokens (0 if there are none), detached."""
    x = x.detach()
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


def clipped_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    num_tokens: NumTokens = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate: ``sum_unmasked(-min(rho*A, clip(rho, 1-eps, 1+eps)*A)) / num_tokens``.

    ``rho = exp(logprobs - old_logprobs)``; ``old_logprobs`` and ``advantages`` are treated as constants.
    The log-ratio is zeroed with ``torch.where`` *before* ``exp`` so garbage (inf/NaN) at masked
    positions reaches neither the value nor the gradient.

    Metrics (detached, plain token-means over this call's unmasked tokens, NOT divided by num_tokens):
    ``clip_frac`` fraction of tokens where the clipped term is the active one (A>0 and rho>1+eps, or
    A<0 and rho<1-eps); ``ratio_mean`` mean of rho; ``approx_kl`` Schulman's k3 estimate of
    KL(old || new) from tokens sampled by the old policy: ``r - 1 - log r`` with ``r = rho = new/old``.
    """
    m = _as_bool_mask(mask, logprobs)  # (N, T)
    _check_tokens("old_logprobs", old_logprobs, logprobs)
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must have shape ({logprobs.shape[0]},) (N,), got {tuple(advantages.shape)}")
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    log_ratio = torch.where(m, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))  # (N, T)
    ratio = torch.exp(log_ratio)  # (N, T), exactly 1 at masked positions
    adv = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # (N, 1)
    unclipped = ratio * adv  # (N, T)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv  # (N, T)
    per_token = -torch.minimum(unclipped, clipped)  # (N, T)
    total = torch.where(m, per_token, torch.zeros_like(per_token)).sum()
    loss = total / _denominator(m, num_tokens, logprobs)

    is_clipped = ((adv > 0) & (ratio > 1.0 + clip_eps)) | ((adv < 0) & (ratio < 1.0 - clip_eps))  # (N, T)
    metrics = {
        "clip_frac": _masked_mean(is_clipped.to(logprobs.dtype), m),
        "ratio_mean": _masked_mean(ratio, m),
        "approx_kl": _masked_mean(ratio - 1.0 - log_ratio, m),
    }
    return loss, metrics


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, num_tokens: NumTokens = None) -> Tensor:
    """k3 penalty toward a reference policy, as in DeepSeekMath GRPO: ``r - 1 - log r``, ``r = ref/new``.

    Non-negative per token (0 iff equal), an estimate of KL(new || ref) on tokens from the policy, and
    differentiable w.r.t. ``logprobs`` only. Reduced like the policy loss: sum unmasked / num_tokens.
    """
    m = _as_bool_mask(mask, logprobs)  # (N, T)
    _check_tokens("ref_logprobs", ref_logprobs, logprobs)
    log_r = torch.where(m, ref_logprobs.detach() - logprobs, torch.zeros_like(logprobs))  # (N, T)
    per_token = torch.exp(log_r) - 1.0 - log_r  # (N, T), exactly 0 at masked positions
    return per_token.sum() / _denominator(m, num_tokens, logprobs)
