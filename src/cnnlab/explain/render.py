"""Image grids of explanations for people: original, map and overlay per method (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cnnlab.utils.plotting import pyplot, save_figure  # save_figure re-exported: the analyses save through it


def display_images(images_uint8: torch.Tensor) -> np.ndarray:
    """uint8 N×C×H×W -> float N×H×W×3 in [0, 1] for imshow (gray repeated; only the first 3 channels shown)."""
    x = images_uint8.detach().cpu().float() / 255.0
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].permute(0, 2, 3, 1).numpy()


def _resize_display(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of an H×W×3 display image to the map size (maps are at model resolution)."""
    if img.shape[:2] == (h, w):
        return img
    t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    return torch.nn.functional.interpolate(t, size=(h, w), mode="nearest").squeeze(0).permute(1, 2, 0).numpy()


def _class_namer(class_names: Sequence[str] | None) -> Callable[[Any], str]:
    """Class index -> its name (or the index as text when the dataset has no names)."""
    def name(c: Any) -> str:
        i = int(c)
        return class_names[i] if class_names is not None else str(i)

    return name


def _show_map(ax: Any, m: np.ndarray, signed: bool) -> None:
    """One map, scaled per image: signed maps symmetric red/blue around 0, others |map| from 0 to its max."""
    if signed:
        v = float(np.abs(m).max()) or 1.0
        ax.imshow(m, cmap="RdBu_r", vmin=-v, vmax=v, interpolation="nearest")
    else:
        a = np.abs(m)
        ax.imshow(a, cmap="inferno", vmin=0.0, vmax=float(a.max()) or 1.0, interpolation="nearest")


def _no_ticks(axes: Any) -> None:
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])


def save_explanation_grid(
    path: str | os.PathLike,
    images_uint8: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    *,
    targets: torch.Tensor,
    labels: torch.Tensor | None = None,
    preds: torch.Tensor | None = None,
    indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    method_labels: Mapping[str, str] | None = None,
    signed: Mapping[str, bool] | None = None,
    title: str = "",
    alpha: float = 0.5,
) -> None:
    """One row per image: the original, then per method its map and an overlay on the image.

    Each map is scaled per image (signed maps: symmetric red/blue around 0; non-negative maps: 0..max);
    overlays show |map| scaled 0..max. Titles name the image index, true/predicted class and the target.
    """
    plt = pyplot()
    names = list(maps)
    n = images_uint8.shape[0]
    if any(m.shape[0] != n for m in maps.values()):
        raise ValueError(f"every map must cover the {n} images")
    cls = _class_namer(class_names)
    method_labels = dict(method_labels or {})
    signed = dict(signed or {})
    shown = display_images(images_uint8)
    ncols = 1 + 2 * len(names)
    fig, axes = plt.subplots(n, ncols, figsize=(2.1 * ncols, 2.6 * n + 0.8), squeeze=False, layout="constrained")
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(shown[i], interpolation="nearest")
        head = f"#{indices[i]}" if indices is not None else f"image {i}"
        parts = [head]
        if labels is not None:
            parts.append(f"true: {cls(labels[i])}")
        if preds is not None:
            parts.append(f"pred: {cls(preds[i])}")
        ax.set_title("\n".join([parts[0], " / ".join(parts[1:])]) if len(parts) > 1 else parts[0], fontsize=9)
        for j, name in enumerate(names):
            m = maps[name][i].detach().cpu().double().numpy()
            lab = method_labels.get(name, name)
            ax_map, ax_ov = axes[i, 1 + 2 * j], axes[i, 2 + 2 * j]
            _show_map(ax_map, m, signed.get(name, bool((m < 0).any())))
            ax_map.set_title(f"{lab}\ntarget: {cls(targets[i])}", fontsize=9)
            a = np.abs(m)
            a = a / (a.max() or 1.0)
            ax_ov.imshow(_resize_display(shown[i], *a.shape), interpolation="nearest")
            ax_ov.imshow(a, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0, interpolation="bilinear")
            ax_ov.set_title(f"{lab} overlay", fontsize=9)
    _no_ticks(axes)
    fig.suptitle((title + "\n" if title else "") + "maps scaled per image; overlay = |map|", fontsize=10)
    save_figure(fig, path)


def save_resolution_grid(
    path: str | os.PathLike,
    images_uint8: torch.Tensor,
    maps_by_run: Mapping[str, torch.Tensor],
    *,
    targets: torch.Tensor,
    indices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    signed: bool = False,
    title: str = "",
) -> None:
    """One row per image: the original, then one method's map from each run (each at its own resolution)."""
    plt = pyplot()
    n = images_uint8.shape[0]
    runs = list(maps_by_run)
    cls = _class_namer(class_names)
    shown = display_images(images_uint8)
    ncols = 1 + len(runs)
    fig, axes = plt.subplots(n, ncols, figsize=(2.1 * ncols, 2.6 * n + 0.8), squeeze=False, layout="constrained")
    for i in range(n):
        axes[i, 0].imshow(shown[i], interpolation="nearest")
        head = f"#{indices[i]}" if indices is not None else f"image {i}"
        axes[i, 0].set_title(f"{head}\ntarget: {cls(targets[i])}", fontsize=9)
        for j, run in enumerate(runs):
            m = maps_by_run[run][i].detach().cpu().double().numpy()
            ax = axes[i, 1 + j]
            _show_map(ax, m, signed)
            ax.set_title(f"{run} ({m.shape[0]}×{m.shape[1]})", fontsize=9)
    _no_ticks(axes)
    fig.suptitle((title + "\n" if title else "") + "each map scaled per image", fontsize=10)
    save_figure(fig, path)


__all__ = ["display_images", "save_explanation_grid", "save_figure", "save_resolution_grid"]
