"""Objects named by import path in configs: ``"package.module:attribute"`` (or ``"package.module.attribute"``)."""

from __future__ import annotations

from importlib import import_module
from typing import Any


def import_object(path: str) -> Any:
    """Import ``path`` and return the object it names; ValueError naming what could not be found."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"expected an import path 'package.module:name', got {path!r}")
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected an import path 'package.module:name', got {path!r}")
    try:
        obj: Any = import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} (from {path!r}): {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj
