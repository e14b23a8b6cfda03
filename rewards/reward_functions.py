"""Rule-based rewards for GRPO on GSM8K.

Completions are expected in the layout ``<think>\\n...\\n</think>\\n<answer>\\n...\\n</answer>``.
Four batched reward functions score a completion against an extracted gold answer; their maxima
(2.0 + 0.5 + 0.5 + 0.5) sum to ``MAX_TOTAL_REWARD``.

Example::

    >>> completion = "<think>\\n8 * 9 = 72\\n</think>\\n<answer>\\n72\\n</answer>"
    >>> gold = extract_final_answer("8 * 9 = <<8*9=72>>72\\n#### 72")
    >>> score(completion, gold)
    {'correctness': 2.0, 'digit': 0.5, 'hard_format': 0.5, 'mark': 0.5, 'total': 3.5}
    >>> score(" answer </answer>\\n\\n", "24")["total"]
    0.125

This module is pure Python so that it can be imported and tested without torch, Ray or vLLM.
"""

import re
from collections.abc import Callable

RewardFunction = Callable[[list[str], list[str]], list[float]]

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
MAX_TOTAL_REWARD = 3.5

_COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d),(?=\d)")
_PLAIN_NUMBER = re.compile(r"-?\d+(\.\d+)?")
# Lazy bodies so the layout, not the content, decides; tag counts are checked separately.
_HARD_FORMAT = re.compile(r"<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>\n?", re.DOTALL)


def normalize_number(text: str) -> str:
    """Drop thousands separators (commas between two digits) and surrounding whitespace."""
    return _COMMA_BETWEEN_DIGITS.sub("", text).strip()


def extract_final_answer(answer_text: str) -> str:
    """Return the GSM8K gold answer: the text after the (last) ``####`` marker, stripped."""
    if "####" not in answer_text:
        raise ValueError(f"GSM8K answer has no '####' final-answer marker: {answer_text!r}")
    return answer_text.rsplit("####", 1)[1].strip()


def extract_answer(completion: str) -> str | None:
    """Return the answer before the first ``</answer>`` (after the last ``<answer>`` before it).

    None when the completion has no ``</answer>``, e.g. it was cut off by the token limit.
    """
    end = completion.find("</answer>")
    if end == -1:
        return None
    head = completion[:end]
    start = head.rfind("<answer>")
    return (head[start + len("<answer>") :] if start != -1 else head).strip()


def answers_match(predicted: str | None, gold: str) -> bool:
    """Equal after normalize_number, as text or as numbers (``"72.0"`` matches ``"72"``)."""
    if predicted is None:
        return False
    predicted, gold = normalize_number(predicted), normalize_number(gold)
    if predicted == gold:
        return True
    try:
        return float(predicted) == float(gold)
    except ValueError:
        return False


def _check_lengths(completions: list[str], answers: list[str]) -> None:
    if len(completions) != len(answers):
        raise ValueError(f"got {len(completions)} completions but {len(answers)} answers")


def correctness_reward(completions: list[str], answers: list[str]) -> list[float]:
    """2.0 when the extracted answer equals the gold answer (as text or as a number), else 0.0."""
    _check_lengths(completions, answers)
    pairs = zip(completions, answers, strict=True)
    return [2.0 if answers_match(extract_answer(c), a) else 0.0 for c, a in pairs]


def digit_reward(completions: list[str], answers: list[str]) -> list[float]:
    """0.5 when the extracted answer is a plain number such as ``-3`` or ``2.5``, else 0.0."""
    _check_lengths(completions, answers)
    rewards = []
    for completion in completions:
        predicted = extract_answer(completion)
        plain = predicted is not None and bool(_PLAIN_NUMBER.fullmatch(normalize_number(predicted)))
        rewards.append(0.5 if plain else 0.0)
    return rewards


def hard_format_reward(completions: list[str], answers: list[str]) -> list[float]:
    """0.5 when the whole completion has the exact think/answer layout with each tag once, else 0.0."""
    _check_lengths(completions, answers)
    return [0.5 if _HARD_FORMAT.fullmatch(c) and all(c.count(tag) == 1 for tag in TAGS) else 0.0 for c in completions]


def _mark(completion: str, tag: str) -> float:
    if completion.count(tag) != 1:
        return 0.0
    # vLLM's stop string ends a completion exactly at </answer>, so no newline can follow it.
    if tag + "\n" in completion or (tag == "</answer>" and completion.endswith(tag)):
        return 0.125
    return 0.0


def mark_reward(completions: list[str], answers: list[str]) -> list[float]:
    """0.125 per tag that occurs exactly once and is followed by a newline (or ends the completion)."""
    _check_lengths(completions, answers)
    return [sum(_mark(c, tag) for tag in TAGS) for c in completions]


REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "correctness": correctness_reward,
    "digit": digit_reward,
    "hard_format": hard_format_reward,
    "mark": mark_reward,
}


def score(completion: str, answer: str) -> dict[str, float]:
    """Score one completion with every reward function; ``"total"`` is their sum."""
    scores = {name: fn([completion], [answer])[0] for name, fn in REWARD_FUNCTIONS.items()}
    scores["total"] = sum(scores.values())
    return scores
