"""Custom reward functions as a user writes them, and eval with any reward functions.

A module outside the repo on the driver's PYTHONPATH (`module:function`) and a plain file (`path/to/file.py:function`)
must reach the reward workers of every node: the actors' PYTHONPATH is the repo root only, so Ray ships them
(`runtime_env["py_modules"]`). The end-to-end run uses a real 2-node cluster (two raylets on this host,
`tests/ray_nodes.py`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.reward import RewardScorer
from actors.reward_specs import custom_reward_sources, resolve_reward_functions, worker_spec
from cluster.step import eval_record
from tests.conftest import REPO_ROOT, launch_command, tiny_run_overrides
from tests.ray_nodes import RayCluster, ray_env

LENGTH_REWARD = '''
def length_reward(completions, answers):
    """Longer is better, up to 40 characters."""
    return [min(len(c), 40) / 40 for c in completions]
'''
VOWEL_REWARD = """
def vowel_share(completions, answers):
    return [sum(ch in "aeiou" for ch in c) / max(1, len(c)) for c in completions]

NOT_A_FUNCTION = 3
"""


@pytest.fixture
def user_rewards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """`myrewards.py` in a folder on PYTHONPATH (and sys.path, as the driver has it), `scoring/vowels.py` elsewhere;
    both forgotten afterwards (each test writes its own copies)."""
    module_dir, file_dir = tmp_path / "pkgs", tmp_path / "scoring"
    module_dir.mkdir()
    file_dir.mkdir()
    (module_dir / "myrewards.py").write_text(LENGTH_REWARD)
    (file_dir / "vowels.py").write_text(VOWEL_REWARD)
    monkeypatch.syspath_prepend(str(module_dir))
    yield module_dir, file_dir / "vowels.py"
    for name in ("myrewards", "vowels"):
        sys.modules.pop(name, None)


def test_module_and_file_specs_resolve_and_are_shipped(user_rewards: tuple[Path, Path]) -> None:
    module_dir, vowels = user_rewards
    specs = ["correctness", "myrewards:length_reward", f"{vowels}:vowel_share", "tests.train_rewards:constant_one"]
    functions = resolve_reward_functions(specs)
    assert list(functions) == ["correctness", "length_reward", "vowel_share", "constant_one"]
    assert functions["vowel_share"](["aab"], ["1"]) == [2 / 3]
    # Outside the repo: the module's file and the reward file; the repo's own module and built-ins stay behind.
    assert custom_reward_sources(specs) == sorted([str(module_dir / "myrewards.py"), str(vowels)])
    assert [worker_spec(s) for s in specs[1:3]] == ["myrewards:length_reward", "vowels:vowel_share"]
    with RewardScorer(specs[1:3], timeout_s=5.0) as scorer:  # the scoring child loads the file by its path
        [row] = scorer.score_batch(["a" * 20], ["1"]).scores
    assert row == {"length_reward": 0.5, "vowel_share": 1.0, "total": 1.5}


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("myrewards:nope", "no callable 'nope'"),
        ("{vowels}:NOT_A_FUNCTION", "no callable 'NOT_A_FUNCTION'"),
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("{tmp}/missing.py:f", "no file"),
    ],
)
def test_bad_specs_name_themselves(user_rewards: tuple[Path, Path], tmp_path: Path, spec: str, needle: str) -> None:
    spec = spec.format(vowels=user_rewards[1], tmp=tmp_path)
    with pytest.raises(ValueError, match="reward function") as info:
        resolve_reward_functions([spec])
    assert spec in str(info.value) and needle in str(info.value)


def test_a_file_named_like_an_importable_module_is_refused(tmp_path: Path) -> None:
    shadow = tmp_path / "rewards.py"  # would shadow the repo's `rewards` package on a worker
    shadow.write_text(LENGTH_REWARD)
    with pytest.raises(ValueError, match="'rewards' is the name of an importable module"):
        resolve_reward_functions([f"{shadow}:length_reward"])
    import rewards

    assert Path(rewards.__file__).parent == REPO_ROOT / "rewards"  # the repo's package was not replaced


def test_eval_record_with_any_reward_functions() -> None:
    texts = ["<answer>7</answer>", "<answer>about 8 apples</answer>"]
    custom = eval_record(texts, ["7", "8"], [{"length": 1.0, "total": 1.0}, {"length": 0.5, "total": 0.5}])
    assert custom == {
        "eval/length/mean": 0.75,
        "eval/accuracy_lenient": 1.0,
        "eval/reward_mean": 0.75,
        "eval/size": 2,
    }
    scores = [
        {"correctness": 1.0, "hard_format": 0.5, "total": 1.5},
        {"correctness": 0.0, "hard_format": 0.5, "total": 0.5},
    ]
    builtin = eval_record(texts, ["7", "8"], scores)
    assert builtin["eval/accuracy_strict"] == 0.5 and builtin["eval/correctness/mean"] == 0.5


def test_custom_rewards_on_a_two_node_cluster(
    user_rewards: tuple[Path, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The reward workers run on the second node (`reward.resource`): only what Ray ships reaches them there."""
    module_dir, vowels = user_rewards
    with RayCluster(head_cpus=4) as cluster:
        cluster.add_node(cpus=4, resources={"reward_node": 2})
        run_dir = tmp_path / "run"
        functions = f"correctness,myrewards:length_reward,{vowels}:vowel_share"
        overrides = tiny_run_overrides(
            tiny_model_dir,
            run_dir,
            "trainer.total_steps=2",
            "trainer.checkpoint_every=0",
            "trainer.eval_size=4",
            "data.prompts_per_step=2",
            "reward.num_workers=2",
            "reward.resource=reward_node",
            f"reward.functions={functions}",
        )
        # The user's module is importable by the driver through PYTHONPATH only, as for a user.
        driver_env = {**ray_env(), "RAY_ADDRESS": cluster.address, "PYTHONPATH": str(module_dir)}
        proc = subprocess.run(
            launch_command(overrides), cwd=REPO_ROOT, env=driver_env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "rewards/mean" in r]
        evals = [r for r in records if "eval/size" in r]
        assert [r["step"] for r in steps] == [1, 2] and [r["step"] for r in evals] == [0, 2]
        for record in steps:
            assert record["rewards/errors"] == 0
            assert record["rewards/length_reward/mean"] > 0 and "rewards/vowel_share/mean" in record
        for record in evals:
            assert {"eval/length_reward/mean", "eval/vowel_share/mean", "eval/correctness/mean"} <= set(record)
            assert "eval/accuracy_strict" not in record  # hard_format is not configured
        lines = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
        assert all(set(line["rewards"]) == {"correctness", "length_reward", "vowel_share"} for line in lines)
