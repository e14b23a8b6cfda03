"""The one batch type that crosses from the driver to the learner, and its padded tensor layout.

Layout: prompts are LEFT-padded so every completion starts at the same column P, completions are RIGHT-padded
to T. The model then only needs logits for the last T+1 positions (`logits_to_keep`), and column P-1+j
predicts completion token j for every row.

    input_ids      (N, P+T)  [pad.. prompt | completion ..pad]
    completion_ids (N, T)    the sampled tokens, 0 where padded
    completion_mask(N, T)    True on real completion tokens
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainBatch:
    """Rows of one step (or of one rank's share of it), as plain lists so it pickles cheaply."""

    prompt_token_ids: list[list[int]]
    completion_token_ids: list[list[int]]
    advantages: list[float]
    engine_logprobs: list[list[float]]
    """vLLM's logprob of each sampled token; compared, never trained on."""

    def __len__(self) -> int:
        return len(self.advantages)

    @property
    def num_tokens(self) -> int:
        return sum(len(ids) for ids in self.completion_token_ids)

    def rows(self, chunk: Sequence[int]) -> TrainBatch:
        return TrainBatch(
            prompt_token_ids=[self.prompt_token_ids[i] for i in chunk],
            completion_token_ids=[self.completion_token_ids[i] for i in chunk],
            advantages=[self.advantages[i] for i in chunk],
            engine_logprobs=[self.engine_logprobs[i] for i in chunk],
        )


@dataclass(frozen=True)
class PaddedBatch:
    input_ids: torch.Tensor  # (N, P+T) long
    attention_mask: torch.Tensor  # (N, P+T) long
    position_ids: torch.Tensor  # (N, P+T) long, 0 at each row's first real token
    completion_ids: torch.Tensor  # (N, T) long
    completion_mask: torch.Tensor  # (N, T) bool
    advantages: torch.Tensor  # (N,) float32
    engine_logprobs: torch.Tensor  # (N, T) float32, 0 where padded

    @property
    def completion_len(self) -> int:
        return self.completion_ids.shape[1]

    def to(self, device: torch.device) -> PaddedBatch:
        return PaddedBatch(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


def pad_batch(batch: TrainBatch, pad_token_id: int) -> PaddedBatch:
    """Left-pad prompts, right-pad completions (see the module docstring for why)."""
    if len(batch) == 0:
        raise ValueError("cannot pad an empty batch")
    prompt_len = max(len(p) for p in batch.prompt_token_ids)
    completion_len = max(1, max(len(c) for c in batch.completion_token_ids))
    rows = len(batch)
    input_ids = torch.full((rows, prompt_len + completion_len), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_ids = torch.zeros((rows, completion_len), dtype=torch.long)
    engine_logprobs = torch.zeros((rows, completion_len), dtype=torch.float32)
    for row, (prompt, completion, logprobs) in enumerate(
        zip(batch.prompt_token_ids, batch.completion_token_ids, batch.engine_logprobs, strict=True)
    ):
        start, end = prompt_len - len(prompt), prompt_len + len(completion)
        input_ids[row, start:prompt_len] = torch.tensor(prompt)
        input_ids[row, prompt_len:end] = torch.tensor(completion, dtype=torch.long)
        attention_mask[row, start:end] = 1
        completion_ids[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
        engine_logprobs[row, : len(completion)] = torch.tensor(logprobs, dtype=torch.float32)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (N, P+T)
    completion_mask = attention_mask[:, prompt_len:].bool()  # (N, T)
    return PaddedBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        advantages=torch.tensor(batch.advantages, dtype=torch.float32),
        engine_logprobs=engine_logprobs,
    )
