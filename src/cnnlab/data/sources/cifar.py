"""CIFAR-10 and CIFAR-100 from the official python tarballs (download only on request)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source
from cnnlab.data.errors import CorruptFileError
from cnnlab.data.formats import as_text, load_cifar_pickle
from cnnlab.data.remote import load_remote

CIFAR10_MEMBERS = {
    "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
    "test": ["cifar-10-batches-py/test_batch"],
    "meta": "cifar-10-batches-py/batches.meta",
}
CIFAR100_MEMBERS = {"train": ["cifar-100-python/train"], "test": ["cifar-100-python/test"], "meta": "cifar-100-python/meta"}


def _read_members(path: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Unpickle the named members of a .tar.gz (one pass over the archive)."""
    wanted = set(names)
    found: dict[str, dict[str, Any]] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    found[member.name] = load_cifar_pickle(f.read(), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise CorruptFileError(f"{path} is not a complete .tar.gz archive ({type(e).__name__}: {e}); delete it "
                               f"and download it again") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise CorruptFileError(f"{path} lacks {', '.join(missing)}; is it the official python version of the archive?")
    return found


def _batch(d: dict[str, Any], label_key: str, what: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if "data" not in d or label_key not in d:
        raise CorruptFileError(f"{what}: expected keys 'data' and {label_key!r}, got {sorted(d)}")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise CorruptFileError(f"{what}: 'data' must be uint8 N×3072, got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise CorruptFileError(f"{what}: {data.shape[0]} images but {labels.shape} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptFileError(f"{what}: labels outside [0, {num_classes})")
    return data.reshape(-1, 3, 32, 32), labels


def _cifar(name: str, path: Path, members: dict, label_key: str, names_key: str, meta_extra: dict) -> ImageDataset:
    found = _read_members(path, [*members["train"], *members["test"], members["meta"]])
    meta = found[members["meta"]]
    if names_key not in meta:
        raise CorruptFileError(f"{path}:{members['meta']} has no {names_key!r}")
    classes = [as_text(c) for c in meta[names_key]]
    splits = {}
    for part in ("train", "test"):
        arrays = [_batch(found[m], label_key, f"{path}:{m}", len(classes)) for m in members[part]]
        images = np.concatenate([a[0] for a in arrays])
        labels = np.concatenate([a[1] for a in arrays])
        splits[part] = Split(torch.from_numpy(images), torch.from_numpy(labels))
    mean, std = channel_stats(splits["train"].images)
    return ImageDataset(name, splits["train"], splits["test"], classes, mean, std,
                        {"source": name, "files": [str(path)], **meta_extra})


@register_source("cifar10", kind="download")
def load_cifar10(root: Path, download: bool = False, checksums: Mapping[str, str] | None = None,
                 mirror: str | None = None) -> ImageDataset:
    """CIFAR-10: 50,000 + 10,000 colour images 3×32×32, 10 classes."""
    return load_remote(
        "cifar10", root, download, options={}, checksums=checksums, mirror=mirror,
        decode=lambda p: _cifar("cifar10", p["cifar-10-python.tar.gz"], CIFAR10_MEMBERS, "labels", "label_names", {}),
    )


@register_source("cifar100", kind="download")
def load_cifar100(root: Path, download: bool = False, labels: str = "fine", checksums: Mapping[str, str] | None = None,
                  mirror: str | None = None) -> ImageDataset:
    """CIFAR-100: 50,000 + 10,000 colour images 3×32×32; labels 'fine' (100 classes) or 'coarse' (20)."""
    if labels not in ("fine", "coarse"):
        raise ValueError(f"labels must be 'fine' or 'coarse', got {labels!r}")
    return load_remote(
        "cifar100", root, download, options={"labels": labels}, checksums=checksums, mirror=mirror,
        decode=lambda p: _cifar("cifar100", p["cifar-100-python.tar.gz"], CIFAR100_MEMBERS, f"{labels}_labels",
                                f"{labels}_label_names", {"labels": labels}),
    )
