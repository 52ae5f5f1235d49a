"""FLOPs of a forward and a forward+backward pass with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts 2 × MACs for convolutions and matrix products (bias additions, BN, activations
and pooling are not counted). In the backward pass a conv/linear layer costs one forward's FLOPs for
the weight gradient plus one for the input gradient — except where the input needs no gradient (the
first layer on plain data), which costs only the weight gradient.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class FlopCount:
    """Total FLOPs, by aten operator, and by module path (``Model.layer.0``; the root holds the total)."""

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)


def _summarise(counter: FlopCounterMode) -> FlopCount:
    counts = counter.get_flop_counts()
    by_op: dict[str, int] = {str(op): int(v) for op, v in counts.get("Global", {}).items()}
    by_module = {name: int(sum(ops.values())) for name, ops in counts.items() if name != "Global"}
    return FlopCount(int(counter.get_total_flops()), by_op, by_module)


def count_flops(model: nn.Module, x: torch.Tensor, *, backward: bool = False) -> FlopCount:
    """FLOPs of ``model(x)`` (and of ``out.sum().backward()`` when ``backward``), counted by FlopCounterMode.

    The forward runs in the model's current mode; with ``backward`` the parameter gradients are
    cleared afterwards, so counting leaves the model as it was.
    """
    with FlopCounterMode(display=False) as counter:
        if backward:
            with torch.enable_grad():
                model(x).float().sum().backward()
        else:
            with torch.no_grad():
                model(x)
    if backward:
        model.zero_grad(set_to_none=True)
    return _summarise(counter)


__all__ = ["FlopCount", "count_flops"]
