"""The one scores format every attribution method shares: :class:`Scores` (N_train × K, index metadata) and
its file (``cnnlab-attribution-scores-v1``: a tagged torch dict, with a ``.npy`` copy of the matrix), plus
external score arrays from other tools checked against a run's indices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cnnlab.utils.io import atomic_path, save_torch_atomic
from cnnlab.utils.tagged import load_tagged

SCORES_FORMAT = "cnnlab-attribution-scores-v1"


@dataclass
class Scores:
    """Attribution scores in the shared layout: rows = ``train_indices``, columns = ``target_indices``."""

    scores: Tensor
    train_indices: Tensor
    target_indices: Tensor
    measurement: str
    method: str
    higher_is_better: bool = False


def save_scores(path: Path, s: Scores, extra: dict[str, Any] | None = None) -> None:
    """``path`` (.pt, tagged, with ``extra`` keys) and its ``.npy`` copy of the matrix, both written atomically."""
    save_torch_atomic(path, {"format": SCORES_FORMAT, "method": s.method, "scores": s.scores.contiguous(),
                             "train_indices": s.train_indices, "target_indices": s.target_indices,
                             "measurement": s.measurement, "higher_is_better": s.higher_is_better, **(extra or {})})
    with atomic_path(path.with_suffix(".npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, s.scores.numpy())


def load_scores(path: str | Path) -> Scores:
    """A cnnlab scores file (.pt); see :func:`load_external_scores` for plain arrays."""
    return scores_from_blob(load_tagged(path, SCORES_FORMAT, what="scores file"))


def scores_from_blob(blob: dict[str, Any]) -> Scores:
    """The :class:`Scores` of a loaded scores-file dict."""
    return Scores(blob["scores"], blob["train_indices"], blob["target_indices"], blob["measurement"], blob["method"],
                  bool(blob.get("higher_is_better", False)))


def load_external_scores(path: str | Path, like: Scores, method: str | None = None) -> Scores:
    """Scores from another tool: .npy / .pt array N_train × N_targets (or a cnnlab scores file),
    rows and columns in ``like``'s order (the run's train indices and MAGIC's targets)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--scores: file {path} does not exist")
    if path.suffix == ".npy":
        try:
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        except Exception as e:
            raise ValueError(f"--scores: cannot read {path} as a .npy array: {e}") from None
    elif path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--scores: cannot read {path} with torch.load: {e}") from None
        if isinstance(obj, dict) and obj.get("format") == SCORES_FORMAT:
            s = load_scores(path)
            if not (torch.equal(s.train_indices, like.train_indices) and torch.equal(s.target_indices, like.target_indices)):
                raise ValueError(f"--scores: {path} covers other train/target indices than this run's MAGIC scores")
            return Scores(s.scores, like.train_indices, like.target_indices, like.measurement, method or s.method, s.higher_is_better)
        if not isinstance(obj, Tensor):
            raise ValueError(f"--scores: {path} must hold a tensor N_train × N_targets, got {type(obj).__name__}")
        arr = obj
    else:
        raise ValueError(f"--scores: {path} must be a .npy or .pt file")
    expected = (like.train_indices.numel(), like.target_indices.numel())
    if arr.ndim == 1 and expected[1] == 1:
        arr = arr[:, None]
    if tuple(arr.shape) != expected:
        raise ValueError(f"--scores: {path} has shape {tuple(arr.shape)}, expected {expected} "
                         f"(N_train rows in the run's train order, one column per MAGIC target)")
    if not arr.is_floating_point() or not bool(torch.isfinite(arr).all()):
        raise ValueError(f"--scores: {path} must hold finite floating-point numbers")
    return Scores(arr.to(torch.float64), like.train_indices, like.target_indices, like.measurement,
                  method or f"external:{path.stem}", like.higher_is_better)


def save_baseline(run_dir: str | Path, s: Scores) -> Path:
    path = Path(run_dir) / "baselines" / f"{s.method}.pt"
    save_scores(path, s)
    return path


def load_baseline(run_dir: str | Path, method: str) -> Scores | None:
    path = Path(run_dir) / "baselines" / f"{method}.pt"
    return load_scores(path) if path.is_file() else None
