"""rewards/reasoning.py on hand-written completions: what counts as a trivial <think> block, and its length."""

from __future__ import annotations

import pytest

from rewards.reasoning import is_trivial_think, reasoning_metrics, think_block, think_words

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)


def _answer(think: str, answer: str = "72") -> str:
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


TRIVIAL = [
    pytest.param("no tags at all, 72", id="no-think-tag"),
    pytest.param(_answer(""), id="empty"),
    pytest.param("<think>\n\n\n</think>\n<answer>\n72\n</answer>", id="blank-lines"),
    pytest.param(_answer("..."), id="dots"),
    pytest.param(_answer("…"), id="ellipsis-char"),
    pytest.param(_answer(". . .\n---\n***"), id="punctuation"),
    pytest.param(_answer("72"), id="bare-guess"),
    pytest.param(_answer("...\n72"), id="dots-then-guess"),
    pytest.param(_answer("reasoning here"), id="two-words"),
    pytest.param(_answer("...", "..."), id="the-old-format-line"),
    pytest.param(_answer(QUESTION), id="question-verbatim"),
    # 14 words, 13 of them in the question (all but "so"): 13/14 = 0.93 >= 0.9
    pytest.param(_answer("So Natalia sold 48 clips in April and half as many clips in May"), id="restated"),
    pytest.param("<think>\n" + QUESTION + "\n<answer>\n72\n</answer>", id="copy-without-closing-tag"),
]

REASONING = [
    # 3 words with a digit: the smallest real calculation
    pytest.param(_answer("48 + 24 = 72"), id="one-sum"),
    # in, may, she, sold, 48, 48 are in the question; 2, 24, so, 24, 72 are not: 6 of 11 copied, under 0.9
    pytest.param(_answer("In May she sold 48 / 2 = 24. So 48 + 24 = 72."), id="two-steps"),
    pytest.param("<think>\nMay: 48 / 2 = 24 clips. Total 48 + 24", id="cut-off-mid-reasoning"),
]


@pytest.mark.parametrize("text", TRIVIAL)
def test_trivial_think_blocks(text: str) -> None:
    assert is_trivial_think(text, QUESTION)


@pytest.mark.parametrize("text", REASONING)
def test_reasoning_is_not_trivial(text: str) -> None:
    assert not is_trivial_think(text, QUESTION)


def test_think_block_ends_at_the_first_closing_tag_or_the_answer() -> None:
    assert think_block(_answer("a\nb")) == "a\nb"
    assert think_block("<think>\nx = 1\n<answer>\n1\n</answer>") == "x = 1"  # no </think>: up to <answer>
    assert think_block("<think>\nstill thinking") == "still thinking"  # cut off: to the end
    assert think_block("preamble <think> y </think> <think> z </think>") == "y"
    assert think_block("<answer>\n1\n</answer>") is None


def test_think_words_counts_whitespace_words() -> None:
    assert think_words(_answer("In May she sold 48 / 2 = 24.")) == 9
    assert think_words(_answer("...")) == 1
    assert think_words(_answer("")) == 0
    assert think_words("no think tag") == 0


def test_reasoning_metrics_share_and_mean() -> None:
    texts = [_answer("..."), _answer("48 / 2 = 24 and 48 + 24 = 72"), _answer(QUESTION), "cut off, no tag"]
    metrics = reasoning_metrics(texts, [QUESTION] * 4, "rollout/")
    assert metrics["rollout/trivial_think_frac"] == 0.75  # all but the calculation
    assert metrics["rollout/think_words_mean"] == (1 + 11 + len(QUESTION.split()) + 0) / 4
