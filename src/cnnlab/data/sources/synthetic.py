"""Procedural images: class-dependent gratings and a blob, randomly shifted, with contrast jitter and noise.

Any size, channel count and class count; a pure function of the seed (seed paths
``synthetic/classes``, ``synthetic/train``, ``synthetic/test``). Each class is a sum of a few oriented
sinusoidal gratings per channel plus a Gaussian blob; each example shifts the class pattern by up to
``shift`` of the image size, scales its contrast and adds Gaussian pixel noise. The classes are
distinct but not trivially separable per pixel, so a small CNN learns them to high accuracy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.dataset import ImageDataset, Split, channel_stats, register_source
from cnnlab.utils.seeding import make_generator

_COMPONENTS = 3
_MAX_CYCLES = 3.0
_BLOB_SIGMA = 0.15


def _check(name: str, value, lo, *, integer: bool = True) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool)) if integer else isinstance(value, (int, float))
    if not ok or value < lo:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= {lo}, got {value!r}")


def _class_patterns(num_classes: int, channels: int, seed: int) -> dict[str, torch.Tensor]:
    g = make_generator(seed, "synthetic/classes")
    k, c, m = num_classes, channels, _COMPONENTS
    return {
        "freq": (torch.rand(k, c, m, 2, generator=g, dtype=torch.float32) * 2 - 1) * _MAX_CYCLES,
        "phase": torch.rand(k, c, m, generator=g, dtype=torch.float32) * (2 * math.pi),
        "amp": torch.rand(k, c, m, generator=g, dtype=torch.float32) * 0.5 + 0.5,
        "blob": torch.rand(k, 2, generator=g, dtype=torch.float32) * 0.6 + 0.2,
        "blob_sign": torch.where(torch.rand(k, c, generator=g) < 0.5, -1.0, 1.0).to(torch.float32),
    }


def make_synthetic(n: int, *, num_classes: int = 10, channels: int = 3, size: int = 32, noise: float = 0.3,
                   shift: float = 0.5, seed: int = 0, stream: str = "train", chunk: int = 1024) -> Split:
    """``n`` uint8 images ``channels``×``size``×``size`` with balanced labels, from seed path ``synthetic/{stream}``."""
    _check("n", n, 1)
    _check("num_classes", num_classes, 2)
    _check("channels", channels, 1)
    _check("size", size, 2)
    _check("noise", noise, 0.0, integer=False)
    _check("shift", shift, 0.0, integer=False)
    p = _class_patterns(num_classes, channels, seed)
    g = make_generator(seed, f"synthetic/{stream}")
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    offsets = (torch.rand(n, 2, generator=g, dtype=torch.float32) * 2 - 1) * shift
    contrast = torch.rand(n, generator=g, dtype=torch.float32) * 0.6 + 0.7
    brightness = torch.randn(n, generator=g, dtype=torch.float32) * 0.1
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size  # pixel centres in (0, 1)
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    for s in range(0, n, chunk):
        y = labels[s:s + chunk]
        off = offsets[s:s + chunk]
        u = coords.view(1, 1, 1, -1) - off[:, 1].view(-1, 1, 1, 1)   # horizontal, shifted per example
        v = coords.view(1, 1, 1, -1) - off[:, 0].view(-1, 1, 1, 1)   # vertical
        freq, amp = p["freq"][y], p["amp"][y]                         # B×C×M×2, B×C×M
        a = 2 * math.pi * freq[..., 0:1] * u + p["phase"][y][..., None]  # B×C×M×W
        b = 2 * math.pi * freq[..., 1:2] * v                              # B×C×M×H
        # sum_m amp_m cos(a_m(w) + b_m(h)) = sum_m amp_m (cos a cos b - sin a sin b): two batched matmuls
        grating = (torch.einsum("bcmh,bcmw->bchw", amp[..., None] * torch.cos(b), torch.cos(a))
                   - torch.einsum("bcmh,bcmw->bchw", amp[..., None] * torch.sin(b), torch.sin(a))) / _COMPONENTS
        centre = p["blob"][y]
        gu = torch.exp(-((u[:, 0, 0] - centre[:, 1:2]) ** 2) / (2 * _BLOB_SIGMA ** 2))  # B×W
        gv = torch.exp(-((v[:, 0, 0] - centre[:, 0:1]) ** 2) / (2 * _BLOB_SIGMA ** 2))  # B×H
        blob = p["blob_sign"][y][..., None, None] * (gv[:, None, :, None] * gu[:, None, None, :])
        value = contrast[s:s + chunk].view(-1, 1, 1, 1) * (grating + blob) + brightness[s:s + chunk].view(-1, 1, 1, 1)
        value = value + noise * torch.randn(value.shape, generator=g, dtype=torch.float32)
        images[s:s + chunk] = (128.0 + 80.0 * value).round_().clamp_(0, 255).to(torch.uint8)
    return Split(images, labels.to(torch.int64))


@register_source("synthetic", kind="procedural")
def load_synthetic(root: Path, download: bool = False, n_train: int = 2000, n_test: int = 500,
                   num_classes: int = 10, channels: int = 3, size: int = 32, noise: float = 0.3,
                   shift: float = 0.5, seed: int = 0) -> ImageDataset:
    """Procedural class patterns + noise: any size/channels/classes, deterministic from the seed."""
    common: dict[str, Any] = dict(num_classes=num_classes, channels=channels, size=size, noise=noise, shift=shift, seed=seed)
    train = make_synthetic(n_train, stream="train", **common)
    test = make_synthetic(n_test, stream="test", **common)
    mean, std = channel_stats(train.images)
    return ImageDataset("synthetic", train, test, [f"class_{k}" for k in range(num_classes)], mean, std,
                        {"source": "synthetic", **common})
