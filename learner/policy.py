"""The policy as the learner runs it: the causal LM's body, then the head on the scored positions only.

`ScoredPolicy` wraps a Hugging Face causal LM so that one forward returns the log-prob (at the sampler's
temperature) and the entropy of every completion token of a packed micro-batch, without computing logits for
prompt or padding positions and without holding a (tokens, vocab) block (`learner/logprobs.py`). It is the FSDP2
root module, so the embedding / tied head are gathered once per forward like any other parameter.
"""

from __future__ import annotations

import torch
from torch import nn

from learner.batch import PackedBatch
from learner.logprobs import linear_token_logprobs

# Prefix of every parameter name of the wrapped model in this module's state dict.
LM_PREFIX = "lm."


class ScoredPolicy(nn.Module):
    def __init__(self, lm: nn.Module, temperature: float, chunk_tokens: int) -> None:
        super().__init__()
        self.lm = lm
        self.temperature, self.chunk_tokens = temperature, chunk_tokens

    def forward(
        self,
        input_ids: torch.Tensor,  # (U, L) long
        attention_mask: torch.Tensor,  # (U, 1, L, L) bool
        position_ids: torch.Tensor,  # (U, L) long
        score_index: torch.Tensor,  # (M,) long, flat into (U * L)
        targets: torch.Tensor,  # (M,) long
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(M,) log-probs and (M,) entropies of the scored tokens, in at least float32.

        Only integer and bool tensors come in, so FSDP's mixed-precision input cast never rounds a float input.
        """
        hidden = self.lm.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (U, L, H), after the final norm
        scored = hidden.reshape(-1, hidden.shape[-1]).index_select(0, score_index)  # (M, H)
        weight = self.lm.get_output_embeddings().weight  # (V, H); the embedding itself when tied
        return linear_token_logprobs(scored, weight.to(scored.dtype), targets, self.temperature, self.chunk_tokens)

    def score(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward` on a packed micro-batch (through `__call__`, so FSDP's hooks run)."""
        return self(batch.input_ids, batch.attention_mask, batch.position_ids, batch.score_index, batch.targets)
