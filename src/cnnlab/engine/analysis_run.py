"""A trained model as the analyses (explain, info, profile, experiments) see it, and the run plumbing they share.

``AnalysisRun``: model (eval mode), dataset, eval transform, resolution, config; built from a finished run
directory (``open_run``, through :func:`cnnlab.engine.run.load_run`) or from an in-memory model and dataset
(``AnalysisRun.from_model``), so every analysis works on both. ``find_run_dirs`` finds run directories below
folders, ``varying_factors`` names the config keys that differ across runs, and ``inputs_at`` /
``parts_inputs_at`` are the one way to take eval-transformed inputs of a split at given indices.

It sits in ``engine`` below the analyses, so no analysis imports another to reach it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import nn

from cnnlab.data.dataset import ImageDataset, Split
from cnnlab.utils.configdiff import flatten

if TYPE_CHECKING:
    from cnnlab.engine.setup import RunParts

SPLITS = ("train", "test")


def split_of(dataset: ImageDataset, name: str) -> Split:
    """``dataset.train`` or ``dataset.test``; any other name is a ValueError."""
    if name not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {name!r}")
    return dataset.train if name == "train" else dataset.test


def inputs_at(data: Split, indices: torch.Tensor | Sequence[int] | None,
              transform: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str,
              *, split: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(``transform(images[indices])``, labels at ``indices`` on ``device``); all images when ``indices`` is None.

    An index outside the split is an IndexError naming the indices and the split size (checked before any
    image is transformed)."""
    if indices is None:
        return transform(data.images), data.labels.to(device)
    idx = torch.as_tensor(indices, dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= len(data)):
        where = f"the {split} split" if split else "a split"
        raise IndexError(f"image index out of range for {where} of {len(data)} images: "
                         f"{[int(i) for i in idx if not 0 <= int(i) < len(data)]}")
    return transform(data.images[idx]), data.labels[idx].to(device)


def parts_inputs_at(parts: "RunParts", split: str, indices: torch.Tensor | Sequence[int] | None,
                    dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`inputs_at` through a built run's eval transform (``RunParts.eval_images``) on its device."""
    def transform(images: torch.Tensor) -> torch.Tensor:
        return parts.eval_images(images, 0, images.shape[0], dtype=dtype)

    return inputs_at(split_of(parts.dataset, split), indices, transform, parts.device, split=split)


@dataclass
class AnalysisRun:
    """What an analysis needs from a trained run. ``transform``: uint8 N×C×H×W -> model inputs on ``device``."""

    name: str
    model: nn.Module
    dataset: ImageDataset
    transform: Callable[[torch.Tensor], torch.Tensor]
    resolution: int
    device: torch.device = torch.device("cpu")
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @classmethod
    def from_model(cls, model: nn.Module, dataset: ImageDataset, *, resolution: int | None = None,
                   channels: int | None = None, name: str = "model", config: dict[str, Any] | None = None) -> "AnalysisRun":
        """Wrap an in-memory model: inputs are the dataset normalised with its own mean/std (resized if asked)."""
        from cnnlab.data.augment import converted_stats, normalize

        device = next(model.parameters()).device
        if resolution is not None or (channels is not None and channels != dataset.in_channels):
            mean, std = converted_stats(dataset.train.images, channels=channels, resize=resolution)
        else:
            mean, std = dataset.mean, dataset.std

        def transform(images: torch.Tensor) -> torch.Tensor:
            return normalize(images.to(device), mean, std, resize=resolution, channels=channels)

        return cls(name, model.eval(), dataset, transform, resolution or dataset.resolution, device, dict(config or {}))

    def split(self, name: str) -> Split:
        return split_of(self.dataset, name)

    def inputs(self, split: str, indices: torch.Tensor | Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(model inputs on device, labels) of ``split`` at ``indices`` (all when None), eval transform only."""
        return inputs_at(self.split(split), indices, self.transform, self.device, split=split)


def open_run(run_dir: str | os.PathLike, *, device: str | None = None, checkpoint: str = "last") -> AnalysisRun:
    """Load a finished run directory for analysis (trained weights, eval mode, the run's eval transform)."""
    from cnnlab.engine.run import load_run

    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {str(path)!r} does not exist")
    loaded = load_run(path, device=device, checkpoint=checkpoint)
    parts = loaded.parts

    def transform(images: torch.Tensor) -> torch.Tensor:
        return parts.eval_images(images, 0, images.shape[0])

    config = loaded.config.to_dict() if hasattr(loaded.config, "to_dict") else dict(loaded.config)
    resolution = loaded.config.data.resolution or loaded.dataset.resolution
    return AnalysisRun(path.name, loaded.model.eval(), loaded.dataset, transform, int(resolution), parts.device,
                       config, dict(loaded.result), path)


def find_run_dirs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories among ``paths``: each path itself if it holds result.json, else every folder below it
    that does (sorted). Raises FileNotFoundError naming a path with no run in it."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist")
        if (p / "result.json").is_file():
            found.append(p)
            continue
        below = sorted(r.parent for r in p.rglob("result.json"))
        if not below:
            raise FileNotFoundError(f"{str(p)!r} is not a run directory and holds none (no result.json found)")
        found.extend(below)
    unique: list[Path] = []
    seen: set[Path] = set()
    for p in found:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


# Keys that differ between runs without being an experimental factor.
_NOT_FACTORS = {"name", "data.root", "train.device", "train.threads", "train.log_every", "train.checkpoint_every"}


def varying_factors(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Dotted config keys whose values differ across ``configs`` (the ablation factors of a set of runs)."""
    flat = [flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    return [k for k in keys if k not in _NOT_FACTORS and len({repr(f.get(k)) for f in flat}) > 1]


__all__ = ["AnalysisRun", "SPLITS", "find_run_dirs", "flatten", "inputs_at", "open_run", "parts_inputs_at", "split_of",
           "varying_factors"]
