"""Device names as configs spell them (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``): checked when a
config is read, resolved to a ``torch.device`` when a run starts."""

from __future__ import annotations

import re
from typing import Any

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps(:\d+)?)$")


def check_device_name(name: str) -> str:
    """Return ``name`` if it is a device a config may ask for; raise ``ValueError`` (for pydantic) if not."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return name


def resolve_device(name: str, *, key: str = "device", error: type[Exception] = ValueError) -> Any:
    """``auto`` -> CUDA when there is one, else CPU; a CUDA or MPS device this machine lacks raises ``error``
    naming ``key``."""
    import torch

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{key}: {name!r} asked for, but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise error(f"{key}: {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise error(f"{key}: {name!r} asked for, but MPS is not available on this machine")
    return dev
