"""Compare attribution maps of the same images across input resolutions, on one stated common grid.

Maps from runs at different resolutions are first made non-negative (``|attribution|``) and then
area-resampled (``F.interpolate(mode="area")``: the mean of |attribution| over each grid cell) to a
common ``grid`` × ``grid`` (by default the smallest resolution, so no map is invented by upsampling).
Per pair of resolutions: Spearman rank correlation of the resampled maps, and the IoU of their top-k %
cells. Both are computed per image and averaged.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata


def to_common_grid(maps: torch.Tensor, grid: int) -> torch.Tensor:
    """N×H×W signed maps -> N×grid×grid of the mean |attribution| per cell (area interpolation)."""
    if maps.ndim != 3:
        raise ValueError(f"maps must be N×H×W, got shape {tuple(maps.shape)}")
    if grid < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    a = maps.detach().abs().double().unsqueeze(1)
    if tuple(a.shape[-2:]) != (grid, grid):
        a = F.interpolate(a, size=(grid, grid), mode="area")
    return a.squeeze(1)


def spearman(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-image Spearman correlation of two N×H×W maps (average ranks for ties; NaN for a constant map)."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ra = rankdata(a.reshape(a.shape[0], -1).cpu().numpy(), axis=1)
    rb = rankdata(b.reshape(b.shape[0], -1).cpu().numpy(), axis=1)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def topk_mask(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean N×(H·W) mask of the ceil(fraction·H·W) largest cells per map (ties broken by position)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
    flat = maps.reshape(maps.shape[0], -1)
    k = max(1, math.ceil(fraction * flat.shape[1] - 1e-9))
    idx = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def topk_iou(a: torch.Tensor, b: torch.Tensor, fraction: float = 0.1) -> np.ndarray:
    """Per-image intersection-over-union of the top ``fraction`` cells of two N×H×W maps."""
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    ma, mb = topk_mask(a, fraction), topk_mask(b, fraction)
    inter = (ma & mb).sum(dim=1).double()
    union = (ma | mb).sum(dim=1).double()
    return (inter / union).cpu().numpy()


def compare_maps(maps: Mapping[str, torch.Tensor], grid: int | None = None, topk: float = 0.1,
                 resolutions: Mapping[str, int] | None = None) -> dict:
    """Pairwise Spearman and top-k IoU between maps of the same images, keyed by label (e.g. ``"32px"``).

    ``grid`` defaults to the smallest map size (or the smallest of ``resolutions``). Returns
    ``{"grid", "topk", "labels", "spearman": K×K, "iou": K×K, "pairs": [...]}`` with per-pair mean,
    std and per-image values.
    """
    labels = list(maps)
    if len(labels) < 2:
        raise ValueError(f"need maps from at least two runs to compare, got {len(labels)}")
    n = {k: v.shape[0] for k, v in maps.items()}
    if len(set(n.values())) != 1:
        raise ValueError(f"all runs must explain the same images; image counts differ: {n}")
    sizes = {k: min(v.shape[-2:]) for k, v in maps.items()}
    if grid is None:
        grid = min(resolutions.values()) if resolutions else min(sizes.values())
    common = {k: to_common_grid(v, grid) for k, v in maps.items()}
    kk = len(labels)
    rho = np.eye(kk)
    iou = np.eye(kk)
    pairs = []
    for (i, a), (j, b) in itertools.combinations(enumerate(labels), 2):
        r = spearman(common[a], common[b])
        u = topk_iou(common[a], common[b], topk)
        rho[i, j] = rho[j, i] = float(np.nanmean(r)) if np.isfinite(r).any() else float("nan")
        iou[i, j] = iou[j, i] = float(u.mean())
        pairs.append({"a": a, "b": b, "spearman_mean": rho[i, j], "spearman_std": float(np.nanstd(r)),
                      "iou_mean": iou[i, j], "iou_std": float(u.std()),
                      "spearman": r.tolist(), "iou": u.tolist()})
    return {"grid": int(grid), "topk": topk, "interpolation": "area of |attribution|", "labels": labels,
            "spearman": rho.tolist(), "iou": iou.tolist(), "pairs": pairs}


def plot_comparison(result: dict, path, title: str = "") -> None:
    """Two annotated heatmaps (Spearman, top-k IoU) of one comparison, saved atomically as PNG."""
    from cnnlab.utils.plotting import pyplot, save_figure

    plt = pyplot()
    labels = result["labels"]
    k = len(labels)
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * k * 2, 1.6 + 0.9 * k), constrained_layout=True)
    for ax, key, name in ((axes[0], "spearman", "Spearman of |attribution|"),
                          (axes[1], "iou", f"top-{result['topk'] * 100:g}% IoU")):
        m = np.asarray(result[key], dtype=float)
        im = ax.imshow(m, vmin=-1 if key == "spearman" else 0, vmax=1, cmap="viridis")
        ax.set_xticks(range(k), labels, rotation=45, ha="right")
        ax.set_yticks(range(k), labels)
        for i in range(k):
            for j in range(k):
                ax.text(j, i, "nan" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}", ha="center", va="center",
                        color="white" if (np.isfinite(m[i, j]) and m[i, j] < 0.5) else "black", fontsize=9)
        ax.set_title(name)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(f"{title}  (common grid {result['grid']}×{result['grid']}, area)".strip())
    save_figure(fig, path)


def comparison_rows(results: Mapping[str, dict]) -> list[dict]:
    """Flat rows (method, a, b, spearman, iou) from ``{method: compare_maps(...)}``."""
    rows = []
    for method, res in results.items():
        for p in res["pairs"]:
            rows.append({"method": method, "a": p["a"], "b": p["b"], "grid": res["grid"],
                         "spearman": p["spearman_mean"], "spearman_std": p["spearman_std"],
                         "iou": p["iou_mean"], "iou_std": p["iou_std"]})
    return rows


def run_labels(resolutions: Sequence[int], names: Sequence[str]) -> list[str]:
    """``"32px"`` per run, or ``"32px:name"`` where two runs share a resolution."""
    dup = {r for r in resolutions if list(resolutions).count(r) > 1}
    return [f"{r}px:{n}" if r in dup else f"{r}px" for r, n in zip(resolutions, names)]


__all__ = ["compare_maps", "comparison_rows", "plot_comparison", "run_labels", "spearman", "to_common_grid", "topk_iou",
           "topk_mask"]
