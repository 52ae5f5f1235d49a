"""Your own tensors: an ``.npz`` or ``.pt`` file with images + labels, validated before use.

Keys: ``train_images``, ``train_labels``, ``test_images``, ``test_labels`` (and optionally ``classes``),
or ``images`` + ``labels`` split here by a seeded stratified split. Images are uint8, N×C×H×W, N×H×W×C
or N×H×W; labels are integers 0..K-1. ``.pt`` files load with ``weights_only`` (no code runs).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source, stratified_split
from cnnlab.data.errors import CorruptFileError, DataError

LAYOUTS = ("auto", "nchw", "nhwc")


def _read(path: Path) -> dict[str, Any]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        if path.suffix in (".pt", ".pth"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict):
                raise CorruptFileError(f"{path} must hold a dict of tensors, got {type(obj).__name__}")
            return obj
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise CorruptFileError(f"cannot read {path}: {e}") from None
    raise DataError(f"tensor_file {path} must end in .npz, .pt or .pth")


def _images(value: Any, key: str, path: Path, layout: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    if t.dtype != torch.uint8:
        raise DataError(f"{path}: {key!r} must be uint8 (0..255), got {t.dtype}; convert with (x * 255).round()")
    if t.ndim == 3:
        return t[:, None].contiguous()
    if t.ndim != 4:
        raise DataError(f"{path}: {key!r} must be N×C×H×W, N×H×W×C or N×H×W, got shape {tuple(t.shape)}")
    nhwc = layout == "nhwc" or (layout == "auto" and t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3))
    return t.permute(0, 3, 1, 2).contiguous() if nhwc else t.contiguous()


def _labels(value: Any, key: str, path: Path, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{path}: {key!r} must hold integer class labels, got {t.dtype}")
    if t.shape != (n,):
        raise DataError(f"{path}: {key!r} must have shape ({n},) to match the images, got {tuple(t.shape)}")
    t = t.to(torch.int64)
    if n and int(t.min()) < 0:
        raise DataError(f"{path}: {key!r} has negative labels (min {int(t.min())})")
    return t


@register_source("tensor_file", kind="local")
def load_tensor_file(root: Path, download: bool = False, path: str | None = None, test_fraction: float = 0.2,
                     split_seed: int = 0, layout: str = "auto") -> ImageDataset:
    """Images + labels from an .npz/.pt file; option path=FILE (keys train_*/test_* or images/labels)."""
    if path is None:
        raise ValueError("tensor_file needs the option path=FILE (.npz or .pt)")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"tensor_file {file} does not exist")
    d = _read(file)
    if {"train_images", "train_labels", "test_images", "test_labels"} <= set(d):
        tr_x = _images(d["train_images"], "train_images", file, layout)
        te_x = _images(d["test_images"], "test_images", file, layout)
        train = Split(tr_x, _labels(d["train_labels"], "train_labels", file, tr_x.shape[0]))
        test = Split(te_x, _labels(d["test_labels"], "test_labels", file, te_x.shape[0]))
        if tr_x.shape[1:] != te_x.shape[1:]:
            raise DataError(f"{file}: train images are {tuple(tr_x.shape[1:])} but test images {tuple(te_x.shape[1:])}")
    elif {"images", "labels"} <= set(d):
        x = _images(d["images"], "images", file, layout)
        y = _labels(d["labels"], "labels", file, x.shape[0])
        tr, te = stratified_split(y, test_fraction, split_seed, "tensor_file/split")
        train, test = Split(x[tr], y[tr]), Split(x[te], y[te])
    else:
        raise DataError(f"{file} must contain train_images, train_labels, test_images, test_labels or images, "
                        f"labels; it has: {', '.join(sorted(d)) or 'nothing'}")
    if len(train) == 0:
        raise DataError(f"{file}: the training split is empty")
    top = int(max(train.labels.max(), test.labels.max() if len(test) else 0))
    if "classes" in d:
        classes = [str(c) for c in np.asarray(d["classes"]).tolist()] if not isinstance(d["classes"], list) \
            else [str(c) for c in d["classes"]]
        if len(classes) <= top:
            raise DataError(f"{file}: {len(classes)} class names but labels go up to {top}")
    else:
        classes = [str(k) for k in range(top + 1)]
    mean, std = channel_stats(train.images)
    return ImageDataset(file.stem, train, test, classes, mean, std, {"source": "tensor_file", "path": str(file)})
