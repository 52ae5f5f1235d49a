"""MNIST, Fashion-MNIST and EMNIST from their official IDX gzip files (download only on request)."""

from __future__ import annotations

import string
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from cnnlab.data.checksums import IDX_FILES
from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source
from cnnlab.data.errors import CorruptFileError
from cnnlab.data.formats import gunzip, parse_idx, read_idx_file
from cnnlab.data.remote import load_remote

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
# EMNIST class lists (Cohen et al. 2017): bymerge/balanced merge the 15 letters whose cases look alike.
_MERGED = set("cijklmopsuvwxyz")
EMNIST_CLASSES = {
    "byclass": list(string.digits + string.ascii_uppercase + string.ascii_lowercase),
    "bymerge": list(string.digits + string.ascii_uppercase) + [c for c in string.ascii_lowercase if c not in _MERGED],
    "balanced": list(string.digits + string.ascii_uppercase) + [c for c in string.ascii_lowercase if c not in _MERGED],
    "letters": list(string.ascii_uppercase),
    "digits": list(string.digits),
    "mnist": list(string.digits),
}


def _split_from_arrays(images: np.ndarray, labels: np.ndarray, what: str, num_classes: int) -> Split:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise CorruptFileError(f"{what}: expected uint8 images N×H×W, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise CorruptFileError(f"{what}: {images.shape[0]} images but labels of shape {labels.shape}")
    labels64 = labels.astype(np.int64)
    if labels64.size and (labels64.min() < 0 or labels64.max() >= num_classes):
        raise CorruptFileError(f"{what}: labels outside [0, {num_classes}): min {labels64.min()}, max {labels64.max()}")
    return Split(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels64))


def _idx_dataset(name: str, paths: dict[str, Path], classes: list[str]) -> ImageDataset:
    splits = {}
    for split, (img_file, lbl_file) in IDX_FILES.items():
        images = read_idx_file(paths[img_file])
        labels = read_idx_file(paths[lbl_file])
        splits[split] = _split_from_arrays(images, labels, f"{paths[img_file]} + {lbl_file}", len(classes))
    mean, std = channel_stats(splits["train"].images)
    return ImageDataset(name, splits["train"], splits["test"], classes, mean, std,
                        {"source": name, "files": sorted(str(p) for p in paths.values())})


@register_source("mnist", kind="download")
def load_mnist(root: Path, download: bool = False, checksums: Mapping[str, str] | None = None,
               mirror: str | None = None) -> ImageDataset:
    """MNIST handwritten digits: 60,000 + 10,000 images 1×28×28, 10 classes."""
    return load_remote("mnist", root, download, options={}, checksums=checksums, mirror=mirror,
                       decode=lambda paths: _idx_dataset("mnist", paths, [str(i) for i in range(10)]))


@register_source("fashion_mnist", kind="download")
def load_fashion_mnist(root: Path, download: bool = False, checksums: Mapping[str, str] | None = None,
                       mirror: str | None = None) -> ImageDataset:
    """Zalando's Fashion-MNIST: 60,000 + 10,000 clothing images 1×28×28, 10 classes."""
    return load_remote("fashion_mnist", root, download, options={}, checksums=checksums, mirror=mirror,
                       decode=lambda paths: _idx_dataset("fashion_mnist", paths, FASHION_CLASSES))


def _read_zip_idx(archive: zipfile.ZipFile, member: str, what: str) -> np.ndarray:
    try:
        data = archive.read(member)
    except KeyError:
        raise CorruptFileError(f"{what} has no member {member}; is it the official EMNIST gzip.zip?") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptFileError(f"{what}: cannot read {member} ({e}); the archive is corrupt") from None
    return parse_idx(gunzip(data, f"{what}:{member}"), f"{what}:{member}")


def _emnist_dataset(paths: dict[str, Path], split: str) -> ImageDataset:
    path = paths["gzip.zip"]
    classes = EMNIST_CLASSES[split]
    offset = 1 if split == "letters" else 0  # letters are labelled 1..26 in the files
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CorruptFileError(f"{path} is not a readable zip archive ({e}); delete it and download it again") from None
    out = {}
    with archive:
        for part in ("train", "test"):
            images = _read_zip_idx(archive, f"gzip/emnist-{split}-{part}-images-idx3-ubyte.gz", str(path))
            labels = _read_zip_idx(archive, f"gzip/emnist-{split}-{part}-labels-idx1-ubyte.gz", str(path))
            if images.ndim == 3:
                images = np.ascontiguousarray(images.transpose(0, 2, 1))  # EMNIST stores images transposed
            out[part] = _split_from_arrays(images, labels.astype(np.int64) - offset, f"{path}:{split}/{part}",
                                           len(classes))
    mean, std = channel_stats(out["train"].images)
    return ImageDataset(f"emnist_{split}", out["train"], out["test"], classes, mean, std,
                        {"source": "emnist", "split": split, "files": [str(path)]})


@register_source("emnist", kind="download")
def load_emnist(root: Path, download: bool = False, split: str = "balanced",
                checksums: Mapping[str, str] | None = None, mirror: str | None = None) -> ImageDataset:
    """EMNIST handwritten characters 1×28×28; split: balanced, byclass, bymerge, letters, digits or mnist."""
    if split not in EMNIST_CLASSES:
        raise ValueError(f"split must be one of {', '.join(EMNIST_CLASSES)}, got {split!r}")
    return load_remote("emnist", root, download, options={"split": split}, checksums=checksums, mirror=mirror,
                       decode=lambda paths: _emnist_dataset(paths, split))
