"""Tests for cluster.data: the real GSM8K files, malformed rows, the chat prompt and the per-step row choice.

Gold answers are recomputed here straight from the raw JSON lines, independently of the code under test.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets.exceptions import DatasetGenerationError

from cluster.data import (
    SYSTEM_PROMPT,
    DataError,
    Problem,
    build_prompt,
    eval_problem_indices,
    load_problems,
    refill_problem_indices,
    response_text,
    step_problem_indices,
)
from rewards.reasoning import is_trivial_think
from rewards.reward_functions import extract_answer, normalize_number, score

NUMBER = re.compile(r"-?\d+(\.\d+)?")
GOOD_ROW = {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?", "answer": "3+4=7\n#### 7"}


# --- the real GSM8K ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 7473), ("test", 1319)])
def test_real_gsm8k_loads_with_independent_golds(gsm8k_dir: Path, split: str, count: int) -> None:
    problems = load_problems(str(gsm8k_dir), split)
    raw = [json.loads(line) for line in (gsm8k_dir / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    assert len(problems) == len(raw) == count
    for row_number, (problem, row) in enumerate(zip(problems, raw, strict=True)):
        assert isinstance(problem, Problem)
        assert problem.index == row_number
        assert problem.question == row["question"].strip()
        expected_gold = row["answer"].split("####")[-1].strip()
        assert problem.gold == expected_gold
        normalized = normalize_number(problem.gold)
        assert NUMBER.fullmatch(normalized), (row_number, problem.gold)
        float(normalized)


# --- malformed files ---------------------------------------------------------------------------------------------


def _write_split(folder: Path, split: str, rows: list[dict[str, object]]) -> Path:
    path = folder / f"{split}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# (bad row placed third in the file, words the message must contain)
BAD_ROWS = [
    pytest.param({"question": "How many?", "answer": "It is 7."}, "####", id="no-hashes"),
    pytest.param({"question": "   ", "answer": "#### 7"}, "question", id="blank-question"),
    pytest.param({"question": "", "answer": "#### 7"}, "question", id="empty-question"),
    pytest.param({"answer": "#### 7"}, "question", id="missing-question-key"),
    pytest.param({"question": "How many?", "answer": "3+4=7\n####   "}, "nothing after", id="nothing-after-hashes"),
    pytest.param({"question": "How many?"}, "####", id="missing-answer-key"),
]


@pytest.mark.parametrize(("bad_row", "words"), BAD_ROWS)
@pytest.mark.parametrize("split", ["train", "test"])
def test_malformed_row_names_file_and_row(tmp_path: Path, split: str, bad_row: dict[str, object], words: str) -> None:
    path = _write_split(tmp_path, split, [GOOD_ROW, GOOD_ROW, bad_row, GOOD_ROW])
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), split)
    message = str(info.value)
    assert str(path) in message
    assert "line 3" in message
    assert words in message


def test_malformed_row_names_file_line_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = json.dumps(GOOD_ROW)
    path.write_text(f"{good}\n\n{good}\n   \n\n{json.dumps({'question': 'How many?'})}\n{good}\n")
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "train")
    assert f"{path} line 6:" in str(info.value)  # the file's line, though it is the third row `datasets` reads


def test_rows_not_one_per_line_fall_back_to_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("[" + ", ".join(json.dumps(row) for row in (GOOD_ROW, GOOD_ROW, {"question": "q"})) + "]\n")
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "train")
    assert f"{path} row 3:" in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "  \n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "train")
    assert str(path) in str(info.value)
    assert "empty" in str(info.value)


@pytest.mark.parametrize(("present", "missing"), [("train", "test"), ("test", "train")])
def test_missing_split_file(tmp_path: Path, present: str, missing: str) -> None:
    _write_split(tmp_path, present, [GOOD_ROW])
    assert len(load_problems(str(tmp_path), present)) == 1
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), missing)
    assert str(tmp_path / f"{missing}.jsonl") in str(info.value)
    assert "not found" in str(info.value)


def test_small_local_folder_loads(tmp_path: Path) -> None:
    rows = [GOOD_ROW, {"question": "  What is 1,000 + 234?\n", "answer": "1000+234=1234\n#### 1,234"}]
    _write_split(tmp_path, "train", rows)
    problems = load_problems(str(tmp_path), "train")
    assert problems == [
        Problem(index=0, question=GOOD_ROW["question"], gold="7"),
        Problem(index=1, question="What is 1,000 + 234?", gold="1,234"),
    ]


def test_invalid_json_line_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n" + '{"question": "unterminated\n')
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "train")
    assert f"{path} line 2:" in str(info.value)
    assert isinstance(info.value.__cause__, DatasetGenerationError)


# (file lines, 1-based line the message must name, words it must contain)
UNREADABLE_FILES = [
    pytest.param(["not json", "GOOD"], 1, "not valid JSON", id="first-line"),
    pytest.param(["GOOD", "", "GOOD", "  ", "{'question': 'single quotes'}", "GOOD"], 5, "not valid JSON", id="blanks"),
    pytest.param(["GOOD", "GOOD trailing", "GOOD"], 2, "not valid JSON", id="trailing-garbage"),
    pytest.param(["GOOD", "[1, 2]"], 2, "not a JSON object", id="array-line"),
    pytest.param(["GOOD", "GOOD", "42"], 3, "not a JSON object", id="number-line"),
]


@pytest.mark.parametrize(("lines", "line_number", "words"), UNREADABLE_FILES)
def test_unreadable_line_names_file_and_line(tmp_path: Path, lines: list[str], line_number: int, words: str) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text("".join(line.replace("GOOD", json.dumps(GOOD_ROW)) + "\n" for line in lines))
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "test")
    assert f"{path} line {line_number}:" in str(info.value)
    assert words in str(info.value)


def test_not_utf8_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(GOOD_ROW).encode() + b'\n{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(DataError) as info:
        load_problems(str(tmp_path), "train")
    assert str(path) in str(info.value)
    assert "UTF-8" in str(info.value)


# --- the prompt --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2_dir: Path):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


# The worked example: a question line, then the answer in the exact layout the rewards check.
EXAMPLE = re.compile(r"Question: (?P<question>[^\n]+)\n(?P<answer><think>\n.*</answer>)", re.DOTALL)


def test_system_prompt_has_no_copyable_placeholder() -> None:
    # The 60-step run's policy copied the old format line's "..." into <think> (docs/results.md section 1).
    assert "..." not in SYSTEM_PROMPT and "…" not in SYSTEM_PROMPT
    assert SYSTEM_PROMPT.count("<think>\n") == 1  # the tags are shown once, inside the example


def test_system_prompt_example_is_in_the_strict_format_and_reasons() -> None:
    example = EXAMPLE.search(SYSTEM_PROMPT)
    assert example is not None and SYSTEM_PROMPT.endswith(example["answer"])
    gold = extract_answer(example["answer"])
    assert gold is not None and NUMBER.fullmatch(gold)
    # The reward functions themselves: full marks, the strict format included.
    assert score(example["answer"], gold) == {
        "correctness": 2.0,
        "digit": 0.5,
        "hard_format": 0.5,
        "mark": 0.5,
        "total": 3.5,
    }
    assert not is_trivial_think(example["answer"], example["question"])


def test_build_prompt_with_smollm2_template(smollm2_tokenizer) -> None:
    question = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"
    prompt = build_prompt(smollm2_tokenizer, question)
    assert isinstance(prompt, str)
    system_at = prompt.index("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>")
    user_at = prompt.index("<|im_start|>user\n" + question + "<|im_end|>")
    assert system_at < user_at
    assert prompt.endswith("<|im_start|>assistant\n")
    assert prompt.count("<|im_start|>assistant") == 1


def test_response_prefix_opens_the_answer_and_is_scored_with_it(smollm2_tokenizer) -> None:
    prompt = build_prompt(smollm2_tokenizer, "What is 2 + 2?", response_prefix="<think>\n")
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    response = response_text("<think>\n", "2 + 2 = 4\n</think>\n<answer>\n4\n</answer>")
    assert score(response, "4") == {"correctness": 2.0, "digit": 0.5, "hard_format": 0.5, "mark": 0.5, "total": 3.5}


# --- which rows a step trains on ---------------------------------------------------------------------------------


def _stream(num_rows: int, batch: int, seed: int, steps: int) -> list[int]:
    return [i for step in range(1, steps + 1) for i in step_problem_indices(num_rows, batch, seed, step)]


def test_step_indices_deterministic() -> None:
    for step in (1, 2, 7, 100, 5000):
        first = step_problem_indices(7473, 8, 3, step)
        assert first == step_problem_indices(7473, 8, 3, step)
        assert len(first) == 8
        assert all(0 <= i < 7473 for i in first)


@pytest.mark.parametrize(("num_rows", "batch"), [(12, 3), (10, 5), (10, 10), (10, 3), (10, 7), (11, 4), (7473, 8)])
def test_step_indices_always_distinct(num_rows: int, batch: int) -> None:
    steps = 5 * num_rows // batch if num_rows < 100 else 50
    for seed in range(5):
        for step in range(1, steps + 1):
            indices = step_problem_indices(num_rows, batch, seed, step)
            assert len(indices) == batch
            assert len(set(indices)) == batch, (seed, step, indices)
            assert all(0 <= i < num_rows for i in indices)


def test_step_straddling_old_epoch_boundary_is_distinct() -> None:
    # The old rule ran one shuffle into the next inside a step: 10 rows, B=3, seed 0, step 4 gave [6, 6, 8].
    assert len(set(step_problem_indices(10, 3, 0, 4))) == 3


@pytest.mark.parametrize(("num_rows", "batch"), [(10, 3), (10, 5), (10, 7), (12, 4), (12, 5), (11, 11)])
def test_no_row_repeats_within_an_epoch(num_rows: int, batch: int) -> None:
    steps_per_epoch = num_rows // batch
    epochs = 8
    stream = _stream(num_rows, batch, seed=1, steps=epochs * steps_per_epoch)
    size = steps_per_epoch * batch
    passes = [stream[e * size : (e + 1) * size] for e in range(epochs)]
    for rows in passes:
        assert len(set(rows)) == size  # the last num_rows % batch rows of the shuffle sit this epoch out
    assert len({tuple(rows) for rows in passes}) > 1  # each epoch is shuffled anew
    assert set(stream) == set(range(num_rows))  # a different few sit out each epoch


@pytest.mark.parametrize(("num_rows", "batch"), [(10, 5), (12, 4), (12, 3), (10, 1), (6, 6)])
def test_every_epoch_covers_every_row_once_when_batch_divides_rows(num_rows: int, batch: int) -> None:
    epochs = 6
    stream = _stream(num_rows, batch, seed=1, steps=epochs * num_rows // batch)
    passes = [stream[e * num_rows : (e + 1) * num_rows] for e in range(epochs)]
    for order in passes:
        assert sorted(order) == list(range(num_rows))
    if num_rows > 1:
        assert len({tuple(order) for order in passes}) > 1  # each epoch is shuffled anew


@pytest.mark.parametrize("step", [0, -1])
def test_step_below_one_is_error(step: int) -> None:
    with pytest.raises(ValueError, match="step"):
        step_problem_indices(10, 3, 0, step)


def test_epoch_of_whole_steps_when_batch_divides_rows() -> None:
    for epoch in range(4):
        rows = step_problem_indices(10, 5, 2, 2 * epoch + 1) + step_problem_indices(10, 5, 2, 2 * epoch + 2)
        assert sorted(rows) == list(range(10))


def test_different_seeds_differ() -> None:
    runs = {seed: _stream(100, 8, seed, steps=5) for seed in range(5)}
    assert len({tuple(run) for run in runs.values()}) == len(runs)
    for seed in range(5):
        assert step_problem_indices(100, 8, seed, 1) != step_problem_indices(100, 8, seed + 1, 1)


def test_batch_equal_to_rows_is_a_permutation() -> None:
    for step in range(1, 5):
        assert sorted(step_problem_indices(6, 6, 0, step)) == list(range(6))


def test_batch_larger_than_rows_is_error() -> None:
    with pytest.raises(DataError) as info:
        step_problem_indices(3, 4, 0, 1)
    assert "4" in str(info.value) and "3" in str(info.value)


# --- the eval subset ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_rows", "eval_size", "expected"), [(1319, 16, 16), (1319, 50, 50), (10, 50, 10)])
def test_eval_indices_fixed_and_sized(num_rows: int, eval_size: int, expected: int) -> None:
    indices = eval_problem_indices(num_rows, eval_size, seed=0)
    assert indices == eval_problem_indices(num_rows, eval_size, seed=0)
    assert len(indices) == expected
    assert len(set(indices)) == expected
    assert indices == sorted(indices)
    assert all(0 <= i < num_rows for i in indices)


def test_eval_subset_is_inside_every_larger_eval_set() -> None:
    # trainer.eval_size's subset is read from the final eval's answers (cluster/trainer.py::evaluate).
    subset = set(eval_problem_indices(1319, 500, seed=0))
    assert subset < set(eval_problem_indices(1319, 800, seed=0)) < set(eval_problem_indices(1319, 1319, seed=0))


def test_build_prompt_takes_another_system_prompt(smollm2_tokenizer) -> None:
    prompt = build_prompt(smollm2_tokenizer, "What is 2 + 2?", "<think>\n", system_prompt="Be brief.")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt and SYSTEM_PROMPT not in prompt


def test_eval_indices_zero_and_seeds() -> None:
    assert eval_problem_indices(1319, 0, seed=0) == []
    assert eval_problem_indices(1319, 16, seed=0) != eval_problem_indices(1319, 16, seed=1)


def test_refill_rows_are_fresh_distinct_and_a_pure_function() -> None:
    taken = step_problem_indices(100, 8, 3, 5)
    first = refill_problem_indices(100, 6, 3, 5, 1, taken)
    assert first == refill_problem_indices(100, 6, 3, 5, 1, taken)
    assert len(set(first)) == 6 and not set(first) & set(taken)
    second = refill_problem_indices(100, 6, 3, 5, 2, taken + first)
    assert not set(second) & set(taken + first)
    assert refill_problem_indices(100, 6, 3, 6, 1, taken) != first  # another step, other rows
    with pytest.raises(DataError, match="only 2 are left"):
        refill_problem_indices(10, 3, 0, 1, 1, list(range(8)))
    with pytest.raises(ValueError, match="round 0"):
        refill_problem_indices(10, 1, 0, 1, 0, [])
