"""Token log-probs and entropy straight from hidden states, chunked so the (M, V) logits never exist at once.

    logprobs, entropy = linear_token_logprobs(hidden, head_weight, targets, temperature=0.7, chunk_tokens=1024)

`log_softmax(hidden @ W.T / T)` gathered at `targets`, in float32 whatever the matmul dtype. The forward pass
keeps only each row's log-sum-exp; the backward pass recomputes one chunk of logits at a time. Peak memory is
one (chunk, V) float32 block instead of a (M, V) log-softmax that autograd would keep for the whole micro-batch
(V = 49152: 200 KB a token). The price is one extra head matmul in the backward pass. Only torch is imported.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _scaled_logits(hidden: Tensor, weight: Tensor, temperature: float) -> Tensor:
    """(c, H) x (V, H) -> (c, V) logits / T in at least float32. The matmul runs in the inputs' dtype (bf16 is ~6x
    faster than fp32 on these cores); bf16 log-probs would be too coarse for exp(new - old) ratios."""
    logits = hidden @ weight.t()  # (c, V)
    logits = logits.to(_score_dtype(logits.dtype))
    return logits / temperature if temperature != 1.0 else logits


def _score_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 (tests) stays fp64


class _LinearTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        hidden: Tensor,  # (M, H)
        weight: Tensor,  # (V, H)
        targets: Tensor,  # (M,) long
        temperature: float,
        chunk_tokens: int,
    ) -> tuple[Tensor, Tensor]:
        rows, dtype = hidden.shape[0], _score_dtype(hidden.dtype)
        logprobs = torch.empty(rows, dtype=dtype, device=hidden.device)  # (M,)
        entropy = torch.empty(rows, dtype=dtype, device=hidden.device)  # (M,)
        lse = torch.empty(rows, dtype=dtype, device=hidden.device)  # (M,)
        for start in range(0, rows, chunk_tokens):
            end = min(start + chunk_tokens, rows)
            z = _scaled_logits(hidden[start:end], weight, temperature)  # (c, V)
            # One exp pass serves the log-sum-exp and the entropy (the (c, V) passes dominate this function).
            top = z.amax(dim=-1, keepdim=True)  # (c, 1)
            e = (z - top).exp_()  # (c, V)
            total = e.sum(dim=-1)  # (c,)
            lse[start:end] = top[:, 0] + total.log()
            logprobs[start:end] = z.gather(1, targets[start:end, None])[:, 0] - lse[start:end]
            # H = lse - E_p[z] with p = e / total; head logits are finite, so no 0 * inf.
            entropy[start:end] = lse[start:end] - (e * z).sum(dim=-1) / total
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        ctx.mark_non_differentiable(entropy)  # a metric, never a loss term here
        return logprobs, entropy

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_logprobs: Tensor, _grad_entropy: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk_tokens = ctx.temperature, ctx.chunk_tokens
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None  # (M, H)
        grad_weight = None  # (V, H), accumulated in at least fp32 across chunks
        if ctx.needs_input_grad[1]:
            grad_weight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device)
        for start in range(0, hidden.shape[0], chunk_tokens):
            end = min(start + chunk_tokens, hidden.shape[0])
            z = _scaled_logits(hidden[start:end], weight, temperature)  # (c, V)
            g = grad_logprobs[start:end, None].to(lse.dtype) / temperature  # (c, 1), z = logits / T folded in
            # d logp(t) / d z_v = 1[v = t] - p_v
            grad_z = z.sub_(lse[start:end, None]).exp_().mul_(-g)  # (c, V), in place: z is not needed again
            grad_z.scatter_add_(1, targets[start:end, None], g)
            grad_logits = grad_z.to(hidden.dtype)  # (c, V)
            if grad_hidden is not None:
                grad_hidden[start:end] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += grad_logits.t() @ hidden[start:end]
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def linear_token_logprobs(
    hidden: Tensor, weight: Tensor, targets: Tensor, temperature: float = 1.0, chunk_tokens: int = 1024
) -> tuple[Tensor, Tensor]:
    """Log-prob of each target and the entropy of each row's distribution, (M,) each, in at least float32.

    hidden (M, H) and weight (V, H) share a dtype; the temperature must be the sampler's, so the learner scores the
    distribution the engine sampled from. Entropy carries no gradient.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden (M, H) and weight (V, H), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets must have shape ({hidden.shape[0]},), got {tuple(targets.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    return _LinearTokenLogprobs.apply(hidden, weight, targets.long(), float(temperature), int(chunk_tokens))
