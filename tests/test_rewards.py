"""Tests for rewards.reward_functions; expected scores in the table are worked out by hand."""

import ast
import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import reward_functions
from rewards.reward_functions import (
    MAX_TOTAL_REWARD,
    REWARD_FUNCTIONS,
    correctness_reward,
    digit_reward,
    extract_answer,
    extract_final_answer,
    hard_format_reward,
    mark_reward,
    normalize_number,
    score,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO_ROOT.parent / "shared" / "gsm8k"

PERFECT = "<think>\nreasoning\n</think>\n<answer>\n72\n</answer>"


def _wrap(answer_body: str) -> str:
    """A well-formed completion whose answer block holds ``answer_body``."""
    return f"<think>\nreasoning\n</think>\n<answer>\n{answer_body}\n</answer>"


# (completion, gold, correctness, digit, hard_format, mark)
CASES = [
    pytest.param(PERFECT, "72", 2.0, 0.5, 0.5, 0.5, id="perfect-stopped-at-close-tag"),
    pytest.param(PERFECT + "\n", "72", 2.0, 0.5, 0.5, 0.5, id="perfect-trailing-newline"),
    pytest.param(" answer </answer>\n\n", "24", 0.0, 0.0, 0.0, 0.125, id="bare-close-tag-with-word"),
    pytest.param(_wrap("360,000"), "360000", 2.0, 0.5, 0.5, 0.5, id="comma-in-completion"),
    pytest.param(_wrap("360000"), "360,000", 2.0, 0.5, 0.5, 0.5, id="comma-in-gold"),
    pytest.param(_wrap("1,234,567"), "1234567", 2.0, 0.5, 0.5, 0.5, id="several-commas"),
    pytest.param("<think>\nreasoning\n</think>\n<answer>\n72\n", "72", 0.0, 0.0, 0.0, 0.375, id="cut-off-in-answer"),
    pytest.param("<think>\nLet me compute 8 * 9", "72", 0.0, 0.0, 0.0, 0.125, id="cut-off-in-think"),
    pytest.param(
        "<think>\nr\n</think>\n<answer>\n12\n<answer>\n72\n</answer>",
        "72",
        2.0,
        0.5,
        0.0,
        0.375,
        id="two-open-answer-tags",
    ),
    pytest.param(
        "<think>\nr\n</think>\n<answer>\n72\n</answer>\n<answer>\n13\n</answer>",
        "72",
        2.0,
        0.5,
        0.0,
        0.25,
        id="two-answer-blocks",
    ),
    pytest.param(_wrap("-3"), "-3", 2.0, 0.5, 0.5, 0.5, id="negative"),
    pytest.param(_wrap("3"), "-3", 0.0, 0.5, 0.5, 0.5, id="sign-dropped"),
    pytest.param(_wrap("2.5"), "2.5", 2.0, 0.5, 0.5, 0.5, id="decimal"),
    pytest.param(_wrap("2.50"), "2.5", 2.0, 0.5, 0.5, 0.5, id="decimal-trailing-zero"),
    pytest.param(_wrap("72.0"), "72", 2.0, 0.5, 0.5, 0.5, id="float-equals-int"),
    pytest.param(_wrap("72"), "72.0", 2.0, 0.5, 0.5, 0.5, id="int-equals-float-gold"),
    pytest.param(_wrap("-0.5"), "0.5", 0.0, 0.5, 0.5, 0.5, id="negative-decimal-wrong"),
    pytest.param(_wrap("72."), "72", 2.0, 0.0, 0.5, 0.5, id="trailing-dot-parses-but-not-plain"),
    pytest.param(_wrap("71"), "72", 0.0, 0.5, 0.5, 0.5, id="wrong-number"),
    pytest.param(_wrap("The answer is 72"), "72", 0.0, 0.0, 0.5, 0.5, id="words-before-number"),
    pytest.param(_wrap("72 dollars"), "72", 0.0, 0.0, 0.5, 0.5, id="words-after-number"),
    pytest.param(_wrap("$72"), "72", 0.0, 0.0, 0.5, 0.5, id="dollar-sign"),
    pytest.param(_wrap("72,"), "72", 0.0, 0.0, 0.5, 0.5, id="comma-not-between-digits"),
    pytest.param(_wrap("7 2"), "72", 0.0, 0.0, 0.5, 0.5, id="space-inside-number"),
    pytest.param(_wrap(""), "72", 0.0, 0.0, 0.5, 0.5, id="empty-answer-block"),
    pytest.param(PERFECT + "\nHope this helps!", "72", 2.0, 0.5, 0.0, 0.5, id="text-after-answer-newline"),
    pytest.param(PERFECT + " Done.", "72", 2.0, 0.5, 0.0, 0.375, id="text-after-answer-same-line"),
    pytest.param(PERFECT + "\n\n", "72", 2.0, 0.5, 0.0, 0.5, id="two-trailing-newlines"),
    pytest.param(" " + PERFECT, "72", 2.0, 0.5, 0.0, 0.5, id="leading-space"),
    pytest.param("Sure!\n" + PERFECT, "72", 2.0, 0.5, 0.0, 0.5, id="preamble-before-think"),
    pytest.param("<think>reasoning</think><answer>72</answer>", "72", 2.0, 0.5, 0.0, 0.125, id="no-newlines-at-all"),
    pytest.param("<think>\nr\n</think>\n<answer>72</answer>", "72", 2.0, 0.5, 0.0, 0.375, id="no-newlines-in-answer"),
    pytest.param("<think>\nr</think>\n<answer>\n72\n</answer>", "72", 2.0, 0.5, 0.0, 0.5, id="no-newline-before-close"),
    pytest.param("<think>\nr\n</think><answer>\n72\n</answer>", "72", 2.0, 0.5, 0.0, 0.375, id="no-newline-between"),
    pytest.param("", "72", 0.0, 0.0, 0.0, 0.0, id="empty-completion"),
    pytest.param("72", "72", 0.0, 0.0, 0.0, 0.0, id="bare-number-no-tags"),
    pytest.param("72</answer>", "72", 2.0, 0.5, 0.0, 0.125, id="only-close-tag"),
    pytest.param("<answer>\n72\n</answer>", "72", 2.0, 0.5, 0.0, 0.25, id="no-think-block"),
    pytest.param("<think>\n\n</think>\n<answer>\n72\n</answer>", "72", 2.0, 0.5, 0.5, 0.5, id="empty-think-content"),
    pytest.param("<think>\n" + PERFECT, "72", 2.0, 0.5, 0.0, 0.375, id="think-tag-twice"),
    pytest.param("<answer>\n72\n</answer>\n<think>\nr\n</think>", "72", 2.0, 0.5, 0.0, 0.375, id="blocks-swapped"),
    pytest.param("<THINK>\nr\n</THINK>\n<ANSWER>\n72\n</ANSWER>", "72", 0.0, 0.0, 0.0, 0.0, id="uppercase-tags"),
    pytest.param("<think>\r\nr\r\n</think>\r\n<answer>\r\n72\r\n</answer>", "72", 2.0, 0.5, 0.0, 0.125, id="crlf"),
    pytest.param(
        "<think>\nShe has 1,200 apples.\nShe buys 34 more: 1,234.\n</think>\n<answer>\n1,234\n</answer>",
        "1234",
        2.0,
        0.5,
        0.5,
        0.5,
        id="multiline-reasoning",
    ),
]


@pytest.mark.parametrize(("completion", "gold", "correctness", "digit", "hard_format", "mark"), CASES)
def test_reward_table(
    completion: str, gold: str, correctness: float, digit: float, hard_format: float, mark: float
) -> None:
    assert correctness_reward([completion], [gold]) == [correctness]
    assert digit_reward([completion], [gold]) == [digit]
    assert hard_format_reward([completion], [gold]) == [hard_format]
    assert mark_reward([completion], [gold]) == [mark]
    assert score(completion, gold)["total"] == pytest.approx(correctness + digit + hard_format + mark)


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_batched_call_keeps_order() -> None:
    completions = [PERFECT, "", _wrap("71")]
    answers = ["72", "72", "72"]
    assert correctness_reward(completions, answers) == [2.0, 0.0, 0.0]
    assert digit_reward(completions, answers) == [0.5, 0.0, 0.5]
    assert hard_format_reward(completions, answers) == [0.5, 0.0, 0.5]
    assert mark_reward(completions, answers) == [0.5, 0.0, 0.5]
    assert correctness_reward([], []) == []


@pytest.mark.parametrize("fn", list(REWARD_FUNCTIONS.values()), ids=list(REWARD_FUNCTIONS))
def test_length_mismatch_raises(fn: reward_functions.RewardFunction) -> None:
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        fn([PERFECT, PERFECT], ["72"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("360,000", "360000"),
        ("1,234,567", "1234567"),
        ("  72 \n", "72"),
        ("-1,000.5", "-1000.5"),
        ("72,", "72,"),
        (",72", ",72"),
        ("1, 2", "1, 2"),
        ("a,b", "a,b"),
        ("", ""),
    ],
)
def test_normalize_number(text: str, expected: str) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (" answer </answer>\n\n", "answer"),
        (PERFECT, "72"),
        ("<answer>\n1\n<answer>\n2\n</answer>\n<answer>\n3\n</answer>", "2"),
        ("<answer></answer>", ""),
        ("</answer>", ""),
        ("x <answer> 5 </answer> y", "5"),
        ("<answer> 5 </answer><answer> 6 </answer>", "5"),
        ("", None),
        ("<think>\nr\n</think>\n<answer>\n72\n", None),
        ("<answer>72</ANSWER>", None),
    ],
)
def test_extract_answer(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("answer_text", "expected"),
    [
        ("She pays 2 * 617 = <<2*617=1234>>1,234 dollars.\n#### 1,234", "1,234"),
        ("#### 72", "72"),
        ("The total is 5 - 8 = -3.\n####  -3  \n", "-3"),
    ],
)
def test_extract_final_answer(answer_text: str, expected: str) -> None:
    assert extract_final_answer(answer_text) == expected


def test_extract_final_answer_requires_marker() -> None:
    with pytest.raises(ValueError, match="####"):
        extract_final_answer("The answer is 72.")


def test_score_keys_and_total() -> None:
    result = score(PERFECT, "72")
    assert list(result) == ["correctness", "digit", "hard_format", "mark", "total"]
    assert result == {"correctness": 2.0, "digit": 0.5, "hard_format": 0.5, "mark": 0.5, "total": 3.5}
    assert result["total"] == MAX_TOTAL_REWARD == 3.5
    assert score("", "72") == dict.fromkeys(result, 0.0)


def test_reward_function_registry() -> None:
    assert REWARD_FUNCTIONS == {
        "correctness": correctness_reward,
        "digit": digit_reward,
        "hard_format": hard_format_reward,
        "mark": mark_reward,
    }
    assert list(REWARD_FUNCTIONS) == ["correctness", "digit", "hard_format", "mark"]


def test_module_docstring_example() -> None:
    result = doctest.testmod(reward_functions)
    assert result.attempted > 0
    assert result.failed == 0


def test_module_imports_only_stdlib() -> None:
    tree = ast.parse(Path(reward_functions.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= {"re", "math", "typing", "collections.abc"}


def test_import_pulls_in_no_heavy_dependencies() -> None:
    code = (
        "import sys, rewards.reward_functions\nprint(sorted(m for m in ('torch', 'ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("split", "count"), [("train", 7473), ("test", 1319)])
def test_gsm8k_gold_answers_are_plain_numbers(split: str, count: int) -> None:
    path = GSM8K_DIR / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not available")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) == count
    for line in lines:
        gold = normalize_number(extract_final_answer(json.loads(line)["answer"]))
        assert re.fullmatch(r"-?\d+(\.\d+)?", gold), gold
