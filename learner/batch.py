"""The one batch type that crosses from the driver to the learner, and how the learner packs it for the model.

A *unit* is one prompt with the completions that attend to it. With `shared_prompt` a unit is a whole GRPO group:
the prompt runs once and its n completions follow it in the same row, each seeing the prompt and itself only
(block attention mask, positions restarting after the prompt), as in Prefix Grouper (arXiv 2506.05433). Without
it every completion is its own unit, the plain batch. Both give the same logits for every completion token.

    row of a unit   [ prompt (P) | completion 0 (T0) | completion 1 (T1) | ... | pad ]
    position ids    [ 0 .. P-1   | P .. P+T0-1       | P .. P+T1-1       | ... | 0   ]

Only the positions that predict a completion token are scored: the prompt's last position predicts every
completion's first token, and each completion token predicts the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Segment ids inside a packed row: completion i is segment i (>= 0).
_PROMPT, _PAD = -1, -2


@dataclass(frozen=True)
class TrainBatch:
    """Rows of one step (or of one rank's share of it), as plain lists so it pickles cheaply."""

    prompt_token_ids: list[list[int]]
    completion_token_ids: list[list[int]]
    advantages: list[float]
    engine_logprobs: list[list[float]]
    """vLLM's logprob of each sampled token (of the distribution it sampled from); compared, never trained on."""
    group_ids: list[int]
    """Rows with the same group id share one prompt (a GRPO group)."""

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
            group_ids=[self.group_ids[i] for i in chunk],
        )


@dataclass(frozen=True)
class Unit:
    """One prompt and the batch rows (completions) packed after it."""

    prompt: list[int]
    rows: list[int]

    def length(self, batch: TrainBatch) -> int:
        return len(self.prompt) + sum(len(batch.completion_token_ids[r]) for r in self.rows)


def make_units(batch: TrainBatch, shared_prompt: bool) -> list[Unit]:
    """Group rows by prompt (shared_prompt) or keep one unit per row; rows keep their order inside a unit."""
    if not shared_prompt:
        return [Unit(batch.prompt_token_ids[r], [r]) for r in range(len(batch))]
    by_group: dict[int, list[int]] = {}
    for row, group in enumerate(batch.group_ids):
        by_group.setdefault(group, []).append(row)
    units = []
    for group, rows in by_group.items():
        prompt = batch.prompt_token_ids[rows[0]]
        if any(batch.prompt_token_ids[r] != prompt for r in rows):
            raise ValueError(f"rows of group {group} do not share one prompt")
        units.append(Unit(prompt, rows))
    return units


def plan_micro_batches(units: list[Unit], batch: TrainBatch, max_tokens: int) -> list[list[Unit]]:
    """Cut units into micro-batches of at most `max_tokens` padded tokens (rows x longest row).

    Units are taken longest first, so each micro-batch holds similar lengths and pads little; a unit longer than
    the budget gets a micro-batch of its own.
    """
    ordered = sorted(units, key=lambda u: u.length(batch), reverse=True)
    plan: list[list[Unit]] = []
    for unit in ordered:
        current = plan[-1] if plan else None
        # Longest first: the first unit of a micro-batch sets its padded width.
        if current is not None and (len(current) + 1) * current[0].length(batch) <= max_tokens:
            current.append(unit)
        else:
            plan.append([unit])
    return plan


@dataclass(frozen=True)
class PackedBatch:
    """One micro-batch as model inputs plus one flat entry per scored completion token (M of them)."""

    input_ids: torch.Tensor  # (U, L) long
    position_ids: torch.Tensor  # (U, L) long
    attention_mask: torch.Tensor  # (U, 1, L, L) bool, True where a query position may attend a key position
    score_index: torch.Tensor  # (M,) long: flat index u * L + position of the hidden state predicting each token
    targets: torch.Tensor  # (M,) long: the completion tokens
    token_row: torch.Tensor  # (M,) long: index into `rows` of each token's completion
    advantages: torch.Tensor  # (M,) float32: its completion's advantage
    engine_logprobs: torch.Tensor  # (M,) float32
    rows: list[int]  # batch rows in this micro-batch

    @property
    def num_tokens(self) -> int:
        return int(self.targets.shape[0])

    def by_row(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token `values` (M,) laid out as (R, T) completions of this micro-batch (R = len(rows), T its longest
        completion, at least 1), zeros after each row's end, and the (R, T) bool mask of real tokens.

        The GRPO math works on rows (sequence ratios, per-sequence means); differentiable w.r.t. `values`. A row's
        tokens are contiguous in `pack`'s order, so a token's place in its row is its index minus the row's start.
        """
        num_rows = len(self.rows)
        counts = torch.bincount(self.token_row, minlength=num_rows)  # (R,)
        starts = torch.cumsum(counts, 0) - counts  # (R,)
        width = max(1, int(counts.max())) if num_rows else 1
        position = torch.arange(self.num_tokens, device=values.device) - starts[self.token_row]  # (M,)
        flat = self.token_row * width + position  # (M,) into (R * T)
        laid = values.new_zeros(num_rows * width).index_put((flat,), values).view(num_rows, width)  # (R, T)
        mask = torch.zeros(num_rows * width, dtype=torch.bool, device=values.device)
        return laid, mask.index_fill(0, flat, True).view(num_rows, width)  # (R, T), (R, T)

    def to(self, device: torch.device) -> PackedBatch:
        moved = {name: getattr(self, name).to(device) for name in self.__dataclass_fields__ if name != "rows"}
        return PackedBatch(**moved, rows=self.rows)


def pack(units: list[Unit], batch: TrainBatch, pad_token_id: int) -> PackedBatch:
    """Lay out the units as (U, L) rows with their block-causal masks (see the module docstring)."""
    width = max(1, max(u.length(batch) for u in units)) if units else 1
    count = max(1, len(units))  # an empty micro-batch still runs the model once: FSDP ranks step together
    input_ids = torch.full((count, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((count, width), dtype=torch.long)
    segments = torch.full((count, width), _PAD, dtype=torch.long)
    score_index, targets, token_row, advantages, engine = [], [], [], [], []
    rows: list[int] = []
    for u, unit in enumerate(units):
        prompt_len = len(unit.prompt)
        input_ids[u, :prompt_len] = torch.tensor(unit.prompt, dtype=torch.long)
        position_ids[u, :prompt_len] = torch.arange(prompt_len)
        segments[u, :prompt_len] = _PROMPT
        start = prompt_len
        for segment, row in enumerate(unit.rows):
            completion = batch.completion_token_ids[row]
            length = len(completion)
            if length != len(batch.engine_logprobs[row]):
                raise ValueError(f"row {row}: {length} tokens but {len(batch.engine_logprobs[row])} engine logprobs")
            input_ids[u, start : start + length] = torch.tensor(completion, dtype=torch.long)
            position_ids[u, start : start + length] = torch.arange(prompt_len, prompt_len + length)
            segments[u, start : start + length] = segment
            # Token j is predicted by the prompt's last position (j = 0) or by completion token j - 1.
            predictors = [prompt_len - 1, *range(start, start + length - 1)]
            score_index += [u * width + p for p in predictors[:length]]
            targets += completion
            token_row += [len(rows)] * length
            advantages += [batch.advantages[row]] * length
            engine += batch.engine_logprobs[row]
            rows.append(row)
            start += length
    query, key = segments[:, :, None], segments[:, None, :]  # (U, L, 1), (U, 1, L)
    causal = torch.ones(width, width, dtype=torch.bool).tril()  # (L, L)
    # A token sees the prompt and its own completion, causally. Pad positions see the prompt and earlier pads, so
    # no attention row is empty (an all-masked row gives NaN); nothing real ever attends to them.
    attention_mask = causal & ((key == _PROMPT) | (key == query))  # (U, L, L)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask[:, None],
        score_index=torch.tensor(score_index, dtype=torch.long),
        targets=torch.tensor(targets, dtype=torch.long),
        token_row=torch.tensor(token_row, dtype=torch.long),
        advantages=torch.tensor(advantages, dtype=torch.float32),
        engine_logprobs=torch.tensor(engine, dtype=torch.float32),
        rows=rows,
    )
