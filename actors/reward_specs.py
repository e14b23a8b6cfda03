"""Reward function specs: what `reward.functions` names, how a process loads it, and what Ray must ship so that
the reward workers on every node can load it too.

A spec is a built-in name (`rewards/reward_functions.py`), ``package.module:function`` (importable by the driver,
e.g. a module on its PYTHONPATH) or ``path/to/file.py:function``. The driver checks every spec before any actor
starts (`cluster/config.py`); modules and files outside the repo and the installed packages go to the workers
through Ray's ``runtime_env["py_modules"]`` (`cluster/trainer.py::init_ray`), a file as the module of its name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from rewards.reward_functions import REWARD_FUNCTIONS, RewardFunction

# Every node has the repo (PYTHONPATH or the job's working dir): modules under it are never shipped.
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_reward_functions(specs: Sequence[str]) -> dict[str, RewardFunction]:
    """Map each spec to its name and function: a built-in name, ``package.module:function`` (imported), or
    ``path/to/file.py:function`` (loaded from that file as module ``file``).

    The name of an import path is the part after the colon. Raises ValueError naming the spec for an
    unknown name, a failing import, a missing file, a non-callable, a duplicate name or the reserved name ``total``.
    """
    if not specs:
        raise ValueError("no reward functions given")
    functions: dict[str, RewardFunction] = {}
    for spec in specs:
        module_name, colon, name = spec.partition(":")
        if not colon:
            if spec not in REWARD_FUNCTIONS:
                raise ValueError(
                    f"unknown reward function {spec!r}: expected one of {sorted(REWARD_FUNCTIONS)}, "
                    "an import path 'package.module:function' or a file 'path/to/file.py:function'"
                )
            name, fn = spec, REWARD_FUNCTIONS[spec]
        else:
            try:
                fn = getattr(_load_module(module_name), name, None)
            except Exception as exc:  # an empty module name is a ValueError here too
                raise ValueError(f"reward function {spec!r}: cannot import {module_name!r}: {exc!r}") from exc
            if not callable(fn):
                raise ValueError(f"reward function {spec!r}: {module_name!r} has no callable {name!r}")
        if name == "total":
            raise ValueError(f"reward function {spec!r}: the name 'total' is reserved for the sum")
        if name in functions:
            raise ValueError(f"reward function {spec!r}: a function named {name!r} is already given")
        functions[name] = fn
    return functions


def _load_module(module: str) -> ModuleType:
    """Import ``package.module``, or load ``path/to/file.py`` as the module ``file`` (once per process)."""
    if not module.endswith(".py"):
        return importlib.import_module(module)
    path = Path(module).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no file {str(path)!r}")
    found = importlib.util.find_spec(path.stem)  # also finds a module this function loaded before
    if found is not None and found.origin == str(path) and path.stem in sys.modules:
        return sys.modules[path.stem]
    if found is not None:  # shipped to a worker, the file would shadow that module or be shadowed by it
        raise ValueError(f"rename {str(path)!r}: {path.stem!r} is the name of an importable module")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {str(path)!r} as a module")
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    sys.modules[path.stem] = loaded
    return loaded


def custom_reward_sources(specs: Sequence[str], repo_root: Path = REPO_ROOT) -> list[str]:
    """What Ray must ship (``runtime_env["py_modules"]``) for every node's reward workers to import the specs: each
    ``file.py`` spec's file, and the top-level package folder (or single-file module) of each import path that
    lives outside ``repo_root`` and outside the installed packages (both are on every node already).

    Call after `resolve_reward_functions` accepted the specs (so every module is importable here; it refuses a
    ``file.py`` whose name is an importable module already: on a worker it would shadow that module or be shadowed).
    """
    installed = [Path(p).resolve() for p in {sysconfig.get_path(k) for k in ("purelib", "platlib", "stdlib")}]
    sources: list[str] = []
    for spec in specs:
        module, colon, _ = spec.partition(":")
        if not colon:
            continue
        if module.endswith(".py"):
            sources.append(str(Path(module).expanduser().resolve()))
            continue
        found = importlib.util.find_spec(module.split(".")[0])
        if found is None or found.origin in (None, "built-in", "frozen"):
            continue
        locations = found.submodule_search_locations
        source = Path(next(iter(locations)) if locations else found.origin).resolve()
        if not any(source.is_relative_to(root) for root in [repo_root.resolve(), *installed]):
            sources.append(str(source))
    return sorted(set(sources))


def worker_spec(spec: str) -> str:
    """The spec as a reward worker imports it: ``path/to/file.py:fn`` becomes ``file:fn`` (Ray shipped the file
    to every node as the module ``file``: `custom_reward_sources`); other specs are unchanged."""
    module, colon, name = spec.partition(":")
    return f"{Path(module).stem}:{name}" if colon and module.endswith(".py") else spec
