"""BatchNorm under the functional step, in one place: which layers are BatchNorm, batch statistics recorded
and applied out of place (differentiable, vmap-safe), eval-mode BatchNorm differentiable w.r.t. its running
statistics, batch-statistics forwards and running-statistics recalibration (populations, evolution strategies).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

BatchNorm = nn.modules.batchnorm._BatchNorm

_SINK = "_cnnlab_bn_sink"  # attribute a self-recording BatchNorm layer writes its batch statistics to
_SELF_RECORDING = "_cnnlab_bn_self_recording"  # set on a model whose BatchNorm layers record themselves


def batchnorm_modules(model: nn.Module) -> list[BatchNorm]:
    """Every BatchNorm layer of ``model`` (any dimensionality), in module order."""
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def tracking_batchnorms(model: nn.Module) -> dict[str, BatchNorm]:
    """The BatchNorm layers that keep running statistics, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, BatchNorm) and m.track_running_stats}


def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, unbiased var) over every dimension but the channels (dim 1): what BatchNorm's update uses."""
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.ndim)], correction=1)
    return mean, var


# ----------------------------------------------------------------- training: batch statistics out of place
@contextlib.contextmanager
def explicit_bn_stats(model: nn.Module, out: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Run BatchNorm layers on batch statistics without their in-place running-stat update, and record
    each layer's (mean, unbiased var) in ``out`` so the caller can update running stats out of place
    (differentiably, and vmap- and func.grad-safe)."""
    bns = tracking_batchnorms(model)
    handles = []

    def make_hook(name: str):
        def hook(mod, inputs, output):
            out[name] = _batch_stats(inputs[0])

        return hook

    for n, m in bns.items():
        m.track_running_stats = False
        handles.append(m.register_forward_hook(make_hook(n)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in bns.values():
            m.track_running_stats = True


def _self_recording_bn_forward(self: BatchNorm, x: Tensor, *, name: str) -> Tensor:
    sink = getattr(self, _SINK, None)
    if sink is None or not self.training:
        return type(self).forward(self, x)
    sink[name] = _batch_stats(x)
    return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


def self_recording_bn(model: nn.Module) -> nn.Module:
    """Let ``model``'s BatchNorm layers report their batch statistics themselves in explicit mode.

    Same arithmetic as :func:`explicit_bn_stats`, but with no hooks registered per step, which
    torch.compile cannot trace. Changes ``model`` in place (give it a private copy) and returns it.
    """
    for name, m in tracking_batchnorms(model).items():
        m.forward = functools.partial(_self_recording_bn_forward, m, name=name)  # type: ignore[method-assign]
    setattr(model, _SELF_RECORDING, True)
    return model


def is_self_recording(model: nn.Module) -> bool:
    """Whether :func:`self_recording_bn` prepared ``model``."""
    return bool(getattr(model, _SELF_RECORDING, False))


@contextlib.contextmanager
def bn_sinks(model: nn.Module, out: dict[str, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """While active, a :func:`self_recording_bn` model's layers write their batch statistics into ``out``."""
    bns = tracking_batchnorms(model).values()
    for m in bns:
        setattr(m, _SINK, out)
    try:
        yield
    finally:
        for m in bns:
            delattr(m, _SINK)


def recording_context(model: nn.Module, out: dict[str, tuple[Tensor, Tensor]]) -> contextlib.AbstractContextManager:
    """The context that records ``model``'s batch statistics into ``out``: sinks for a self-recording model,
    forward hooks otherwise."""
    return bn_sinks(model, out) if is_self_recording(model) else explicit_bn_stats(model, out)


def updated_buffers(model: nn.Module, buffers: dict[str, Tensor], stats: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """New buffers after BatchNorm's running-statistics update with the recorded batch ``stats`` (out of place;
    momentum None is the cumulative average, as torch's)."""
    new = dict(buffers)
    bns = tracking_batchnorms(model)
    for n, (mean, var) in stats.items():
        m = bns[n]
        count = buffers[f"{n}.num_batches_tracked"] + 1
        mom = m.momentum if m.momentum is not None else 1.0 / count.item()
        new[f"{n}.running_mean"] = (1 - mom) * buffers[f"{n}.running_mean"] + mom * mean.to(buffers[f"{n}.running_mean"].dtype)
        new[f"{n}.running_var"] = (1 - mom) * buffers[f"{n}.running_var"] + mom * var.to(buffers[f"{n}.running_var"].dtype)
        new[f"{n}.num_batches_tracked"] = count
    return new


# ----------------------------------------------------------------- evaluation
def _bn_eval_formula(m: BatchNorm, x: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - m.running_mean.reshape(shape)) * torch.rsqrt(m.running_var + m.eps).reshape(shape)
    if m.affine:
        y = y * m.weight.reshape(shape) + m.bias.reshape(shape)
    return y


@contextlib.contextmanager
def differentiable_bn_eval(model: nn.Module) -> Iterator[None]:
    """Eval-mode BatchNorm as an explicit formula, differentiable w.r.t. the running statistics
    (torch's native kernel is not), so a measurement can see how training moved them."""
    bns = list(tracking_batchnorms(model).values())
    for m in bns:
        m.forward = (lambda x, m=m: _bn_eval_formula(m, x))  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m in bns:
            del m.forward


# ----------------------------------------------------------------- populations
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
    for name in tracking_batchnorms(model):
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
