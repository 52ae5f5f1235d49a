"""cnnlab: fast, reproducible, analysable experiments on convolutional image classifiers."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# The public API, imported on first use: `import cnnlab` (and so `cnnlab --help`) does not pay torch's import.
_LAZY = {
    "create_model": "cnnlab.models",
    "list_models": "cnnlab.models",
    "model_info": "cnnlab.models",
    "create_deterministic_model": "cnnlab.models",
    "fit": "cnnlab.engine",
    "Trainer": "cnnlab.engine",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
