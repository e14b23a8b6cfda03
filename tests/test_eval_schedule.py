"""The eval schedule through `cluster/launch.py` on the tiny model: the subset every `eval_every` steps, the larger
final set (and pass@k on the subset) at step 0 and at the end, the eval answers file, and the per-step
trivial-reasoning metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cluster.step import pass_at_k_record
from rewards.reasoning import reasoning_metrics
from tests.conftest import run_launch, tiny_run_overrides

EVAL_SIZE, FINAL_EVAL_SIZE, PASS_K = 4, 6, 2

STRICT = {"correctness": 2.0, "digit": 0.5, "hard_format": 0.5, "mark": 0.5, "total": 3.5}
LOOSE = {"correctness": 2.0, "digit": 0.5, "hard_format": 0.0, "mark": 0.25, "total": 2.75}  # right, wrong format
WRONG = {"correctness": 0.0, "digit": 0.5, "hard_format": 0.5, "mark": 0.5, "total": 1.5}
RIGHT = "<think>\n3 + 4 = 7\n</think>\n<answer>\n7\n</answer>"
LOOSE_TEXT = "<think>\n3 + 4 = 7\n<answer>\n7 apples\n</answer>"
WRONG_TEXT = "<think>\n3 + 4 = 8\n</think>\n<answer>\n8\n</answer>"


def test_pass_at_k_counts_questions_with_a_correct_sample() -> None:
    # k = 2, three questions with gold 7: one strict answer; none; a loose and a strict one.
    texts = [RIGHT, WRONG_TEXT, WRONG_TEXT, WRONG_TEXT, LOOSE_TEXT, RIGHT]
    scores = [STRICT, WRONG, WRONG, WRONG, LOOSE, STRICT]
    record = pass_at_k_record(texts, ["7"] * 6, scores, k=2)
    assert record == {
        "eval/pass_at_k": pytest.approx(2 / 3),
        "eval/pass_at_k_lenient": pytest.approx(2 / 3),
        "eval/pass_k": 2,
    }
    # A right answer in the wrong format passes leniently only; without the built-in functions there is no strict.
    assert pass_at_k_record([LOOSE_TEXT, WRONG_TEXT], ["7", "7"], [LOOSE, WRONG], k=2) == {
        "eval/pass_at_k": 0.0,
        "eval/pass_at_k_lenient": 1.0,
        "eval/pass_k": 2,
    }
    custom = [{"letters": 0.5, "total": 0.5}] * 2
    assert set(pass_at_k_record([RIGHT, RIGHT], ["7", "7"], custom, k=2)) == {"eval/pass_at_k_lenient", "eval/pass_k"}
    with pytest.raises(ValueError, match="not k=2 samples per question"):
        pass_at_k_record([RIGHT] * 3, ["7"] * 3, [STRICT, WRONG, STRICT], k=2)


def test_subset_every_step_final_set_and_pass_at_k_at_the_ends(tiny_model_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_launch(
        tiny_run_overrides(
            tiny_model_dir,
            run_dir,
            "trainer.total_steps=2",
            "trainer.eval_every=1",
            f"trainer.eval_size={EVAL_SIZE}",
            f"trainer.final_eval_size={FINAL_EVAL_SIZE}",
            f"trainer.eval_pass_k={PASS_K}",
        )
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/accuracy_strict" in r}
    assert sorted(evals) == [0, 1, 2]
    for step, record in evals.items():
        assert record["eval/size"] == EVAL_SIZE
        assert 0 <= record["eval/trivial_think_frac"] <= 1 and record["eval/think_words_mean"] >= 0
        assert record["time/eval"] > 0
        final_keys = {k for k in record if k.startswith("eval_final/")}
        if step == 1:  # an eval_every eval: the subset only
            assert not final_keys
            continue
        assert record["eval_final/size"] == FINAL_EVAL_SIZE
        assert record["eval/pass_k"] == PASS_K  # pass@k on the subset
        # a share of the EVAL_SIZE questions (greedy can be right where every sample is wrong: no order)
        passed = record["eval/pass_at_k"] * EVAL_SIZE
        assert 0 <= passed <= EVAL_SIZE and abs(passed - round(passed)) < 1e-9
        assert 0 <= record["eval/pass_at_k_lenient"] <= 1
        assert {
            "eval_final/accuracy_lenient",
            "eval_final/reward_mean",
            "eval_final/trivial_think_frac",
            "eval_final/think_words_mean",
        } <= final_keys

    # Every greedy answer is in eval_answers.jsonl: the final set at the ends, the subset in between.
    answers = [json.loads(line) for line in (run_dir / "eval_answers.jsonl").read_text().splitlines()]
    per_step = {step: [a for a in answers if a["step"] == step] for step in evals}
    sizes = {step: len(lines) for step, lines in per_step.items()}
    assert sizes == {0: FINAL_EVAL_SIZE, 1: EVAL_SIZE, 2: FINAL_EVAL_SIZE}
    assert {a["test_index"] for a in per_step[1]} < {a["test_index"] for a in per_step[0]}
    for step, lines in per_step.items():
        mean = sum(a["rewards"]["total"] for a in lines) / len(lines)
        assert evals[step]["eval_final/reward_mean" if step != 1 else "eval/reward_mean"] == pytest.approx(mean)

    # The step's trivial-reasoning metrics are those of its rollouts.jsonl lines.
    lines = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    for record in (r for r in records if "rewards/mean" in r):
        own = [line for line in lines if line["step"] == record["step"]]
        expected = reasoning_metrics([x["completion"] for x in own], [x["question"] for x in own], "rollout/")
        assert {k: record[k] for k in expected} == expected
