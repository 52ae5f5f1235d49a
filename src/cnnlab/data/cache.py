"""On-disk cache of decoded datasets: one ``torch.save`` of uint8 tensors per (source, options, source files).

The key hashes the source name, its options and a fingerprint of its source files (for downloaded
datasets: their expected checksums, which the files were verified against before decoding). Writes are
atomic, so a killed process never leaves a cache entry that loads as complete. An entry is a format-tagged
cnnlab torch file (``CACHE_FORMAT``), read back with :func:`cnnlab.utils.tagged.load_tagged`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping


from cnnlab.data.dataset import ImageDataset, Split
from cnnlab.utils.io import save_torch_atomic
from cnnlab.utils.tagged import load_tagged

CACHE_VERSION = 1
CACHE_FORMAT = f"cnnlab-dataset-cache-v{CACHE_VERSION}"


def cache_key(source: str, fingerprint: Mapping[str, Any]) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "source": source, "fingerprint": fingerprint},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(root: str | os.PathLike, source: str, fingerprint: Mapping[str, Any]) -> Path:
    return Path(root) / "cache" / f"{source}-{cache_key(source, fingerprint)[:20]}.pt"


def save_cached(path: str | os.PathLike, ds: ImageDataset) -> None:
    save_torch_atomic(path, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "name": ds.name, "classes": list(ds.classes),
        "mean": list(ds.mean), "std": list(ds.std), "meta": dict(ds.meta),
        "train_images": ds.train.images.contiguous(), "train_labels": ds.train.labels.contiguous(),
        "test_images": ds.test.images.contiguous(), "test_labels": ds.test.labels.contiguous(),
    })


def load_cached(path: str | os.PathLike) -> ImageDataset:
    """Load a cache entry (tensors only, ``weights_only``): fast, and no code runs from the file.

    Raises ``TaggedFileError`` (a ValueError) for a file that is not a ``CACHE_FORMAT`` entry."""
    d = load_tagged(Path(path), CACHE_FORMAT, what="dataset cache entry")
    return ImageDataset(
        d["name"], Split(d["train_images"], d["train_labels"]), Split(d["test_images"], d["test_labels"]),
        list(d["classes"]), tuple(d["mean"]), tuple(d["std"]), dict(d["meta"]) | {"cache": str(path)},
    )


def cached(root: str | os.PathLike, source: str, fingerprint: Mapping[str, Any],
           build: Callable[[], ImageDataset]) -> ImageDataset:
    """Return the cached dataset for (source, fingerprint), building and saving it on a miss.

    An unreadable entry (e.g. written by an incompatible version) is rebuilt, not trusted.
    """
    path = cache_path(root, source, fingerprint)
    if path.exists():
        try:
            return load_cached(path)
        except Exception:  # noqa: BLE001 — any unreadable entry is rebuilt below
            path.unlink(missing_ok=True)
    ds = build()
    save_cached(path, ds)
    ds.meta["cache"] = str(path)
    return ds
