"""bench/run_summary.py turns a run's metrics.jsonl into the tables of docs/results.md: check it on a written file.

The Wilson intervals in the expected lines are computed by hand (z = 1.95996398, z^2 = 3.84145882):
- 0/200: (0, z^2 / (200 + z^2)) = (0, 3.84145882 / 203.84145882) = (0, 0.01885)
- 10/200: 1 + z^2/n = 1.01920729; center = (0.05 + 0.00960365) / 1.01920729 = 0.05848039;
  half = 1.95996398 * sqrt(0.05 * 0.95 / 200 + 3.84145882 / 160000) / 1.01920729
       = 1.95996398 * 0.01617124 / 1.01920729 = 0.03109770 -> (0.02738, 0.08958)
- 1/200: center = (0.005 + 0.00960365) / 1.01920729 = 0.01432851; half = 1.95996398 * sqrt(0.005 * 0.995 / 200
  + 0.00002401) / 1.01920729 = 1.95996398 * 0.00702306 / 1.01920729 = 0.01350540 -> (0.00082, 0.02783)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.run_summary import (
    answers_side_by_side,
    correctness_difference,
    main,
    markdown,
    read_metrics,
    reward_rows,
    step_times,
)


def _eval(step: int, strict: float, lenient: float, size: int = 200, **extra: Any) -> dict[str, Any]:
    return {
        "step": step,
        "eval/accuracy_strict": strict,
        "eval/accuracy_lenient": lenient,
        "eval/reward_mean": 0.3 + step / 10,
        "eval/size": size,
        **extra,
    }


def _write_run(path: Path, steps: int, evals: list[dict[str, Any]] | None = None) -> None:
    """Steps 1..steps; correctness 0 in the first 20 steps and 0.5 after, trivial think 0.5 then 0.25."""
    if evals is None:
        evals = [_eval(0, 0.0, 0.1), _eval(steps, 0.05, 0.2)]
    lines = [evals[0]]
    for step in range(1, steps + 1):
        lines.append(
            {
                "step": step,
                "rewards/mean": float(step),
                "rewards/correctness/mean": 0.0 if step <= 20 else 0.5,
                "rewards/mark/mean": step / 10,
                "rewards/zero_std_frac": 0.5,
                "rollout/tokens_mean": 100.0,
                "rollout/stopped_frac": 0.25,
                "rollout/trivial_think_frac": 0.5 if step <= 20 else 0.25,
                "rollout/think_words_mean": 40.0,
                "time/step": 60.0 + step,
                "time/rollout": 10.0,
                "time/reward": 0.01,
                "time/train": 45.0,
                "time/sync": 1.0,
                "faults/rollout_restarts": 0,
                "train/skipped_steps": 0,
            }
        )
        lines += [e for e in evals[1:] if e["step"] == step]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_first_and_last_five_steps_and_evals(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=12)
    steps, evals = read_metrics(metrics)
    assert [e["step"] for e in evals] == [0, 12]
    rows = {name: (first, last) for name, first, last in reward_rows(steps)}
    assert rows["rewards/mean"] == (3.0, 10.0)  # mean of 1..5 and of 8..12
    assert rows["rewards/mark/mean"] == (0.3, 1.0)
    assert rows["rollout/trivial_think_frac"] == (0.5, 0.5)
    text = markdown(metrics)
    assert "| `rewards/mean` | 3.000 | 10.000 | +7.000 |" in text
    assert "| `rollout/trivial_think_frac` | 0.500 | 0.500 | +0.000 |" in text
    assert "| `eval/accuracy_strict` | 0.000 [0.000, 0.019] | 0.050 [0.027, 0.090] | no |" in text
    assert "| `eval/accuracy_lenient` | 0.100 [" in text
    assert "| `time/step` | 66.5 |" in text  # median of 61..72
    assert "Faults during the run: none" in text
    assert "bootstrap" not in text  # 12 steps: too short for two 20-step windows


def test_correctness_windows_and_the_bootstrap_difference(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=45)
    steps, _ = read_metrics(metrics)
    # First 20 steps all 0, last 20 all 0.5: every resample gives the same difference.
    assert correctness_difference(steps) == (0.0, 0.5, 0.5, 0.5, 0.5)
    text = markdown(metrics)
    assert "last 20 steps 0.500, difference +0.500, bootstrap 95% interval [+0.500, +0.500]" in text
    assert "| `rollout/trivial_think_frac` | 0.500 | 0.250 | -0.250 |" in text


def _final(strict: float, pass_at_k: float) -> dict[str, float]:
    """What a step-0 or final eval record adds: `eval_final/*` on 200 questions, and pass@4 on the subset."""
    return {
        "eval_final/accuracy_strict": strict,
        "eval_final/accuracy_lenient": strict,
        "eval_final/reward_mean": 0.5,
        "eval_final/size": 200,
        "eval_final/trivial_think_frac": 0.25,
        "eval/pass_at_k": pass_at_k,
        "eval/pass_at_k_lenient": pass_at_k,
        "eval/pass_k": 4,
    }


def test_final_eval_pass_at_k_and_the_subset_curve(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    evals = [
        _eval(0, 0.0, 0.005, **_final(0.005, 0.0)),
        _eval(6, 0.005, 0.01),
        _eval(12, 0.05, 0.05, **_final(0.05, 0.05)),
    ]
    _write_run(metrics, steps=12, evals=evals)
    text = markdown(metrics)
    assert "| `eval_final/accuracy_strict` | 0.005 [0.001, 0.028] | 0.050 [0.027, 0.090] | yes |" in text
    assert "| `eval/pass_at_k` (k = 4) | 0.000 [0.000, 0.019] | 0.050 [0.027, 0.090] | no |" in text
    assert "| `eval/pass_at_k_lenient` (k = 4) | 0.000 [0.000, 0.019] | 0.050 [0.027, 0.090] | no |" in text
    assert "| `eval_final/trivial_think_frac` | 0.250 | 0.250 | |" in text
    assert "| 6 | 0.005 [0.001, 0.028] | 0.010 [" in text  # the subset at every eval step


def test_an_accuracy_that_is_no_count_of_its_questions_is_refused(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=12, evals=[_eval(0, 0.0, 0.1), _eval(12, 0.0523, 0.2)])
    with pytest.raises(SystemExit, match="not a count out of 200"):
        markdown(metrics)


def test_step_times_of_a_short_run(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=3)
    lines = step_times(metrics).splitlines()
    assert lines[2] == "| 1 | 61.00 | 10.00 | 0.01 | 45.00 | 1.00 |"
    assert lines[-1] == "| median | 62.00 | 10.00 | 0.01 | 45.00 | 1.00 |"


def test_sample_keeps_the_ends_and_the_first_test_rows_side_by_side(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_dir.mkdir()
    out.mkdir()
    rollouts = [{"step": step, "completion": f"c{step}"} for step in (1, 2, 3)]
    (run_dir / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rollouts))
    answers = [  # step 0 and 4 answer rows 0..6; step 2 only the subset rows 5 and 6
        {
            "step": step,
            "test_index": row,
            "question": f"q{row}",
            "gold": str(row),
            "completion": f"step {step}\nrow {row} | x",
            "rewards": {"correctness": 2.0 * (step == 4), "total": 2.0 * (step == 4)},
        }
        for step, rows in ((0, range(7)), (2, (5, 6)), (4, range(7)))
        for row in rows
    ]
    (run_dir / "eval_answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    main(["--sample", str(run_dir), str(out)])
    kept = [json.loads(line) for line in (out / "rollouts_sample.jsonl").read_text().splitlines()]
    assert [r["step"] for r in kept] == [1, 3]
    sample = [json.loads(line) for line in (out / "eval_answers_sample.jsonl").read_text().splitlines()]
    assert [(a["test_index"], a["step"]) for a in sample] == [(row, step) for row in range(5) for step in (0, 4)]
    text = answers_side_by_side(out / "eval_answers_sample.jsonl")
    assert text.count("**Test row") == 5 and "| step 0 | step 4 |" in text
    assert "| step 0<br>row 0 \\| x | step 4<br>row 0 \\| x |" in text
    assert "| correctness=0 total=0 | correctness=2 total=2 |" in text


def test_a_sample_needs_two_evals_of_the_first_rows(tmp_path: Path) -> None:
    path = tmp_path / "eval_answers.jsonl"
    one = {"step": 0, "question": "q", "gold": "1", "completion": "c", "rewards": {"total": 0.0}}
    path.write_text("".join(json.dumps({**one, "test_index": row}) + "\n" for row in range(5)))
    with pytest.raises(SystemExit, match="fewer than two evals"):
        answers_side_by_side(path)
