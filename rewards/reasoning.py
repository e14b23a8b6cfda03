"""Is there reasoning in the `<think>` block? A check for the format-only shortcut a GRPO policy can learn.

The 60-step run of docs/results.md collected 1.5 of 3.5 reward points by writing `...` (copied from the
system prompt's format line) inside `<think>` and guessing a number. The rewards cannot see that; this module can,
from the scored text alone (`data.response_prefix` + completion), so it works on any `rollouts.jsonl`.

A `<think>` block is **trivial** when any of these holds (checked in this order):

- **missing or empty**: no `<think>` tag, or nothing but whitespace inside it;
- **placeholder**: fewer than `MIN_REASONING_WORDS` (3) words that hold a letter or a digit, e.g. `...`, `…`,
  `---`, `42`, `reasoning here`; a real step such as `3 + 5 = 8` has three;
- **copy of the question**: at least `COPY_OVERLAP` (90%) of the block's words, counted with repetition,
  occur in the question (words: lower-cased runs of letters and digits), i.e. the block restates the question and
  computes nothing new. `48 / 2 = 24` after "48 clips ... half as many" is not a copy: `2` and `24` are new.

The block is the text after the first `<think>` up to the first `</think>`; a completion cut off before
`</think>` is read up to its first `<answer>` or its end. Reasoning length is counted in whitespace-separated
words of that block (no tokenizer, so the count is the same for any model and for the logs).

    >>> is_trivial_think("<think>\\n...\\n</think>\\n<answer>\\n7\\n</answer>", "What is 3 + 4?")
    True
    >>> is_trivial_think("<think>\\n3 + 4 = 7\\n</think>\\n<answer>\\n7\\n</answer>", "What is 3 + 4?")
    False

Pure Python, no torch, Ray or vLLM.
"""

from __future__ import annotations

import re

MIN_REASONING_WORDS = 3
COPY_OVERLAP = 0.9

_WORD = re.compile(r"[a-z0-9]+")


def think_block(text: str) -> str | None:
    """The stripped text inside `<think>` ... `</think>` (see the module docstring); None without `<think>`."""
    start = text.find("<think>")
    if start == -1:
        return None
    body = text[start + len("<think>") :]
    for end_tag in ("</think>", "<answer>"):
        end = body.find(end_tag)
        if end != -1:
            return body[:end].strip()
    return body.strip()


def think_words(text: str) -> int:
    """Whitespace-separated words inside the `<think>` block (0 without one)."""
    block = think_block(text)
    return len(block.split()) if block else 0


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def is_trivial_think(text: str, question: str) -> bool:
    """True when the `<think>` block is missing, empty, a placeholder, or a copy of `question` (module docstring)."""
    block = think_block(text)
    if not block:
        return True
    words = _words(block)
    if len(words) < MIN_REASONING_WORDS:
        return True
    question_words = set(_words(question))
    copied = sum(word in question_words for word in words)
    return copied >= COPY_OVERLAP * len(words)


def reasoning_metrics(texts: list[str], questions: list[str], prefix: str) -> dict[str, float]:
    """`<prefix>trivial_think_frac` and `<prefix>think_words_mean` over scored texts and their questions
    (`rollout/` for a training step's completions, `eval/` for greedy eval answers)."""
    pairs = list(zip(texts, questions, strict=True))
    return {
        f"{prefix}trivial_think_frac": sum(is_trivial_think(t, q) for t, q in pairs) / len(pairs),
        f"{prefix}think_words_mean": sum(think_words(t) for t in texts) / len(texts),
    }
