"""Datasets as tensors: uint8 images N×C×H×W plus int64 labels, with train and test splits."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cnnlab.utils.registry import Registry


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

    def __repr__(self) -> str:  # shapes, not kilobytes of tensor values (Jupyter prints this)
        return (f"Split(images={str(self.images.dtype).removeprefix('torch.')}{list(self.images.shape)}, "
                f"labels={str(self.labels.dtype).removeprefix('torch.')}{list(self.labels.shape)})")

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

    def __repr__(self) -> str:
        c, h, w = self.train.images.shape[1:]
        stats = ", ".join(f"{m:.3f}±{s:.3f}" for m, s in zip(self.mean, self.std))
        return (f"ImageDataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
                f"classes={self.num_classes}, image={c}x{h}x{w}, mean±std=[{stats}])")

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.images.shape[-1]


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, in [0, 1] units (float64 sums over chunks: no big copies)."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"images must be N×C×H×W with N >= 1, got {tuple(images.shape)}")
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq - count * mean * mean) / max(count - 1, 1)
    std = (var.clamp_min(0).sqrt() / 255.0).clamp_min(1e-6)
    return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std)


Loader = Callable[..., ImageDataset]
SOURCE_KINDS = ("embedded", "download", "procedural", "local")


@dataclass(frozen=True)
class SourceInfo:
    """A registered source: its loader, a one-line description and how its data is obtained.

    ``kind``: ``embedded`` (ships with a dependency), ``download`` (official files, fetched on request),
    ``procedural`` (generated from a seed) or ``local`` (the user's own files, given by a ``path`` option).
    """

    name: str
    loader: Loader
    kind: str
    description: str


_SOURCES: Registry[SourceInfo] = Registry("dataset", error=KeyError, hint="`cnnlab data list` describes them.")


def register_source(name: str, *, kind: str = "embedded", description: str | None = None) -> Callable[[Loader], Loader]:
    """Decorator: register ``loader(root: Path, download: bool, **options) -> ImageDataset``.

    Args:
        name (str): The dataset name ``load_dataset`` and ``data.name`` take.
        kind (str, optional): How its data is obtained, one of ``SOURCE_KINDS``. Default: "embedded".
        description (str, optional): One line for ``cnnlab data list``. Default: the loader's docstring's
            first line.
    """
    if kind not in SOURCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SOURCE_KINDS)}, got {kind!r}")

    def deco(fn: Loader) -> Loader:
        doc = (fn.__doc__ or "").strip().splitlines()
        _SOURCES.register(name, SourceInfo(name, fn, kind, description or (doc[0] if doc else "")))
        return fn

    return deco


def source_info(name: str) -> SourceInfo:
    """The registration of ``name``; an unknown name raises KeyError naming the closest ones."""
    return _SOURCES.get(name)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
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
    info = source_info(name)
    accepted = source_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                         f"accepted: {', '.join(accepted) or 'none'}")
    return info.loader(Path(root).expanduser() if root else default_root(), download, **options)


def source_options(name: str) -> dict[str, Any]:
    """The options a source accepts, with their defaults (``inspect.Parameter.empty`` when required)."""
    params = list(inspect.signature(source_info(name).loader).parameters.values())[2:]
    return {p.name: p.default for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def stratified_split(labels: torch.Tensor, test_fraction: float, seed: int, instance: str = "split") -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified train/test indices: per class, ``round(test_fraction * n_k)`` examples go to test.

    Classes with a single example stay in train. Order within each part is ascending dataset index.
    """
    from cnnlab.utils.seeding import make_generator

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    gen = make_generator(seed, instance)
    test_parts = []
    for k in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == k).flatten()
        n_test = min(int(round(test_fraction * idx.numel())), idx.numel() - 1)
        if n_test > 0:
            test_parts.append(idx[torch.randperm(idx.numel(), generator=gen)[:n_test]])
    is_test = torch.zeros(labels.numel(), dtype=torch.bool)
    if test_parts:
        is_test[torch.cat(test_parts)] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()
