"""Pictures of attributions: proponent/opponent image grids and LDS scatter plots (matplotlib, Agg, PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cnnlab.data import ImageDataset
from cnnlab.utils.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int = 110) -> Path:
    plt = _plt()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def _show(ax, img: Tensor) -> None:
    arr = img.cpu().numpy()
    if arr.shape[0] == 1:
        ax.imshow(arr[0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.transpose(arr[:3], (1, 2, 0)))
    ax.set_xticks([])
    ax.set_yticks([])


def plot_proponents(scores: Tensor, train_indices: Tensor, target_indices: Tensor, dataset: ImageDataset,
                    columns: Sequence[int], path: str | Path, *, k: int = 6, higher_is_better: bool = False,
                    measurement: str = "loss") -> Path:
    """One row per target column: the test image, its top-k proponents and top-k opponents with scores.

    Proponents are the examples whose up-weighting moves phi the good way (down for a loss, up for a margin).
    """
    plt = _plt()
    cols = list(columns)
    k = min(k, scores.shape[0])
    fig, axes = plt.subplots(len(cols), 1 + 2 * k, figsize=(1.3 * (1 + 2 * k), 1.6 * len(cols)), squeeze=False)
    sign = 1.0 if higher_is_better else -1.0
    names = dataset.classes
    for r, j in enumerate(cols):
        t = int(target_indices[j])
        _show(axes[r, 0], dataset.test.images[t])
        axes[r, 0].set_title(f"test {t}\n{names[int(dataset.test.labels[t])]}", fontsize=7)
        col = scores[:, j].double() * sign
        for c, rows in enumerate((torch.topk(col, k).indices, torch.topk(-col, k).indices)):
            for i, row in enumerate(rows.tolist()):
                ax = axes[r, 1 + c * k + i]
                idx = int(train_indices[row])
                _show(ax, dataset.train.images[idx])
                ax.set_title(f"{names[int(dataset.train.labels[idx])]} #{idx}\n{float(scores[row, j]):+.2e}", fontsize=6,
                             color="tab:green" if c == 0 else "tab:red")
    fig.suptitle(f"MAGIC ({measurement}): {k} proponents (green) and {k} opponents (red) per test target", fontsize=9)
    return _save(fig, Path(path))


def plot_lds_scatter(pred: Tensor, actual: Tensor, spearman: Sequence[float], target_indices: Sequence[int],
                     path: str | Path, *, method: str = "magic", title: str = "", max_panels: int = 12) -> Path:
    """Predicted change (x) against actual phi (y) over the subset models, one panel per target."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    n = min(len(target_indices), max_panels)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.6 * nrows), squeeze=False)
    for j in range(nrows * ncols):
        ax = axes[j // ncols, j % ncols]
        if j >= n:
            ax.axis("off")
            continue
        ax.scatter(pred[:, j].numpy(), actual[:, j].numpy(), s=8, alpha=0.7)
        ax.set_title(f"target {target_indices[j]}: rho {spearman[j]:.3f}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        if j % ncols == 0:
            ax.set_ylabel("actual phi", fontsize=7)
        if j // ncols == nrows - 1:
            ax.set_xlabel("predicted change", fontsize=7)
    fig.suptitle(title or f"LDS scatter ({method})", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))
