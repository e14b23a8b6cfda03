"""bench/run_summary.py turns a run's metrics.jsonl into the tables of docs/results.md: check it on a written file."""

from __future__ import annotations

import json
from pathlib import Path

from bench.run_summary import markdown, read_metrics, reward_rows, step_times


def _write_run(path: Path, steps: int) -> None:
    lines = [
        {
            "step": 0,
            "eval/accuracy_strict": 0.0,
            "eval/accuracy_lenient": 0.1,
            "eval/reward_mean": 0.3,
            "eval/size": 200,
        }
    ]
    for step in range(1, steps + 1):
        lines.append(
            {
                "step": step,
                "rewards/mean": float(step),
                "rewards/mark/mean": step / 10,
                "rewards/zero_std_frac": 0.5,
                "rollout/tokens_mean": 100.0,
                "rollout/stopped_frac": 0.25,
                "time/step": 60.0 + step,
                "time/rollout": 10.0,
                "time/reward": 0.01,
                "time/train": 45.0,
                "time/sync": 1.0,
                "faults/rollout_restarts": 0,
                "train/skipped_steps": 0,
            }
        )
    lines.append(
        {
            "step": steps,
            "eval/accuracy_strict": 0.05,
            "eval/accuracy_lenient": 0.2,
            "eval/reward_mean": 1.5,
            "eval/size": 200,
        }
    )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_first_and_last_five_steps_and_evals(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=12)
    steps, evals = read_metrics(metrics)
    assert [e["step"] for e in evals] == [0, 12]
    rows = {name: (first, last) for name, first, last in reward_rows(steps)}
    assert rows["rewards/mean"] == (3.0, 10.0)  # mean of 1..5 and of 8..12
    assert rows["rewards/mark/mean"] == (0.3, 1.0)
    text = markdown(metrics)
    assert "| `rewards/mean` | 3.000 | 10.000 | +7.000 |" in text
    assert "| `eval/accuracy_strict` | 0.000 | 0.050 |" in text
    assert "| `time/step` | 66.5 |" in text  # median of 61..72
    assert "Faults during the run: none" in text


def test_step_times_of_a_short_run(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    _write_run(metrics, steps=3)
    lines = step_times(metrics).splitlines()
    assert lines[2] == "| 1 | 61.00 | 10.00 | 0.01 | 45.00 | 1.00 |"
    assert lines[-1] == "| median | 62.00 | 10.00 | 0.01 | 45.00 | 1.00 |"
