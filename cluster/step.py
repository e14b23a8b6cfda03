"""What one step writes: the learner's batch, the per-completion rollout lines, the metrics record, samples."""

from __future__ import annotations

import re
import statistics
from typing import TYPE_CHECKING, Any

from cluster.metrics import reward_metrics
from cluster.stats import pass_at_k
from learner.batch import TrainBatch
from rewards.reasoning import reasoning_metrics
from rewards.reward_functions import answers_match, extract_answer

if TYPE_CHECKING:
    from actors.rollout import Completion
    from cluster.data import Problem
    from cluster.rollout_stage import StepRollout


def train_batch(completions: list[Completion], advantages: list[float]) -> TrainBatch:
    return TrainBatch(
        prompt_token_ids=[c.prompt_token_ids for c in completions],
        completion_token_ids=[c.token_ids for c in completions],
        advantages=advantages,
        engine_logprobs=[c.engine_logprobs for c in completions],
        group_ids=[c.prompt_index for c in completions],
    )


def build_step_records(
    rollout: StepRollout,
    learner_logprobs: list[float | None],
    extra_metrics: dict[str, float],
    timings: dict[str, float],
    group_size: int,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The step's metrics record (same names as wandb) and its rollouts.jsonl lines, one per sampled completion.

    `learner_logprobs` is each completion's summed token logprob from the learner's first pass (None: not forwarded).
    The reward metrics cover every sampled completion, the ones dynamic sampling dropped too (`trained: false`).
    """
    step = rollout.step
    lines = []
    for completion, response, scores, advantage, trained, learner_logprob in zip(
        rollout.completions,
        rollout.responses,
        rollout.scored.scores,
        rollout.advantages,
        rollout.trained,
        learner_logprobs,
        strict=True,
    ):
        problem = rollout.problems[completion.prompt_index]
        lines.append(
            {
                "step": step,
                "prompt_index": problem.index,
                "sample_index": completion.sample_index,
                "question": problem.question,
                "gold": problem.gold,
                "completion": response,
                "num_tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
                "rewards": {name: value for name, value in scores.items() if name != "total"},
                "total": scores["total"],
                "advantage": advantage,
                "trained": trained,
                "policy_version": completion.policy_version,
                # Both at rollout.temperature: the sampled distribution as the engine and as the learner computed it.
                "engine_logprob": sum(completion.engine_logprobs),
                "learner_logprob": learner_logprob,
            }
        )
    tokens = sum(line["num_tokens"] for line in lines)
    # Versions behind the newest one step `step` could have sampled with (step - 1): 0 on-policy, k with overlap.
    staleness = [step - 1 - line["policy_version"] for line in lines]
    record: dict[str, Any] = {
        "step": step,
        **reward_metrics([line["total"] for line in lines], rollout.scored.scores, group_size),
        "rewards/errors": rollout.scored.errors,
        "rewards/timeouts": rollout.scored.timeouts,
        **extra_metrics,
        **timings,
        "throughput/tokens_per_s": tokens / timings["time/rollout"],
        "rollout/tokens_mean": statistics.fmean(line["num_tokens"] for line in lines),
        "rollout/stopped_frac": statistics.fmean(line["finish_reason"] == "stop" for line in lines),
        # Reward hacking the rewards cannot see: empty, placeholder or copied <think> blocks (rewards/reasoning.py).
        **reasoning_metrics([line["completion"] for line in lines], [line["question"] for line in lines], "rollout/"),
        "rollout/groups_sampled": rollout.groups_sampled,
        "rollout/groups_trained": rollout.groups_trained,
        "rollout/sampling_rounds": rollout.rounds,
        "rollout/staleness_mean": statistics.fmean(staleness),
        "rollout/staleness_max": max(staleness),
        "policy_version": min(line["policy_version"] for line in lines),
    }
    return record, lines


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def lenient_correct(completion: str, gold: str) -> bool:
    """The gold number appears anywhere inside the answer block (words and units around it allowed)."""
    answer = extract_answer(completion)
    return answer is not None and any(answers_match(n, gold) for n in _NUMBER.findall(answer))


def strict_correct(scores: dict[str, float]) -> bool:
    """The correct answer in the exact format."""
    return scores["correctness"] > 0 and scores["hard_format"] > 0


def eval_record(texts: list[str], golds: list[str], scores: list[dict[str, float]]) -> dict[str, float]:
    """Greedy eval, whatever `reward.functions` are: the mean of each configured function (`eval/<name>/mean`) and of
    their total; lenient accuracy = the gold number inside <answer> (read from the text, no reward function needed);
    strict accuracy = correct answer in the exact format, only when the built-in `correctness` and `hard_format`
    are among the functions."""
    names = [name for name in scores[0] if name != "total"]
    record: dict[str, float] = {f"eval/{name}/mean": statistics.fmean(s[name] for s in scores) for name in names}
    if {"correctness", "hard_format"} <= set(names):
        record["eval/accuracy_strict"] = statistics.fmean(strict_correct(s) for s in scores)
    lenient = [lenient_correct(t, g) for t, g in zip(texts, golds, strict=True)]
    return {
        **record,
        "eval/accuracy_lenient": statistics.fmean(lenient),
        "eval/reward_mean": statistics.fmean(s["total"] for s in scores),
        "eval/size": len(scores),
    }


def pass_at_k_record(texts: list[str], golds: list[str], scores: list[dict[str, float]], k: int) -> dict[str, float]:
    """pass@k from exactly k samples per question, in (question, sample) order: the share of questions with at least
    one correct sample (`pass_at_k(k, c, k)`), lenient always, strict (as `eval_record`) when the built-in
    `correctness` and `hard_format` are among the reward functions; and k."""
    if k < 1 or len(scores) % k:
        raise ValueError(f"{len(scores)} scores are not k={k} samples per question")
    correct = {"eval/pass_at_k_lenient": [lenient_correct(t, g) for t, g in zip(texts, golds, strict=True)]}
    if {"correctness", "hard_format"} <= set(scores[0]):
        correct["eval/pass_at_k"] = [strict_correct(s) for s in scores]
    record: dict[str, float] = {
        name: statistics.fmean(pass_at_k(k, sum(flags[i : i + k]), k) for i in range(0, len(flags), k))
        for name, flags in correct.items()
    }
    return {**record, "eval/pass_k": k}


def format_samples(step: int, problem: Problem, lines: list[dict[str, Any]]) -> str:
    """The first completions of the step's first prompt with their reward parts, for the console."""
    out = [f"── step {step} · question: {problem.question[:160]!r} · gold {problem.gold}"]
    for line in lines:
        parts = " ".join(f"{k}={v:g}" for k, v in line["rewards"].items())
        out.append(
            f"  [{line['sample_index']}] total={line['total']:g} ({parts}) adv={line['advantage']:+.2f} "
            f"{line['num_tokens']} tok, {line['finish_reason']}"
        )
        out.append("      " + line["completion"][:300].replace("\n", "\n      "))
    return "\n".join(out)
