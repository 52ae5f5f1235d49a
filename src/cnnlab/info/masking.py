"""First-layer masking: seeded element masks on the output of ``masking_layer(model)``.

A mask is a {0, 1} tensor over the block's (C, H, W) activation with exactly ``round(keep · C·H·W)``
ones, drawn from the seed path ``derive_seed(mask_seed, f"mask/{keep}/{k}")`` for mask ``k``. The same
mask multiplies the activation of every image in an evaluation (it is a fixed ablation of units, not
per-example noise), and runs whose block output has the same shape get identical masks from the same
``mask_seed`` — so masked comparisons across the runs of a sweep are paired.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from cnnlab.models.registry import masking_layer
from cnnlab.utils.seeding import make_generator


def mask_stream(keep: float, k: int) -> str:
    """The seed-path instance id of mask ``k`` at keep fraction ``keep``."""
    return f"mask/{float(keep)}/{k}"


def draw_masks(shape: Sequence[int], keep: float, n_masks: int, mask_seed: int) -> torch.Tensor:
    """``n_masks`` × ``shape`` float {0, 1} masks, each keeping exactly round(keep · numel) elements (CPU, float32)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
    if n_masks < 1:
        raise ValueError(f"n_masks must be >= 1, got {n_masks}")
    numel = 1
    for s in shape:
        numel *= int(s)
    n_keep = int(round(keep * numel))
    out = torch.zeros(n_masks, numel)
    for k in range(n_masks):
        perm = torch.randperm(numel, generator=make_generator(mask_seed, mask_stream(keep, k)))
        out[k, perm[:n_keep]] = 1.0
    return out.view(n_masks, *[int(s) for s in shape])


@contextlib.contextmanager
def masked_output(layer: nn.Module, mask: torch.Tensor) -> Iterator[None]:
    """Within the block, ``layer``'s output is zeroed where ``mask`` (shape C×H×W, broadcast over the batch) is 0.

    Elements where the mask is 1 pass through unchanged (selected, not multiplied).
    """
    keep = mask.bool()

    def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        if tuple(output.shape[1:]) != tuple(keep.shape):
            raise ValueError(f"mask shape {tuple(keep.shape)} does not match the layer output {tuple(output.shape[1:])}")
        k = keep.to(output.device)
        return torch.where(k, output, torch.zeros((), dtype=output.dtype, device=output.device))

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def activation_shape(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> tuple[int, ...]:
    """(C, H, W) of ``layer``'s output (default: the masking layer) for inputs like ``x`` (first image used)."""
    layer = layer if layer is not None else masking_layer(model)
    seen: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    try:
        model(x[:1])
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"the masking layer {type(layer).__name__} was not called by the model's forward")
    return seen[0]


__all__ = ["activation_shape", "draw_masks", "mask_stream", "masked_output"]
