"""A per-layer model summary: leaf modules with output shape, parameters and forward FLOPs."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


@torch.no_grad()
def layer_table(model: nn.Module, x: torch.Tensor, flops_by_module: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One row per leaf module that runs in ``model(x)``, in call order.

    ``flops_by_module`` is :class:`~cnnlab.profile.flops.FlopCount`'s ``by_module`` (keys
    ``ClassName.path``); FLOPs are for the batch of ``x``.
    """
    root = type(model).__name__
    flops = dict(flops_by_module or {})
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    handles = []

    def make_hook(name: str, module: nn.Module):
        def hook(mod: nn.Module, inputs: object, output: Any) -> None:
            if name in seen:
                return
            seen.add(name)
            shape = list(output.shape) if isinstance(output, torch.Tensor) else None
            rows.append({
                "layer": name, "type": type(module).__name__, "output_shape": shape,
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "flops": int(flops.get(f"{root}.{name}", 0)),
            })
        return hook

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(make_hook(name, module)))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows


__all__ = ["layer_table"]
