"""GSM8K problems, the chat prompt, and which prompts a step trains on.

`data.source` is a hub id (loaded with `datasets.load_dataset(source, "main")`) or a local folder holding
`train.jsonl` and `test.jsonl` (loaded with the `json` builder). Each row becomes a `Problem` whose `gold` is
the text after `####`. A malformed row is an error naming the file and the row, raised before training starts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewards.reward_functions import extract_final_answer

# The format every reward function checks; the model sees it before every question.
SYSTEM_PROMPT = (
    "You are a careful math tutor. Think step by step, then give the final number.\n"
    "Respond in exactly this format:\n"
    "<think>\n...\n</think>\n<answer>\n...\n</answer>"
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


def _load_rows(source: str, split: str) -> tuple[list[dict[str, Any]], str]:
    import datasets  # heavy; only the driver needs it

    if is_local_source(source):
        path = Path(source).expanduser() / f"{split}.jsonl"
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        if not path.read_text().strip():
            raise DataError(f"{path}: file is empty")
        dataset = datasets.load_dataset("json", data_files=str(path), split="train")
        return list(dataset), str(path)
    dataset = datasets.load_dataset(source, "main", split=split)
    return list(dataset), f"{source}[{split}]"


def load_problems(source: str, split: str) -> list[Problem]:
    """All rows of one split (`train` or `test`), validated."""
    rows, origin = _load_rows(source, split)
    if not rows:
        raise DataError(f"{origin}: no rows")
    problems = []
    for index, row in enumerate(rows):
        where = f"{origin} row {index + 1}"
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


def build_prompt(tokenizer: Any, question: str) -> str:
    """The chat-templated prompt text, ending where the assistant's turn begins."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def step_problem_indices(num_rows: int, prompts_per_step: int, seed: int, step: int) -> list[int]:
    """Rows that step `step` (1-based) trains on: consecutive slices of one shuffled pass per epoch.

    A pure function of (seed, step), so a resumed run continues the exact sequence with no saved cursor.
    """
    if prompts_per_step > num_rows:
        raise DataError(f"data.prompts_per_step={prompts_per_step} exceeds the {num_rows} training rows")
    start = (step - 1) * prompts_per_step
    indices: list[int] = []
    while len(indices) < prompts_per_step:
        epoch, offset = divmod(start + len(indices), num_rows)
        order = list(range(num_rows))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        indices.extend(order[offset : offset + prompts_per_step - len(indices)])
    return indices


def eval_problem_indices(num_rows: int, eval_size: int, seed: int) -> list[int]:
    """A fixed subset of the test split, the same at every eval of a run."""
    order = list(range(num_rows))
    random.Random(seed).shuffle(order)
    return sorted(order[: min(eval_size, num_rows)])
