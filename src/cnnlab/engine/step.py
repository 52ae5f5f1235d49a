"""The one training step: (params, buffers, optimizer state, batch, per-example weights) -> new state.

Three users call this same function: the Trainer (fast path, no graph), MAGIC's replay (differentiates
through it with ``create_graph=True``) and populations (vmapped or looped). Loss is
``sum_i w_i * loss_i / batch_size``, so zero weights remove examples without changing batch layout.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cnnlab.engine.batchnorm import differentiable_bn_eval, explicit_bn_stats, recording_context, self_recording_bn, updated_buffers
from cnnlab.engine.optim import FunctionalOptimizer, OptState, Params

# the BatchNorm helpers live in cnnlab.engine.batchnorm; still importable from here
__all__ = ["StepOutput", "StepSettings", "TrainState", "differentiable_bn_eval", "eval_logits", "explicit_bn_stats",
           "forward_loss", "per_example_loss", "self_recording_bn", "train_step"]


@dataclass
class TrainState:
    """Everything a step reads and writes. ``step`` counts completed optimizer updates."""

    params: Params
    buffers: dict[str, Tensor]
    opt_state: OptState
    step: int = 0
    loss_scale: Tensor | None = None  # fp16 dynamic loss scale (None unless precision is fp16)
    good_steps: int = 0  # consecutive finite fp16 steps, for loss-scale growth

    @classmethod
    def from_model(cls, model: nn.Module, optimizer: FunctionalOptimizer, fp16: bool = False) -> "TrainState":
        params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        scale = torch.tensor(2.0**16, device=next(iter(params.values())).device) if fp16 else None
        return cls(params, buffers, optimizer.init_state(params), 0, scale)

    def frozen_params(self, model: nn.Module) -> dict[str, Tensor]:
        """Parameters of ``model`` that are not trained (e.g. airbench's frozen whitening)."""
        return {n: p.detach() for n, p in model.named_parameters() if n not in self.params}

    def tensors(self) -> dict:
        """Plain nested dict of tensors (for checkpoints loadable with ``weights_only=True``)."""
        return {"params": self.params, "buffers": self.buffers, "opt_state": self.opt_state, "step": self.step,
                "loss_scale": self.loss_scale, "good_steps": self.good_steps}

    @classmethod
    def from_tensors(cls, d: dict) -> "TrainState":
        return cls(d["params"], d["buffers"], d["opt_state"], int(d["step"]), d.get("loss_scale"), int(d.get("good_steps", 0)))


@dataclass(frozen=True)
class StepSettings:
    """What stays fixed across the steps of a run."""

    optimizer: FunctionalOptimizer
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    accumulation: int = 1
    autocast_dtype: torch.dtype | None = None
    bn_stats: str = "native"  # "native": BN updates running stats in place; "explicit": out of place, differentiable
    frozen: dict[str, Tensor] = field(default_factory=dict)
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None  # a user's batch-mean loss; None: weighted cross-entropy


@dataclass
class StepOutput:
    loss: Tensor  # weighted mean loss of the batch (detached unless create_graph)
    correct: Tensor  # number of correct top-1 predictions in the batch
    finite: Tensor | None  # fp16: whether the update was applied (None without loss scaling)
    pred: Tensor  # top-1 predictions of the batch (detached)


GradReducer = Callable[[list[Tensor]], None]


def _upcast(t: Tensor) -> Tensor:
    """Half-precision logits to float32 for the loss; float32/float64 unchanged (float64 replays stay exact)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def per_example_loss(logits: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    return F.cross_entropy(_upcast(logits), y, reduction="none", label_smoothing=label_smoothing)


def forward_loss(
    model: nn.Module,
    params: Params,
    buffers: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    w: Tensor,
    denominator: float,
    settings: StepSettings,
) -> tuple[Tensor, tuple[Tensor, dict[str, Tensor]]]:
    """Train-mode forward: (weighted loss, (logits, buffers after this batch))."""
    stats: dict[str, tuple[Tensor, Tensor]] = {}
    explicit = settings.bn_stats == "explicit"
    if not explicit:
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
    else:
        ctx = recording_context(model, stats)
    amp = (
        torch.autocast(device_type=x.device.type, dtype=settings.autocast_dtype)
        if settings.autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx, amp:
        logits = functional_call(model, ({**settings.frozen, **params}, buffers), (x,))
    if settings.criterion is None:
        loss = (w * per_example_loss(logits, y, settings.label_smoothing)).sum() / denominator
    else:  # a batch-mean loss, rescaled so micro-batches and data-parallel shards sum to the global mean
        loss = settings.criterion(_upcast(logits), y) * (x.shape[0] / denominator)
    new_buffers = updated_buffers(model, buffers, stats) if explicit else buffers
    return loss, (logits, new_buffers)


def _clip(grads: list[Tensor], max_norm: float) -> list[Tensor]:
    total = torch.sqrt(torch.stack([(_upcast(g) ** 2).sum() for g in grads]).sum())
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    return [g * coef.to(g.dtype) for g in grads]


def train_step(
    model: nn.Module,
    state: TrainState,
    x: Tensor,
    y: Tensor,
    w: Tensor,
    lr: float | Tensor,
    settings: StepSettings,
    *,
    create_graph: bool = False,
    differentiation: str = "autograd",
    denominator: float | None = None,
    grad_reducer: GradReducer | None = None,
    splits: list[int] | None = None,
) -> tuple[TrainState, StepOutput]:
    """One optimizer update on batch (x, y) with per-example weights w.

    ``create_graph``: keep the graph so the new state can be differentiated w.r.t. the old state and w
    (MAGIC). ``differentiation``: "autograd" (torch.autograd.grad, fastest eagerly) or "func"
    (torch.func.grad, needed under vmap). ``denominator``: the global batch size (data parallel: each
    rank holds a shard). ``grad_reducer``: sums gradients across ranks in place. ``splits``: sizes of the
    loader batches concatenated in (x, y, w) when gradients accumulate over N batches (each its own forward,
    BatchNorm statistics included); otherwise ``settings.accumulation`` equal micro-batches.
    """
    names = list(state.params)
    denom = float(denominator if denominator is not None else x.shape[0])
    if splits is not None:
        micro = list(zip(x.split(splits), y.split(splits), w.split(splits)))
    else:
        micro = _split(x, y, w, settings.accumulation)
    buffers = state.buffers
    grads: list[Tensor] | None = None
    loss_total = x.new_zeros((), dtype=torch.float32)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    preds: list[Tensor] = []
    scale = state.loss_scale

    for xm, ym, wm in micro:
        if differentiation == "func":
            def f(p, b, xm=xm, ym=ym, wm=wm):  # defaults bind this micro-batch
                loss, aux = forward_loss(model, p, b, xm, ym, wm, denom, settings)
                return (loss * scale if scale is not None else loss), (loss, aux)

            g_dict, (loss, (logits, buffers)) = torch.func.grad(f, has_aux=True)(state.params, buffers)
            g = [g_dict[n] for n in names]
        elif differentiation == "autograd":
            if create_graph:  # keep the graph to earlier states; lift plain leaves so grads exist
                params = {n: p if p.requires_grad else p.detach().requires_grad_(True) for n, p in state.params.items()}
            else:
                params = {n: p.detach().requires_grad_(True) for n, p in state.params.items()}
            with torch.enable_grad():
                loss, (logits, buffers) = forward_loss(model, params, buffers, xm, ym, wm, denom, settings)
                g = list(torch.autograd.grad(loss * scale if scale is not None else loss, [params[n] for n in names], create_graph=create_graph))
        else:
            raise ValueError(f"differentiation must be 'autograd' or 'func', got {differentiation!r}")
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
        loss_total = loss_total + (loss if create_graph else loss.detach())
        pred = logits.detach().argmax(1)
        preds.append(pred)
        correct = correct + (pred == ym).sum()

    assert grads is not None
    if grad_reducer is not None:
        grad_reducer(grads)
    finite = None
    if scale is not None:
        grads = [g / scale for g in grads]
        finite = torch.stack([torch.isfinite(g).all() for g in grads]).all()
    if settings.grad_clip is not None:
        grads = _clip(grads, settings.grad_clip)

    ctx = contextlib.nullcontext() if create_graph else torch.no_grad()
    with ctx:
        params_in = state.params if create_graph else {n: p.detach() for n, p in state.params.items()}
        update = settings.optimizer.update if create_graph or differentiation != "autograd" else settings.optimizer.update_fast
        new_params, new_opt = update(params_in, dict(zip(names, grads)), state.opt_state, lr, state.step + 1)
    if not create_graph:  # explicit BN stats carry the batch's graph; drop it so activations are freed
        buffers = {n: b.detach() for n, b in buffers.items()}
    new_state = TrainState(new_params, buffers, new_opt, state.step + 1, scale, state.good_steps)
    if scale is not None:
        new_state = _apply_loss_scaling(state, new_state, bool(finite))
    return new_state, StepOutput(loss_total, correct, finite, preds[0] if len(preds) == 1 else torch.cat(preds))


def _split(x: Tensor, y: Tensor, w: Tensor, parts: int) -> list[tuple[Tensor, Tensor, Tensor]]:
    if parts <= 1:
        return [(x, y, w)]
    if x.shape[0] < parts:
        raise ValueError(f"batch of {x.shape[0]} cannot be split into {parts} accumulation micro-batches")
    return list(zip(x.chunk(parts), y.chunk(parts), w.chunk(parts)))


def _apply_loss_scaling(old: TrainState, new: TrainState, finite: bool, growth_interval: int = 2000) -> TrainState:
    """GradScaler's rule: skip a non-finite step and halve the scale; double it after ``growth_interval`` good steps."""
    assert old.loss_scale is not None and new.loss_scale is not None, "loss scaling needs a loss scale (fp16)"
    if not finite:
        return TrainState(old.params, new.buffers, old.opt_state, old.step + 1, old.loss_scale * 0.5, 0)
    good = old.good_steps + 1
    scale = new.loss_scale * 2.0 if good >= growth_interval else new.loss_scale
    return TrainState(new.params, new.buffers, new.opt_state, new.step, scale, 0 if good >= growth_interval else good)


def eval_logits(model: nn.Module, params: Params, buffers: dict[str, Tensor], x: Tensor, frozen: dict[str, Tensor] | None = None,
                autocast_dtype: torch.dtype | None = None, tta_flip: bool = False) -> Tensor:
    """Eval-mode forward with the given state (``model`` must be in eval mode); optional flip TTA.

    Differentiable w.r.t. params and, when they require grad, the BatchNorm running statistics."""
    amp = torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else contextlib.nullcontext()
    state = ({**(frozen or {}), **params}, buffers)
    bn = differentiable_bn_eval(model) if any(b.requires_grad for b in buffers.values()) else contextlib.nullcontext()
    with amp, bn:
        out = _upcast(functional_call(model, state, (x,)))
        if tta_flip:
            out = 0.5 * (out + _upcast(functional_call(model, state, (x.flip(-1),))))
    return out
