"""GSM8K problems, the chat prompt, and which prompts a step trains on.

`data.source` is a hub id (loaded with `datasets.load_dataset(source, "main")`) or a local folder holding
`train.jsonl` and `test.jsonl` (loaded with the `json` builder). Each row becomes a `Problem` whose `gold` is
the text after `####`. A malformed row is an error naming the file and the row, raised before training starts.

Where an error points into a local JSON-lines file it gives the file's 1-based line number (`line N`), blank lines
counted. A hub split, or a local file whose rows do not map one to one onto its non-blank lines (a JSON array, or
several objects on one line), is reported by 1-based row number instead (`row N`, blank lines not counted).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.reward_functions import extract_final_answer

# The format every reward function checks, shown by a worked example and never by a placeholder: the old
# "<think>\n...\n</think>" format line was copied literally by the 60-step run's policy (docs/results.md section 1).
# The example has two steps so that "reasoning" visibly means writing out calculations. Chosen with
# bench/prompt_probe.py over the old prompt and two other candidates: at step 0 it had the most strict-format
# samples (0.312 vs 0.070 for the old prompt) and the fewest trivial <think> blocks (0.016 vs 0.141);
# docs/results/prompt_probe.txt.
SYSTEM_PROMPT = (
    "You are a careful math tutor. Think step by step inside <think> </think>, writing out each calculation, "
    "then write only the final number inside <answer> </answer>, exactly as in this example.\n"
    "Question: Mia buys 4 pens at $2 each and pays with a $10 bill. How much change does she get?\n"
    "<think>\nThe pens cost 4 * 2 = 8 dollars. Her change is 10 - 8 = 2 dollars.\n</think>\n<answer>\n2\n</answer>"
)


class DataError(ValueError):
    """A dataset that cannot be trained on; the message names the file (or hub split) and the row."""


@dataclass(frozen=True)
class Problem:
    index: int
    """Row number within its split, 0-based."""
    question: str
    gold: str
    """The gold answer: the text after `####` in the dataset's answer field."""


def is_local_source(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().exists()


# What JSON (and so pyarrow's reader, which skips lines holding only these) counts as whitespace.
_JSON_WHITESPACE = " \t\r\n"


def _content_line_numbers(text: str) -> list[int]:
    """1-based numbers of the lines that are not blank: the lines `datasets` turns into rows."""
    return [number for number, line in enumerate(text.split("\n"), start=1) if line.strip(_JSON_WHITESPACE)]


def _unreadable_json(path: Path, text: str, err: Exception) -> DataError:
    """The error for a file `datasets` could not parse, pointing at the first line that is not a JSON object."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(_JSON_WHITESPACE):
            continue  # `datasets` skips blank lines too
        try:
            value = json.loads(line)
        except ValueError as bad:
            return DataError(f"{path} line {number}: not valid JSON ({bad})")
        if not isinstance(value, dict):
            return DataError(f"{path} line {number}: not a JSON object")
    return DataError(f"{path}: cannot be read as JSON lines ({err.__cause__ or err})")


def _load_rows(source: str, split: str) -> tuple[list[dict[str, Any]], str, list[int] | None]:
    """The rows, where they came from, and each row's file line number when that is known (else None)."""
    import datasets  # heavy; only the driver needs it
    from datasets.exceptions import DatasetGenerationError

    if is_local_source(source):
        path = Path(source).expanduser() / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            text = path.read_text(encoding="utf-8-sig")  # `datasets` skips a leading BOM too
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err})") from None
        if not text.strip():
            raise DataError(f"{path}: file is empty")
        try:
            dataset = datasets.load_dataset("json", data_files=str(path), split="train")
        except DatasetGenerationError as err:  # what `datasets` raises for any JSON it cannot parse
            raise _unreadable_json(path, text, err) from err
        rows = list(dataset)
        line_numbers = _content_line_numbers(text)
        one_row_per_line = len(line_numbers) == len(rows) and not text.lstrip(_JSON_WHITESPACE).startswith("[")
        return rows, str(path), line_numbers if one_row_per_line else None
    dataset = datasets.load_dataset(source, "main", split=split)
    return list(dataset), f"{source}[{split}]", None


def load_problems(source: str, split: str) -> list[Problem]:
    """All rows of one split (`train` or `test`), validated."""
    rows, origin, line_numbers = _load_rows(source, split)
    if not rows:
        raise DataError(f"{origin}: no rows")
    problems = []
    for index, row in enumerate(rows):
        where = f"{origin} line {line_numbers[index]}" if line_numbers else f"{origin} row {index + 1}"
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: empty or missing 'question'")
        if not isinstance(answer, str) or "####" not in answer:
            raise DataError(f"{where}: 'answer' has no '####' before the final answer")
        gold = extract_final_answer(answer)
        if not gold:
            raise DataError(f"{where}: nothing after '####'")
        problems.append(Problem(index=index, question=question.strip(), gold=gold))
    return problems


def build_prompt(tokenizer: Any, question: str, response_prefix: str = "", system_prompt: str = SYSTEM_PROMPT) -> str:
    """The chat-templated prompt text, ending where the assistant's turn begins, then `response_prefix`.

    The prefix (`data.response_prefix`, e.g. "<think>\\n") is the start of the model's answer written for it; the
    rewards score `response_prefix + completion` (see `response_text`), so the format checks see the whole answer.
    `system_prompt` is for comparing prompts (bench/prompt_probe.py); training always uses `SYSTEM_PROMPT`.
    """
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + response_prefix


def response_text(response_prefix: str, completion: str) -> str:
    """The whole assistant answer the rewards score: the prefix the prompt ended with, then what was sampled."""
    return response_prefix + completion


def step_problem_indices(num_rows: int, prompts_per_step: int, seed: int, step: int) -> list[int]:
    """Rows that step `step` (1-based) trains on: consecutive slices of one shuffle of the rows per epoch.

    An epoch is `num_rows // prompts_per_step` steps. Each epoch shuffles all rows anew (seeded by `seed` and the
    epoch) and its step `s` (0-based) takes slice `[s * B, (s + 1) * B)` of that shuffle, B = `prompts_per_step`.
    So the rows of a step are always distinct and no row repeats within an epoch; when B does not divide
    `num_rows`, the last `num_rows % B` rows of each shuffle sit out that epoch (a different few each epoch), and
    when it does, every epoch covers every row exactly once.

    A pure function of (seed, step), so a resumed run continues the exact sequence with no saved cursor.
    """
    if step < 1:
        raise ValueError(f"step={step}: steps are numbered from 1")
    if prompts_per_step < 1:
        raise ValueError(f"prompts_per_step={prompts_per_step}: must be at least 1")
    if prompts_per_step > num_rows:
        raise DataError(f"data.prompts_per_step={prompts_per_step} exceeds the {num_rows} training rows")
    epoch, step_in_epoch = divmod(step - 1, num_rows // prompts_per_step)
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    start = step_in_epoch * prompts_per_step
    return order[start : start + prompts_per_step]


def refill_problem_indices(num_rows: int, count: int, seed: int, step: int, round_: int, taken: list[int]) -> list[int]:
    """`count` fresh rows for sampling round `round_` (>= 1) of step `step`, none of them in `taken` (the rows the
    step drew before). A pure function of its arguments, so dynamic sampling needs no saved cursor either."""
    if round_ < 1:
        raise ValueError(f"round_={round_}: round 0 is the step's own rows (step_problem_indices)")
    free = sorted(set(range(num_rows)) - set(taken))
    if count > len(free):
        raise DataError(f"step {step} round {round_} needs {count} fresh rows, only {len(free)} are left")
    return random.Random(seed * 1_000_003 + step * 10_007 + round_).sample(free, count)


def eval_problem_indices(num_rows: int, eval_size: int, seed: int) -> list[int]:
    """A fixed subset of the test split, the same at every eval of a run."""
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[: min(eval_size, num_rows)])
