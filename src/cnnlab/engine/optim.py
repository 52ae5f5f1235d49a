"""Functional optimizers: (params, grads, state, lr) -> (new params, new state), out of place.

Out-of-place updates are what let one step serve three users: the fast path (run under no_grad), the
MAGIC replay (differentiated through with create_graph) and populations (vmapped). The arithmetic
follows torch.optim's single-tensor SGD / Adam / AdamW.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import Tensor

Params = dict[str, Tensor]
OptState = dict[str, dict[str, Tensor]]


@dataclass(frozen=True)
class ParamGroup:
    """Parameters sharing a weight decay and a learning-rate scale."""

    name: str
    params: tuple[str, ...]
    weight_decay: float
    lr_scale: float = 1.0


def build_param_groups(
    named_params: Mapping[str, Tensor],
    weight_decay: float,
    *,
    no_decay_1d: bool = True,
    bias_lr_scale: float = 1.0,
) -> list[ParamGroup]:
    """Split trainable parameters into a decay group (weights of rank >= 2) and a no-decay group.

    The no-decay group holds biases, BatchNorm affine parameters and other 1-D tensors; it gets zero
    weight decay when ``no_decay_1d`` and its learning rate scaled by ``bias_lr_scale``.
    """
    decay = tuple(n for n, p in named_params.items() if p.ndim >= 2 or not no_decay_1d)
    other = tuple(n for n, p in named_params.items() if p.ndim < 2 and no_decay_1d)
    groups = [ParamGroup("decay", decay, weight_decay, 1.0)]
    if other:
        groups.append(ParamGroup("no_decay", other, 0.0, bias_lr_scale))
    return groups


class FunctionalOptimizer:
    """Base class: ``init_state(params)`` and ``update(params, grads, state, lr, step)``."""

    state_keys: tuple[str, ...] = ()

    def __init__(self, groups: list[ParamGroup]):
        self.groups = groups
        seen: set[str] = set()
        for g in groups:
            dup = seen.intersection(g.params)
            if dup:
                raise ValueError(f"parameter(s) {sorted(dup)} appear in more than one group")
            seen.update(g.params)

    def init_state(self, params: Params) -> OptState:
        return {n: {k: torch.zeros_like(params[n]) for k in self.state_keys} for g in self.groups for n in g.params}

    def update(self, params: Params, grads: Params, state: OptState, lr: float | Tensor, step: int | Tensor) -> tuple[Params, OptState]:
        """Return new params and state; ``step`` counts from 1 (the update being made)."""
        new_params: Params = dict(params)
        new_state: OptState = {}
        for g in self.groups:
            glr = lr * g.lr_scale if g.lr_scale != 1.0 else lr
            for n in g.params:
                new_params[n], new_state[n] = self._update_one(params[n], grads[n], state[n], glr, g.weight_decay, step)
        return new_params, new_state

    def _update_one(self, p: Tensor, g: Tensor, s: dict[str, Tensor], lr, wd: float, step: int):
        raise NotImplementedError


class SGD(FunctionalOptimizer):
    """torch.optim.SGD (dampening 0): coupled weight decay, heavy-ball or Nesterov momentum."""

    def __init__(self, groups: list[ParamGroup], momentum: float = 0.0, nesterov: bool = False):
        super().__init__(groups)
        if nesterov and momentum <= 0:
            raise ValueError("nesterov momentum needs momentum > 0")
        self.momentum, self.nesterov = momentum, nesterov
        self.state_keys = ("momentum_buffer",) if momentum else ()

    def _update_one(self, p, g, s, lr, wd, step):
        d = g + wd * p if wd else g
        if not self.momentum:
            return p - lr * d, {}
        buf = self.momentum * s["momentum_buffer"] + d
        if self.nesterov:
            d = d + self.momentum * buf
        else:
            d = buf
        return p - lr * d, {"momentum_buffer": buf}


class Adam(FunctionalOptimizer):
    """torch.optim.Adam (L2 weight decay added to the gradient) or, with ``decoupled``, AdamW."""

    state_keys = ("exp_avg", "exp_avg_sq")

    def __init__(self, groups: list[ParamGroup], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decoupled: bool = False):
        super().__init__(groups)
        self.betas, self.eps, self.decoupled = betas, eps, decoupled

    def _update_one(self, p, g, s, lr, wd, step):
        b1, b2 = self.betas
        if wd:
            if self.decoupled:
                p = p * (1 - lr * wd)
            else:
                g = g + wd * p
        m = torch.lerp(s["exp_avg"], g, 1 - b1)
        v = s["exp_avg_sq"] * b2 + (1 - b2) * g * g
        if isinstance(step, int):
            bc1, bc2_sqrt = 1 - b1**step, math.sqrt(1 - b2**step)
        else:  # a compiled replay's graph input: float64 0-d tensors, as precise as the Python floats above
            s64 = step.to(torch.float64)
            bc1, bc2_sqrt = 1 - b1**s64, (1 - b2**s64).sqrt()
        denom = v.sqrt() / bc2_sqrt + self.eps
        return p - (lr / bc1) * m / denom, {"exp_avg": m, "exp_avg_sq": v}


def make_optimizer(name: str, groups: list[ParamGroup], *, momentum: float = 0.0, nesterov: bool = False,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> FunctionalOptimizer:
    """Optimizer registry: sgd | adam | adamw."""
    if name == "sgd":
        return SGD(groups, momentum=momentum, nesterov=nesterov)
    if name == "adam":
        return Adam(groups, betas=betas, eps=eps)
    if name == "adamw":
        return Adam(groups, betas=betas, eps=eps, decoupled=True)
    raise ValueError(f"optimizer must be one of sgd, adam, adamw; got {name!r}")
