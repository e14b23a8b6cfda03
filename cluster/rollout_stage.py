"""A step's rollout stage: sample the groups, score them, and (dynamic sampling) replace groups without signal.

    stage = RolloutStage(cfg, workers, tokenizer, train_problems)
    rollout = stage.collect(step)    # every sampled completion, which of them the step trains on
    rollout.train_batch()            # the learner's rows: the kept groups only

Round 0 samples the step's B prompts (`step_problem_indices`). With `data.dynamic_sampling`, every group whose n
rewards are all equal is dropped (its advantages are all zero: no signal), and round r >= 1 samples as many fresh
prompts as were dropped (`refill_problem_indices`), up to `data.max_sampling_rounds` rounds. Prompts, sampling
seeds and so every completion stay a pure function of (seed, step, round), so resume needs no data cursor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from actors.reward import ScoredBatch, merge_scored
from cluster.data import Problem, build_prompt, refill_problem_indices, response_text, step_problem_indices
from cluster.step import train_batch
from learner.batch import TrainBatch
from learner.grpo import group_advantages

if TYPE_CHECKING:
    from actors.rollout import Completion
    from cluster.config import Config
    from cluster.placement import Workers


@dataclass(frozen=True)
class StepRollout:
    """Everything one step sampled, in sampling order (round 0's groups first)."""

    step: int
    problems: list[Problem]
    """One per sampled group; `Completion.prompt_index` indexes this list."""
    completions: list[Completion]
    responses: list[str]
    """What the rewards scored: `data.response_prefix` + each completion's text."""
    scored: ScoredBatch
    advantages: list[float]
    trained: list[bool]
    """Per completion: its group is in the learner's batch (False: dropped by dynamic sampling)."""
    rounds: int
    timings: dict[str, float] = field(default_factory=dict)
    """`time/rollout` (generate) and `time/reward` (scoring), summed over the rounds."""
    busy: list[tuple[float, float]] = field(default_factory=list)
    """(start, end) `time.monotonic()` of each generate and score call: when the engines or scorers were working."""

    @property
    def groups_sampled(self) -> int:
        return len(self.problems)

    @property
    def groups_trained(self) -> int:
        return len({c.prompt_index for c, kept in zip(self.completions, self.trained, strict=True) if kept})

    def train_batch(self) -> TrainBatch:
        rows = [i for i, kept in enumerate(self.trained) if kept]
        return train_batch([self.completions[i] for i in rows], [self.advantages[i] for i in rows])

    def spread_trained(self, per_trained_row: list[Any]) -> list[Any]:
        """Per-row results of `train_batch()` put back at their completions' places; None for dropped ones."""
        values = iter(per_trained_row)
        spread = [next(values) if kept else None for kept in self.trained]
        if next(values, None) is not None:
            raise ValueError("more per-row results than trained rows")
        return spread


class RolloutStage:
    def __init__(self, cfg: Config, workers: Workers, tokenizer: Any, train_problems: list[Problem]) -> None:
        self.cfg, self.workers, self.tokenizer, self.train_problems = cfg, workers, tokenizer, train_problems

    def collect(self, step: int) -> StepRollout:
        cfg = self.cfg
        rows = step_problem_indices(len(self.train_problems), cfg.data.prompts_per_step, cfg.trainer.seed, step)
        rounds = cfg.data.max_sampling_rounds if cfg.data.dynamic_sampling else 1
        problems: list[Problem] = []
        completions: list[Completion] = []
        responses: list[str] = []
        parts: list[ScoredBatch] = []
        timings = {"time/rollout": 0.0, "time/reward": 0.0}
        busy: list[tuple[float, float]] = []
        taken: list[int] = []
        kept_groups = 0
        round_ = 0
        while True:
            first = len(problems)
            problems += [self.train_problems[i] for i in rows]
            taken += rows
            prefix = cfg.data.response_prefix  # scored as part of the response
            prompts = [build_prompt(self.tokenizer, p.question, prefix) for p in problems[first:]]
            start = time.monotonic()
            sampled = self.workers.generate(prompts, cfg.trainer.seed, step, first_index=first)
            middle = time.monotonic()
            scored_texts = [response_text(prefix, c.text) for c in sampled]
            parts.append(self.workers.score(scored_texts, [problems[c.prompt_index].gold for c in sampled]))
            end = time.monotonic()
            timings["time/rollout"] += middle - start
            timings["time/reward"] += end - middle
            busy += [(start, middle), (middle, end)]
            completions += sampled
            responses += scored_texts
            totals = torch.tensor([s["total"] for s in parts[-1].scores], dtype=torch.float64)  # (new groups * n,)
            kept_groups += int(_has_spread(totals, cfg.rollout.n).sum())
            round_ += 1
            missing = cfg.data.prompts_per_step - kept_groups
            if round_ == rounds or missing == 0:
                break
            rows = refill_problem_indices(len(self.train_problems), missing, cfg.trainer.seed, step, round_, taken)
        scored = merge_scored(parts)
        totals = torch.tensor([s["total"] for s in scored.scores], dtype=torch.float64)  # (groups * n,)
        advantages = group_advantages(totals, cfg.rollout.n, scale_by_std=cfg.learner.advantage_std)  # (groups * n,)
        keep = _has_spread(totals, cfg.rollout.n)  # (groups,)
        if not cfg.data.dynamic_sampling:
            keep = torch.ones_like(keep)
        trained = keep.repeat_interleave(cfg.rollout.n).tolist()  # (groups * n,)
        return StepRollout(
            step=step,
            problems=problems,
            completions=completions,
            responses=responses,
            scored=scored,
            advantages=advantages.tolist(),
            trained=trained,
            rounds=round_,
            timings=timings,
            busy=busy,
        )


def _has_spread(totals: torch.Tensor, group_size: int) -> torch.Tensor:
    """(groups,) bool: the group's rewards are not all equal (exact comparison, as `group_advantages` zeroes them)."""
    groups = totals.view(-1, group_size)  # (groups, n)
    return (groups != groups[:, :1]).any(dim=1)
