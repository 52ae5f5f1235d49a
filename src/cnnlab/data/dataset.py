"""Datasets as tensors: uint8 images N×C×H×W plus int64 labels, with train and test splits."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch


@dataclass
class Split:
    """One split: ``images`` uint8 N×C×H×W, ``labels`` int64 N."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 of shape ({self.images.shape[0]},), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: torch.Tensor | list[int] | slice) -> "Split":
        if isinstance(indices, slice):
            return Split(self.images[indices], self.labels[indices])
        idx = torch.as_tensor(indices, dtype=torch.long)
        return Split(self.images[idx], self.labels[idx])


@dataclass
class ImageDataset:
    """A named dataset: train/test splits, class names and per-channel mean/std (in [0, 1] units)."""

    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.images.shape[-1]


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


Loader = Callable[..., ImageDataset]
_SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(root: Path, download: bool, **options) -> ImageDataset``."""

    def deco(fn: Loader) -> Loader:
        if name in _SOURCES:
            raise ValueError(f"dataset source {name!r} is registered twice")
        _SOURCES[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    return sorted(_SOURCES)


def default_root() -> Path:
    """``$CNNLAB_DATA``, else the user cache folder (``$XDG_CACHE_HOME/cnnlab`` or ``~/.cache/cnnlab``)."""
    env = os.environ.get("CNNLAB_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "cnnlab"


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool = False, **options: Any) -> ImageDataset:
    """Load a registered dataset by name. ``download`` must be asked for explicitly."""
    if name not in _SOURCES:
        close = difflib.get_close_matches(name, list(_SOURCES), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown dataset {name!r}.{hint} Available: {', '.join(list_datasets())}")
    return _SOURCES[name](Path(root).expanduser() if root else default_root(), download, **options)
