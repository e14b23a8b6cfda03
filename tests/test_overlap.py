"""Rollout ahead of training (trainer.max_staleness=1) and dynamic sampling, through the real driver (real Ray,
vLLM, gloo learner, tiny model).

One uninterrupted 5-step run is the reference: its run directory passes the on-policy run's checks with every
completion of step s sampled by version max(0, s-2), and dynamic sampling keeps no group without reward spread.
A SIGKILLed-then-resumed run and a run whose rollout engine is SIGKILLed mid-rollout must both equal it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from actors.cores import core_plan
from actors.reward import ScoredBatch
from cluster.overlap import RolloutsAhead, overlap_seconds
from cluster.rollout_stage import StepRollout
from tests.conftest import run_launch, tiny_run_overrides
from tests.test_faults import _run_with_killer
from tests.test_train_e2e import _lines, _step_records, assert_same_run, check_run_directory, sigkill_when

B, N, STEPS = 3, 4, 5


def _version(step: int) -> int:
    """k = 1: step s trains on completions of version s - 2 (steps 1 and 2 on the initial weights)."""
    return max(0, step - 2)


def _overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return tiny_run_overrides(
        model_dir,
        run_dir,
        f"data.prompts_per_step={B}",
        f"rollout.n={N}",
        f"trainer.total_steps={STEPS}",
        "trainer.checkpoint_every=2",
        "trainer.max_staleness=1",
        "rollout.num_workers=2",  # both engines share the rollout's half of the cores, the learner has the other
        "data.dynamic_sampling=true",
        "data.max_sampling_rounds=3",
        "rollout.max_tokens=24",
        "learner.lr=1e-3",
        # Binary: some groups all score the same (dropped), some do not (kept).
        "reward.functions=correctness,tests.train_rewards:length_divisible_by_3",
        *extra,
    )


@pytest.fixture(scope="module")
def async_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("overlap") / "run"
    run_launch(_overrides(tiny_model_dir, run_dir))
    return run_dir


def test_versions_are_bounded_and_the_run_directory_holds(async_run: Path) -> None:
    check_run_directory(async_run, STEPS, _version)
    records = _step_records(async_run)
    assert any(_version(step) < step - 1 for step in records)  # some step trained on an older version
    for step, record in records.items():
        assert record["rollout/staleness_max"] <= 1 and record["rollout/staleness_mean"] == step - 1 - _version(step)
    # The learner trained on each step's kept groups with the engine logprobs corrected (TIS weights logged).
    assert any(record["train/updates"] for record in records.values())
    trained = [r for r in records.values() if r["train/tokens_trained"]]
    assert all(0 < r["train/is_weight_mean"] <= 2.0 and 0 <= r["train/is_truncated_frac"] <= 1 for r in trained)


def test_dynamic_sampling_trains_only_groups_with_spread(async_run: Path) -> None:
    rollouts = _lines(async_run / "rollouts.jsonl")
    records = _step_records(async_run)
    dropped_somewhere = False
    for step, record in records.items():
        groups: dict[int, list[dict]] = {}
        for line in rollouts:
            if line["step"] == step:
                groups.setdefault(line["prompt_index"], []).append(line)
        assert all(len(group) == N for group in groups.values())
        kept = [g for g in groups.values() if g[0]["trained"]]
        dropped = [g for g in groups.values() if not g[0]["trained"]]
        assert all(len({line["total"] for line in g}) > 1 for g in kept)  # no trained group without spread
        assert all(len({line["total"] for line in g}) == 1 for g in dropped)  # kept in the record, not trained
        assert record["rollout/groups_sampled"] == len(groups) and record["rollout/groups_trained"] == len(kept)
        assert len(kept) <= B and (len(kept) == B or record["rollout/sampling_rounds"] == 3)
        assert record["train/rows_trained"] == N * len(kept)
        dropped_somewhere |= bool(dropped)
    assert dropped_somewhere, "no group lacked spread: the run did not exercise dynamic sampling"


def test_sigkill_then_resume_equals_uninterrupted_async_run(
    async_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Killed after step 3 is logged: the step-2 checkpoint holds the rollout collected ahead for step 3."""
    run_dir = tmp_path / "run"
    overrides = _overrides(tiny_model_dir, run_dir)

    def step_3_logged() -> bool:
        path = run_dir / "metrics.jsonl"
        return path.is_file() and any(json.loads(line).get("step") == 3 for line in path.read_text().splitlines())

    sigkill_when(overrides, step_3_logged, "step 3 logged")
    run_launch([*overrides, "trainer.resume=true"])
    assert_same_run(run_dir, async_run, STEPS)


def test_engine_killed_mid_overlapped_rollout_is_replaced(
    async_run: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The engine dies while it samples ahead (the learner trains meanwhile); its replacement is given the version
    the engines held, not the learner's newer one, and the redone prompts come out exactly as in the reference."""
    run_dir = tmp_path / "run"
    overrides = _overrides(tiny_model_dir, run_dir, "sync.transport=collective")
    proc, killed = _run_with_killer(run_dir, overrides, [("ray::RolloutEngine.generate", 2)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert killed, "no rollout engine was caught generating"
    assert _step_records(run_dir)[STEPS]["faults/rollout_restarts"] >= 1
    assert_same_run(run_dir, async_run, STEPS)


# ---- the scheduling and bookkeeping pieces on their own ------------------------------------------------------------


def _rollout(step: int, trained: list[bool] | None = None) -> StepRollout:
    trained = trained if trained is not None else [True]
    return StepRollout(step, [], [], [], ScoredBatch(scores=[]), [0.0] * len(trained), trained, rounds=1)


def test_rollouts_ahead_runs_each_step_once_in_order_and_k_ahead() -> None:
    calls: list[int] = []
    release = threading.Event()

    def collect(step: int) -> StepRollout:
        release.wait(timeout=10)
        calls.append(step)
        return _rollout(step)

    ahead = RolloutsAhead(collect, staleness=2, last_step=5)
    release.set()
    assert ahead.take(1).step == 1 and calls == [1]
    ahead.launch_ahead(1)  # steps 2 and 3 now run while step 1 would train
    assert [r.step for r in ahead.settle()] == [2, 3] and calls == [1, 2, 3]
    assert ahead.take(2).step == 2
    ahead.launch_ahead(2)
    ahead.launch_ahead(2)  # idempotent
    assert [r.step for r in ahead.settle()] == [3, 4]
    for step in (3, 4, 5):
        assert ahead.take(step).step == step
        ahead.launch_ahead(step)  # never past the last step
    assert calls == [1, 2, 3, 4, 5] and ahead.settle() == []
    ahead.close()


def test_rollouts_ahead_resumes_from_what_a_checkpoint_kept() -> None:
    calls: list[int] = []

    def collect(step: int) -> StepRollout:
        calls.append(step)
        return _rollout(step)

    ahead = RolloutsAhead(collect, staleness=1, last_step=10)
    saved = _rollout(5)
    ahead.restore(4, [saved])
    assert ahead.take(5) is saved and calls == []
    ahead.launch_ahead(5)
    assert [r.step for r in ahead.settle()] == [6] and calls == [6]
    ahead.close()


def test_overlap_seconds_is_the_intersection_with_the_window() -> None:
    assert overlap_seconds((10.0, 20.0), [(5.0, 12.0), (12.0, 13.0), (19.0, 30.0), (40.0, 50.0)]) == 4.0
    assert overlap_seconds((10.0, 20.0), []) == 0.0


def test_spread_trained_puts_learner_rows_back_at_their_completions() -> None:
    rollout = _rollout(1, trained=[False, True, True, False, True])
    assert rollout.spread_trained([1.0, 2.0, 3.0]) == [None, 1.0, 2.0, None, 3.0]
    with pytest.raises(ValueError, match="more per-row results"):
        rollout.spread_trained([1.0, 2.0, 3.0, 4.0])


def test_core_plan_gives_learner_and_rollout_their_own_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert core_plan(1, 1, overlap=False) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    plan = core_plan(2, 3, overlap=True)
    assert plan is not None and plan.learner == [[0, 1], [2]]
    assert plan.rollout == [[3], [4], [5]] and plan.engine_cores(4) == [4]  # a replacement takes its slot's cores
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    plan = core_plan(2, 2, overlap=True)  # more actors than cores: they share, never overlap the other phase
    assert plan.learner == [[0], [0]] and plan.rollout == [[1], [1]]
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # a real cluster: Ray's CPU accounting places the actors
    assert core_plan(2, 2, overlap=True) is None
