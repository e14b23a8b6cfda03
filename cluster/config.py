"""Typed run configuration: one frozen dataclass per section, a YAML file plus dotted `key=value` overrides.

    cfg = load_config("configs/debug.yaml", ["rollout.n=8", "learner.lr=1e-5"])
    cfg.rollout.n  # 8

Every problem (unknown key, wrong type, inconsistent value) raises `ConfigError` naming the key and the value,
before anything heavy is imported; `cluster/launch.py` turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The choices of the learner's variant keys; learner/grpo.py holds the same names (it imports torch, which a config
# check must not wait for; tests/test_config.py checks the two agree).
RATIO_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGG_MODES = ("token_mean", "seq_mean_token_sum", "seq_mean_token_mean")
IS_CORRECTIONS = ("none", "tis")


class ConfigError(ValueError):
    """A bad config value; the message names the key and the value."""

    def __init__(self, key: str, value: object, reason: str) -> None:
        super().__init__(f"config error: {key}={value!r}: {reason}")
        self.key = key


def _require(ok: bool, key: str, value: object, reason: str) -> None:
    if not ok:
        raise ConfigError(key, value, reason)


def _one_of(choices: tuple[str, ...]) -> str:
    return f"must be one of {', '.join(choices)}"


@dataclass(frozen=True)
class ModelConfig:
    path: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    """Hub id, local HF folder, a `.gguf` file, or `pkg:<module>/<file>.gguf` (a file inside an installed package)."""
    cache_dir: str = ".cache/models"
    """Where a GGUF is dequantized to an HF folder once and reused."""

    def __post_init__(self) -> None:
        _require(bool(self.path.strip()), "model.path", self.path, "must not be empty")


@dataclass(frozen=True)
class DataConfig:
    source: str = "openai/gsm8k"
    """Hub id (config `main`) or a local folder holding `train.jsonl` and `test.jsonl`."""
    prompts_per_step: int = 8
    """B: prompts sampled per training step."""
    response_prefix: str = ""
    """Text the assistant's turn starts with, written into the prompt (e.g. "<think>\\n"); scored as part of it."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal (no signal) and sample fresh prompts in their place (DAPO)."""
    max_sampling_rounds: int = 3
    """With dynamic sampling: rounds of sampling per step at most; a step trains on fewer than B groups only when
    the rounds ran out."""

    def __post_init__(self) -> None:
        _require(self.prompts_per_step >= 1, "data.prompts_per_step", self.prompts_per_step, "must be >= 1")
        _require(self.max_sampling_rounds >= 1, "data.max_sampling_rounds", self.max_sampling_rounds, "must be >= 1")
        looks_local = self.source.startswith((".", "/", "~")) or Path(self.source).expanduser().exists()
        if looks_local:
            folder = Path(self.source).expanduser()
            _require(folder.is_dir(), "data.source", self.source, "local data folder does not exist")
            for split in ("train.jsonl", "test.jsonl"):
                _require((folder / split).is_file(), "data.source", self.source, f"folder has no {split}")


@dataclass(frozen=True)
class RolloutConfig:
    num_workers: int = 1
    """R: rollout actors, each owning one vLLM engine."""
    n: int = 4
    """Completions per prompt (the GRPO group size)."""
    max_tokens: int = 200
    """Completion length limit in tokens."""
    temperature: float = 1.0
    """Sampling temperature; the learner scores completions at the same temperature."""
    top_p: float = 1.0
    """Must be 1: the learner does not implement nucleus truncation, so its logprobs would not be the sampler's."""
    cpus_per_worker: int = 0
    """CPU cores (torch threads) per engine; 0: on a local cluster the machine's cores / num_workers, else 1.
    Changing it (or num_workers) changes the sampled tokens."""
    max_model_len: int = 1024
    """Prompt plus completion tokens the engine accepts."""
    dtype: str = "bfloat16"
    """Engine weight dtype."""
    kv_cache_gib: int = 1
    """KV cache per engine on CPU (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.3
    """Share of GPU memory per engine (GPU only)."""
    gpus_per_worker: float = 0.0
    """GPUs each rollout actor asks Ray for (0 on CPU; a fraction shares a GPU with the learner)."""
    max_workers: int = 0
    """Most rollout engines at once; above num_workers the pool is elastic: engines are added at step boundaries
    while the cluster has room, and the run goes on with fewer (down to 1) when engines are lost. 0: num_workers."""
    resource: str = ""
    """A custom Ray node resource each engine asks 0.001 of (e.g. `rollout_node`), to keep engines on the nodes
    that offer it; empty: any node."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "rollout.num_workers", self.num_workers, "must be >= 1")
        _require(self.n >= 2, "rollout.n", self.n, "group advantages need at least 2 samples per prompt")
        _require(self.max_tokens >= 1, "rollout.max_tokens", self.max_tokens, "must be >= 1")
        _require(self.temperature > 0, "rollout.temperature", self.temperature, "must be > 0")
        _require(
            self.top_p == 1.0,
            "rollout.top_p",
            self.top_p,
            "must be 1.0: the learner scores the full softmax at rollout.temperature, so a truncated (top-p) "
            "sampler's logprobs would not be the ones it trains on",
        )
        _require(self.cpus_per_worker >= 0, "rollout.cpus_per_worker", self.cpus_per_worker, "must be >= 0")
        _require(
            self.max_model_len > self.max_tokens,
            "rollout.max_model_len",
            self.max_model_len,
            f"must exceed rollout.max_tokens={self.max_tokens}",
        )
        _require(
            self.dtype in ("bfloat16", "float16", "float32"),
            "rollout.dtype",
            self.dtype,
            "must be bfloat16, float16 or float32",
        )
        _require(
            self.max_workers == 0 or self.max_workers >= self.num_workers,
            "rollout.max_workers",
            self.max_workers,
            f"must be 0 (= rollout.num_workers) or >= rollout.num_workers={self.num_workers}",
        )
        _require(self.kv_cache_gib > 0, "rollout.kv_cache_gib", self.kv_cache_gib, "must be > 0")
        _require(
            0 < self.gpu_memory_utilization <= 1,
            "rollout.gpu_memory_utilization",
            self.gpu_memory_utilization,
            "must be in (0, 1]",
        )

    @property
    def most_workers(self) -> int:
        """The elastic pool's upper bound (num_workers when the pool is fixed)."""
        return self.max_workers or self.num_workers

    @property
    def elastic(self) -> bool:
        return self.most_workers > self.num_workers


@dataclass(frozen=True)
class RewardConfig:
    num_workers: int = 1
    """W: reward actors."""
    timeout_s: float = 5.0
    """Time bound per completion; a reward function past it scores 0 and is counted."""
    functions: str = "correctness,digit,hard_format,mark"
    """Comma-separated reward functions: built-in names, `package.module:function` import paths (importable here)
    or `path/to/file.py:function`; custom ones are shipped to the reward workers on every node."""

    @property
    def specs(self) -> list[str]:
        return [s.strip() for s in self.functions.split(",") if s.strip()]

    resource: str = ""
    """A custom Ray node resource each reward actor asks 0.001 of; empty: any node."""

    def __post_init__(self) -> None:
        _require(self.num_workers >= 1, "reward.num_workers", self.num_workers, "must be >= 1")
        _require(self.timeout_s > 0, "reward.timeout_s", self.timeout_s, "must be > 0")
        _require(bool(self.functions.strip(", ")), "reward.functions", self.functions, "name at least one function")
        # Import each custom function here, in the driver, so that a typo is exit 2 before any actor starts.
        from actors.reward_specs import resolve_reward_functions

        try:
            resolve_reward_functions(self.specs)
        except ValueError as err:
            raise ConfigError("reward.functions", self.functions, str(err)) from None


@dataclass(frozen=True)
class LearnerConfig:
    num_ranks: int = 1
    """L: FSDP2 ranks, one Ray actor each."""
    lr: float = 1e-6
    clip_eps: float = 0.2
    """PPO clip range below 1 (and above 1 unless `clip_eps_high` is set) of the token ratio."""
    clip_eps_high: float = 0.0
    """Clip range above 1 of the token ratio (DAPO's clip-higher, e.g. 0.28); 0: equal to `clip_eps`."""
    ratio_level: str = "token"
    """`token` (PPO/GRPO) or `sequence` (GSPO: every token uses its completion's geometric-mean ratio)."""
    seq_clip_eps: float = 3e-4
    """GSPO: clip range below 1 of the sequence ratio (used with `ratio_level: sequence`)."""
    seq_clip_eps_high: float = 4e-4
    """GSPO: clip range above 1 of the sequence ratio (used with `ratio_level: sequence`)."""
    kl_coef: float = 0.0
    """Weight of the per-token KL to the initial policy; 0 turns it (and the reference model) off."""
    kl_estimator: str = "k3"
    """`k1` (log ratio), `k2` (squared log ratio / 2) or `k3` (verl's low_var_kl, DeepSeekMath's GRPO term)."""
    loss_agg: str = "token_mean"
    """`token_mean` (every token of the step equal), `seq_mean_token_sum` (Dr. GRPO: token sums / `loss_agg_norm`,
    mean over completions) or `seq_mean_token_mean` (GRPO paper: mean over completions of their token-mean)."""
    loss_agg_norm: int = 0
    """Dr. GRPO's fixed per-completion divisor of `seq_mean_token_sum`; 0: `rollout.max_tokens`."""
    advantage_std: bool = True
    """Divide the group-centred rewards by the group std (GRPO); false: Dr. GRPO's plain `r - mean`."""
    is_correction: str = "tis"
    """`tis`: multiply each token's policy term by min(exp(old - engine logprob), `is_cap`); `none`: do not."""
    is_cap: float = 2.0
    """C, the cap of the truncated importance weight (>= 1)."""
    ppo_epochs: int = 1
    max_tokens_per_micro_batch: int = 4096
    """Padded tokens per micro-batch (rows x longest row); the loss is normalised by the step's global token count
    whatever the split."""
    shared_prompt: bool = True
    """Run each group's prompt once, its n completions attending to it (same result as the plain batch)."""
    skip_zero_advantage: bool = True
    """Do not forward rows whose advantage is exactly 0 (they add nothing to the update); off when `kl_coef` > 0."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in the backward pass instead of keeping its activations."""
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    gpus_per_rank: float = 0.0
    """GPUs each learner rank asks Ray for (0 on CPU)."""
    resource: str = ""
    """A custom Ray node resource each rank's placement-group bundle asks 0.001 of; empty: any node."""
    param_dtype: str = "bfloat16"
    """FSDP2 compute dtype: `bfloat16` is mixed precision (fp32 master weights, AdamW state and gradient
    reductions; bf16 matmuls), `float32` computes in fp32."""

    def __post_init__(self) -> None:
        _require(self.num_ranks >= 1, "learner.num_ranks", self.num_ranks, "must be >= 1")
        _require(self.lr > 0, "learner.lr", self.lr, "must be > 0")
        _require(0 < self.clip_eps < 1, "learner.clip_eps", self.clip_eps, "must be in (0, 1)")
        if self.clip_eps_high == 0:  # resolved here, so the run's config.yaml holds the value used
            object.__setattr__(self, "clip_eps_high", self.clip_eps)
        _require(self.clip_eps_high > 0, "learner.clip_eps_high", self.clip_eps_high, "must be > 0 (0: clip_eps)")
        _require(self.ratio_level in RATIO_LEVELS, "learner.ratio_level", self.ratio_level, _one_of(RATIO_LEVELS))
        _require(0 < self.seq_clip_eps < 1, "learner.seq_clip_eps", self.seq_clip_eps, "must be in (0, 1)")
        _require(self.seq_clip_eps_high > 0, "learner.seq_clip_eps_high", self.seq_clip_eps_high, "must be > 0")
        _require(self.kl_coef >= 0, "learner.kl_coef", self.kl_coef, "must be >= 0")
        _require(self.kl_estimator in KL_ESTIMATORS, "learner.kl_estimator", self.kl_estimator, _one_of(KL_ESTIMATORS))
        _require(self.loss_agg in LOSS_AGG_MODES, "learner.loss_agg", self.loss_agg, _one_of(LOSS_AGG_MODES))
        _require(self.loss_agg_norm >= 0, "learner.loss_agg_norm", self.loss_agg_norm, "must be >= 0")
        _require(
            self.is_correction in IS_CORRECTIONS, "learner.is_correction", self.is_correction, _one_of(IS_CORRECTIONS)
        )
        _require(
            self.is_cap >= 1, "learner.is_cap", self.is_cap, "must be >= 1 (a cap below 1 down-weights every token)"
        )
        _require(self.ppo_epochs >= 1, "learner.ppo_epochs", self.ppo_epochs, "must be >= 1")
        _require(
            self.max_tokens_per_micro_batch >= 1,
            "learner.max_tokens_per_micro_batch",
            self.max_tokens_per_micro_batch,
            "must be >= 1",
        )
        _require(self.max_grad_norm > 0, "learner.max_grad_norm", self.max_grad_norm, "must be > 0")
        _require(self.weight_decay >= 0, "learner.weight_decay", self.weight_decay, "must be >= 0")
        _require(
            self.param_dtype in ("float32", "bfloat16"),
            "learner.param_dtype",
            self.param_dtype,
            "must be float32 or bfloat16",
        )


@dataclass(frozen=True)
class SyncConfig:
    transport: str = "object_store"
    """`object_store` (one ray.put of the full state dict) or `collective` (bucketed broadcasts)."""
    verify_every: int = 10
    """Every this many weight syncs, each engine samples a fixed probe and its logprobs are compared with the
    learner's (the checksum covers what an engine was sent, not what it computes with); 0: never."""
    verify_tolerance: float = 0.1
    """Largest mean |engine - learner| logprob over the probe's tokens before the run stops. Measured at version 0
    over 12 probe seeds (bf16 engine): SmolLM2-135M 0.017-0.046 (fp32 or bf16 learner, T = 1 or 0.7), the tiny test
    model 0.001; an engine whose LM head computes with 4x its weights (the test hook) 0.18-0.31 and 0.45-0.89."""

    def __post_init__(self) -> None:
        _require(
            self.transport in ("object_store", "collective"),
            "sync.transport",
            self.transport,
            "must be object_store or collective",
        )
        _require(self.verify_every >= 0, "sync.verify_every", self.verify_every, "must be >= 0")
        _require(self.verify_tolerance > 0, "sync.verify_tolerance", self.verify_tolerance, "must be > 0")


# trainer.final_eval_size for "every question of the test split".
FULL_TEST_SPLIT = -1


@dataclass(frozen=True)
class TrainerConfig:
    total_steps: int = 10
    seed: int = 0
    run_dir: str = "runs/debug"
    max_staleness: int = 0
    """k: the rollout of the next k steps runs while the learner trains, so step s trains on completions sampled by
    version s-1-k (0: on-policy, rollout and training alternate)."""
    eval_every: int = 0
    """Also evaluate every this many steps; eval always runs at step 0 and at the end (0: only those two)."""
    eval_size: int = 50
    """Test questions in the fixed eval subset (0 turns eval off), evaluated at every eval (`eval/*`)."""
    final_eval_size: int = 0
    """Test questions of the larger eval at step 0 and at the end (`eval_final/*`): 0 = the eval subset,
    -1 (`FULL_TEST_SPLIT`) = the whole test split, N >= eval_size = a fixed N that contains the subset."""
    eval_pass_k: int = 0
    """At step 0 and at the end, also sample this many answers per eval-subset question at rollout.temperature and
    log `eval/pass_at_k` (0: off)."""
    checkpoint_every: int = 5
    """Checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept on disk (the oldest are deleted)."""
    resume: bool = False
    """Continue from the latest checkpoint in `run_dir`."""
    overwrite: bool = False
    """Allow replacing a previous run in `run_dir` (or resuming it under a changed config)."""

    def final_eval_rows(self, test_rows: int) -> int:
        """How many of a `test_rows`-row test split the step-0 and final eval answers."""
        if self.final_eval_size == FULL_TEST_SPLIT:
            return test_rows
        return min(self.final_eval_size or self.eval_size, test_rows)

    def __post_init__(self) -> None:
        _require(self.total_steps >= 1, "trainer.total_steps", self.total_steps, "must be >= 1")
        _require(self.seed >= 0, "trainer.seed", self.seed, "must be >= 0")
        _require(bool(self.run_dir.strip()), "trainer.run_dir", self.run_dir, "must not be empty")
        _require(self.max_staleness >= 0, "trainer.max_staleness", self.max_staleness, "must be >= 0")
        _require(self.eval_every >= 0, "trainer.eval_every", self.eval_every, "must be >= 0")
        _require(self.eval_size >= 0, "trainer.eval_size", self.eval_size, "must be >= 0")
        _require(
            self.final_eval_size in (0, FULL_TEST_SPLIT) or self.final_eval_size >= self.eval_size,
            "trainer.final_eval_size",
            self.final_eval_size,
            f"must be 0 (the eval subset), {FULL_TEST_SPLIT} (the whole test split) or >= trainer.eval_size="
            f"{self.eval_size} (it contains the subset)",
        )
        _require(self.eval_pass_k >= 0, "trainer.eval_pass_k", self.eval_pass_k, "must be >= 0")
        for key, value in (("final_eval_size", self.final_eval_size), ("eval_pass_k", self.eval_pass_k)):
            _require(
                self.eval_size > 0 or value == 0, f"trainer.{key}", value, "needs trainer.eval_size >= 1 (eval is off)"
            )
        _require(self.keep_checkpoints >= 1, "trainer.keep_checkpoints", self.keep_checkpoints, "must be >= 1")
        _require(self.checkpoint_every >= 0, "trainer.checkpoint_every", self.checkpoint_every, "must be >= 0")


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "disabled"
    """`disabled`, `offline` or `online`."""
    project: str = "grpo-ray"
    name: str = ""
    """Run name; empty lets wandb choose."""

    def __post_init__(self) -> None:
        _require(
            self.mode in ("disabled", "offline", "online"),
            "wandb.mode",
            self.mode,
            "must be disabled, offline or online",
        )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def __post_init__(self) -> None:
        _require(
            self.rollout.num_workers <= self.data.prompts_per_step,
            "rollout.num_workers",
            self.rollout.num_workers,
            f"more rollout workers than data.prompts_per_step={self.data.prompts_per_step} leaves some idle",
        )
        if self.learner.loss_agg_norm == 0:  # Dr. GRPO's constant defaults to the longest possible completion
            object.__setattr__(
                self, "learner", dataclasses.replace(self.learner, loss_agg_norm=self.rollout.max_tokens)
            )
        _require(
            self.rollout.most_workers <= self.data.prompts_per_step,
            "rollout.max_workers",
            self.rollout.max_workers,
            f"more rollout workers than data.prompts_per_step={self.data.prompts_per_step} leaves some idle",
        )
        shares_gpu = 0 < self.learner.gpus_per_rank and 0 < self.rollout.gpus_per_worker
        shares_gpu = shares_gpu and self.learner.gpus_per_rank + self.rollout.gpus_per_worker <= 1
        _require(
            not (self.sync.transport == "collective" and shares_gpu),
            "sync.transport",
            self.sync.transport,
            f"learner.gpus_per_rank={self.learner.gpus_per_rank} and rollout.gpus_per_worker="
            f"{self.rollout.gpus_per_worker} let a learner rank and an engine share one GPU, where a collective "
            "group cannot put two ranks (NCCL refuses two ranks on one device); use object_store",
        )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


def _coerce(key: str, value: object, expected: Any, from_text: bool) -> object:
    """Check (YAML values) or parse (command-line text) one value against its field type."""
    if from_text and isinstance(value, str):
        if expected is str:
            return value
        if expected is bool:
            lowered = value.lower()
            _require(lowered in ("true", "false"), key, value, "expected true or false")
            return lowered == "true"
        try:
            return expected(value)
        except ValueError:
            raise ConfigError(key, value, f"expected {expected.__name__}") from None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        # PyYAML (YAML 1.1) reads `1e-5`, without a dot, as a string; take any text float() parses.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(key, value, "expected float, got str") from None
    # bool is an int subclass; `rollout.n: true` must not pass as 1.
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ConfigError(key, value, f"expected {expected.__name__}, got {type(value).__name__}")
    return value


def _set(tree: dict[str, dict[str, object]], key: str, value: object, from_text: bool) -> None:
    parts = key.split(".")
    _require(len(parts) == 2, key, value, "keys are <section>.<name>, e.g. rollout.n")
    section, name = parts
    sections = {f.name: f for f in dataclasses.fields(Config)}
    _require(section in sections, key, value, f"unknown section {section!r}; known: {', '.join(sections)}")
    types_ = typing.get_type_hints(_section_class(section))
    _require(name in types_, key, value, f"unknown key; {section} has {', '.join(types_)}")
    tree.setdefault(section, {})[name] = _coerce(key, value, types_[name], from_text)


def _section_class(section: str) -> type:
    return typing.get_type_hints(Config)[section]


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults when `path` is None) and apply `section.key=value` overrides."""
    tree: dict[str, dict[str, object]] = {}
    if path is not None:
        path = Path(path)
        _require(path.is_file(), "--config", str(path), "file does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        _require(isinstance(raw, dict), "--config", str(path), "top level must be a mapping of sections")
        for section, values in raw.items():
            _require(isinstance(values, dict), str(section), values, "a section must be a mapping")
            for name, value in values.items():
                _set(tree, f"{section}.{name}", value, from_text=False)
    for item in overrides:
        key, sep, text = item.partition("=")
        _require(bool(sep), item, None, "overrides are key=value")
        _set(tree, key.strip(), text.strip(), from_text=True)
    try:
        sections = {name: _section_class(name)(**values) for name, values in tree.items()}
        return Config(**sections)
    except TypeError as err:  # a dataclass refused a field; names are checked above, so this is a bug
        raise RuntimeError(f"config construction failed: {err}") from err


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
