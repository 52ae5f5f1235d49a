"""BatchNorm helpers for populations: batch-statistics forwards and running-statistics recalibration."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call


def batchnorm_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def has_random_layers(model: nn.Module) -> bool:
    """Whether a train-mode forward draws random numbers (dropout with p > 0)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())


@contextlib.contextmanager
def bn_batch_statistics(model: nn.Module) -> Iterator[None]:
    """Every BatchNorm layer normalises with the current batch's statistics and leaves its running
    statistics alone, whatever the model's train/eval flag (the other layers keep that flag).

    Evolution strategies evaluate perturbed weights whose running statistics mean nothing; batch
    statistics also let many members share one (unbatched) buffer set under vmap.
    """
    saved = [(m, m.training, m.track_running_stats) for m in batchnorm_modules(model)]
    for m, _, _ in saved:
        m.training = True
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            m.track_running_stats = track


@torch.no_grad()
def recalibrate_bn(model: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
                   batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Running statistics re-estimated from ``batches`` as a cumulative average (BatchNorm momentum None).

    Returns new buffers; ``params``/``buffers`` are not modified. ``model`` may be a meta skeleton.
    """
    bns = batchnorm_modules(model)
    new = {n: b.clone() for n, b in buffers.items()}
    if not bns:
        return new
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            new[f"{name}.running_mean"].zero_()
            new[f"{name}.running_var"].fill_(1.0)
            new[f"{name}.num_batches_tracked"].zero_()
    saved = [(m, m.momentum, m.training) for m in bns]
    was_training = model.training
    model.train()
    try:
        for m, _, _ in saved:
            m.momentum = None
        for x in batches:
            functional_call(model, (params, new), (x,))
    finally:
        for m, momentum, training in saved:
            m.momentum = momentum
            m.training = training
        model.train(was_training)
    return new
