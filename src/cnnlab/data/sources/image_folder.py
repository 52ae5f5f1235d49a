"""Your own images: ``PATH/<class>/*.png|jpg`` (or ``PATH/train/<class>`` + ``PATH/test/<class>``), via Pillow.

Decoded once into the cache; the cache key covers the options and every file's relative path, size and
modification time, so adding, removing or editing an image re-decodes the folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.data.cache import cached
from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source, stratified_split
from cnnlab.data.errors import CorruptFileError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {c: sorted(f for f in (folder / c).rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            for c in classes}


def _decode(files: list[Path], size: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                img = im.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img).reshape(size, size, channels)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise CorruptFileError(f"cannot read image {f}: {e}") from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _detect_channels(files: list[Path]) -> int:
    """1 when every image is grayscale (read from the headers only), else 3: gray data is never silently tripled."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode not in GRAY_MODES:
                    return 3
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise CorruptFileError(f"cannot read image {f}: {e}") from None
    return 1


def _labelled(groups: dict[str, list[Path]], classes: list[str]) -> tuple[list[Path], torch.Tensor]:
    files, labels = [], []
    for c, fs in groups.items():
        files += fs
        labels += [classes.index(c)] * len(fs)
    return files, torch.tensor(labels, dtype=torch.int64)


@register_source("image_folder", kind="local")
def load_image_folder(root: Path, download: bool = False, path: str | None = None, size: int = 32,
                      channels: int | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """Images in PATH/<class>/ (or PATH/train|test/<class>/), resized to size×size; option path=DIR.

    ``channels``: 1 (gray) or 3 (RGB); default: 1 when every image is grayscale, else 3.
    """
    if path is None:
        raise ValueError("image_folder needs the option path=DIR (a folder with one sub-folder per class)")
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise DataError(f"image_folder path {folder} is not a folder")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels!r}")
    presplit = (folder / "train").is_dir() and (folder / "test").is_dir()
    parts = {"train": _class_files(folder / "train"), "test": _class_files(folder / "test")} if presplit \
        else {"all": _class_files(folder)}
    classes = sorted(set().union(*(p.keys() for p in parts.values())))
    n_files = sum(len(fs) for p in parts.values() for fs in p.values())
    if not classes or n_files == 0:
        raise DataError(f"no images found in {folder}: expected {folder}/<class>/*.png|jpg (extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}), optionally under train/ and test/")
    if channels is None:
        channels = _detect_channels([f for p in parts.values() for fs in p.values() for f in fs])
    listing = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                     for p in parts.values() for fs in p.values() for f in fs)
    options = {"size": size, "channels": channels, "test_fraction": None if presplit else test_fraction,
               "split_seed": None if presplit else split_seed}
    fingerprint = {"path": str(folder), "options": options, "files": listing}

    def build() -> ImageDataset:
        if presplit:
            splits = {}
            for name, groups in parts.items():
                files, labels = _labelled(groups, classes)
                if not files:
                    raise DataError(f"no images found in {folder / name}")
                splits[name] = Split(_decode(files, size, channels), labels)
            train, test = splits["train"], splits["test"]
        else:
            files, labels = _labelled(parts["all"], classes)
            images = _decode(files, size, channels)
            tr, te = stratified_split(labels, test_fraction, split_seed, "image_folder/split")
            train, test = Split(images[tr], labels[tr]), Split(images[te], labels[te])
        mean, std = channel_stats(train.images)
        return ImageDataset(folder.name, train, test, classes, mean, std,
                            {"source": "image_folder", "path": str(folder), **options})

    return cached(root, "image_folder", fingerprint, build)
