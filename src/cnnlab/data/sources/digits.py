"""scikit-learn's bundled 8×8 digits: the embedded default dataset (no download)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source


@register_source("digits", kind="embedded")
def load_digits(root: Path, download: bool = False, test_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """1,797 images 1×8×8 (values 0..16 rescaled to 0..255); a fixed stratified train/test split."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    bunch = sk_load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    train = Split(torch.from_numpy(images[idx_train]), torch.from_numpy(labels[idx_train]))
    test = Split(torch.from_numpy(images[idx_test]), torch.from_numpy(labels[idx_test]))
    mean, std = channel_stats(train.images)
    return ImageDataset("digits", train, test, [str(i) for i in range(10)], mean, std, {"source": "sklearn.datasets.load_digits"})
