"""Test-only reward functions for full training runs (imported by path: `tests.train_rewards:<name>`)."""


def letter_a_share(completions: list[str], answers: list[str]) -> list[float]:
    """Share of characters that are the letter 'a': a random tiny model samples such tokens often enough that
    GRPO can raise their probability within a few steps, which proves the sign and plumbing of the loop."""
    return [completion.count("a") / max(1, len(completion)) for completion in completions]


def constant_one(completions: list[str], answers: list[str]) -> list[float]:
    """The same reward for everything: every group has zero spread, so no step has a learning signal."""
    return [1.0 for _ in completions]


def length_divisible_by_3(completions: list[str], answers: list[str]) -> list[float]:
    """1 for a third of random texts: some groups of four all score the same and some do not, which is what
    dynamic sampling needs to act on."""
    return [float(len(completion) % 3 == 0) for completion in completions]
