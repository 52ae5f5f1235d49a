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

    def _update_one(self, p: Tensor, g: Tensor, s: dict[str, Tensor], lr, wd: float, step: int | Tensor):
        raise NotImplementedError

    def update_fast(self, params: Params, grads: Params, state: OptState, lr: float | Tensor, step: int | Tensor) -> tuple[Params, OptState]:
        """:meth:`update` for the no-graph step (no create_graph, no vmap): the same result, bit for bit; SGD and
        Adam do it with ``torch._foreach_*`` ops (a few kernels per group instead of ~8 per tensor)."""
        if type(self).update is not FunctionalOptimizer.update or not isinstance(lr, (int, float)) or not isinstance(step, int):
            return self.update(params, grads, state, lr, step)
        new_params: Params = dict(params)
        new_state: OptState = {}
        for g in self.groups:
            if not g.params:
                continue
            glr = lr * g.lr_scale if g.lr_scale != 1.0 else lr
            names = list(g.params)
            out_p, out_s = self._update_group([params[n] for n in names], [grads[n] for n in names],
                                              {k: [state[n][k] for n in names] for k in self.state_keys}, glr, g.weight_decay, step)
            for i, n in enumerate(names):
                new_params[n] = out_p[i]
                new_state[n] = {k: out_s[k][i] for k in out_s}
        return new_params, new_state

    def _update_group(self, ps: list[Tensor], gs: list[Tensor], ss: dict[str, list[Tensor]], lr: float, wd: float,
                      step: int) -> tuple[list[Tensor], dict[str, list[Tensor]]]:
        """One group's update over lists of tensors; by default tensor by tensor (subclasses may fuse it)."""
        out_p: list[Tensor] = []
        out_s: dict[str, list[Tensor]] = {k: [] for k in self.state_keys}
        for i, (p, g) in enumerate(zip(ps, gs)):
            new_p, new_s = self._update_one(p, g, {k: v[i] for k, v in ss.items()}, lr, wd, step)
            out_p.append(new_p)
            for k in out_s:
                out_s[k].append(new_s[k])
        return out_p, out_s


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

    def _update_group(self, ps, gs, ss, lr, wd, step):
        # the ops of _update_one in the same order (each elementwise op rounds as its single-tensor twin);
        # in place only on tensors made here (a + b == b + a bitwise, so operands may swap sides)
        if wd:
            d = torch._foreach_mul(ps, wd)
            torch._foreach_add_(d, gs)
        else:
            d = list(gs)
        if not self.momentum:
            return torch._foreach_sub(ps, torch._foreach_mul(d, lr)), {}
        buf = torch._foreach_mul(ss["momentum_buffer"], self.momentum)
        torch._foreach_add_(buf, d)
        if self.nesterov:
            upd = torch._foreach_mul(buf, self.momentum)
            torch._foreach_add_(upd, d)
            torch._foreach_mul_(upd, lr)
        else:
            upd = torch._foreach_mul(buf, lr)
        return torch._foreach_sub(ps, upd), {"momentum_buffer": buf}


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

    def _update_group(self, ps, gs, ss, lr, wd, step):
        # the ops of _update_one in the same order (each elementwise op rounds as its single-tensor twin)
        b1, b2 = self.betas
        if wd:
            if self.decoupled:
                ps = torch._foreach_mul(ps, 1 - lr * wd)
            else:
                gs = torch._foreach_add(gs, torch._foreach_mul(ps, wd))
        m = torch._foreach_lerp(ss["exp_avg"], gs, 1 - b1)
        v = torch._foreach_mul(ss["exp_avg_sq"], b2)
        gg = torch._foreach_mul(gs, 1 - b2)
        torch._foreach_mul_(gg, gs)
        torch._foreach_add_(v, gg)
        bc1, bc2_sqrt = 1 - b1**step, math.sqrt(1 - b2**step)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        upd = torch._foreach_mul(m, lr / bc1)
        torch._foreach_div_(upd, denom)
        return torch._foreach_sub(ps, upd), {"exp_avg": m, "exp_avg_sq": v}


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


class TorchOptimizerStep(FunctionalOptimizer):
    """A user's ``torch.optim.Optimizer`` that has no exact functional twin, run through its own ``.step()``.

    The step still computes the gradients functionally; this update writes them to the parameters' ``.grad``
    and steps the optimizer in place, so its rate and state are the optimizer's own. Not differentiable
    and not vmappable: MAGIC and populations refuse it (see :func:`require_functional`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, targets: Mapping[str, Tensor]):
        super().__init__([ParamGroup("torch", tuple(targets), 0.0)])
        self.torch_optimizer = optimizer
        self.targets = dict(targets)
        self.drive_lr = False  # True: set each group's rate from the step's lr (the config route's schedule)
        self._scales = [g["lr"] / optimizer.param_groups[0]["lr"] if optimizer.param_groups[0]["lr"] else 1.0
                        for g in optimizer.param_groups]

    def init_state(self, params: Params) -> OptState:
        return {n: {} for n in params}

    def update(self, params, grads, state, lr, step):
        with torch.no_grad():
            for n, g in grads.items():
                p = self.targets[n]
                if params[n].data_ptr() != p.data_ptr():
                    p.copy_(params[n])
                p.grad = g.to(p.dtype)
            if self.drive_lr:
                for group, scale in zip(self.torch_optimizer.param_groups, self._scales):
                    group["lr"] = float(lr) * scale
            opt_state = self.torch_optimizer.state
            for n in grads:  # a resumed run: hand the checkpointed state back to the optimizer once
                p = self.targets[n]
                if not opt_state.get(p) and state.get(n):
                    opt_state[p] = {k: v.clone() for k, v in state[n].items()}
            self.torch_optimizer.step()
            for n in grads:
                self.targets[n].grad = None
            new_state = {n: {k: v if isinstance(v, Tensor) else torch.tensor(v) for k, v in opt_state.get(self.targets[n], {}).items()}
                         for n in params}
        return {n: self.targets[n].detach() for n in params}, new_state


def require_functional(optimizer: FunctionalOptimizer, what: str) -> None:
    """Refuse an optimizer that only runs through its own ``.step()`` where ``what`` needs the functional update."""
    if isinstance(optimizer, TorchOptimizerStep):
        name = type(optimizer.torch_optimizer).__name__
        raise ValueError(f"{what} differentiates or vmaps the optimizer update, which torch.optim.{name}.step() "
                         f"(in place, opaque to autograd) does not allow; use torch.optim.SGD, Adam or AdamW "
                         f"(mapped exactly onto cnnlab's functional step) or optim.name: sgd | adam | adamw")


_TORCH_MAPPABLE = {"SGD": ("momentum", "nesterov"), "Adam": ("betas", "eps"), "AdamW": ("betas", "eps")}


def from_torch_optimizer(optimizer: torch.optim.Optimizer, named_params: Mapping[str, Tensor]) -> tuple[FunctionalOptimizer, list[str]]:
    """The functional twin of a torch SGD / Adam / AdamW (same arithmetic, one ParamGroup per torch group, the
    group's rate kept as a scale of group 0's), or a :class:`TorchOptimizerStep` for any other optimizer or
    setting (dampening, amsgrad, maximize, per-group momentum/betas). Returns it and the optimized names."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    by_id = {id(p): n for n, p in named_params.items()}
    names: list[list[str]] = []
    for i, g in enumerate(optimizer.param_groups):
        missing = [j for j, p in enumerate(g["params"]) if id(p) not in by_id]
        if missing:
            raise ValueError(f"optimizer param_groups[{i}] holds {len(missing)} tensor(s) that are not trainable "
                             f"parameters of the model; build the optimizer from model.parameters()")
        names.append([by_id[id(p)] for p in g["params"]])
    flat = [n for group in names for n in group]
    kind = type(optimizer).__name__
    groups = optimizer.param_groups
    shared = _TORCH_MAPPABLE.get(kind) if type(optimizer) in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW) else None
    exact = shared is not None and all(
        not g.get("maximize", False) and not g.get("amsgrad", False) and g.get("dampening", 0) == 0
        and not isinstance(g["lr"], Tensor) and all(g[k] == groups[0][k] for k in shared) for g in groups) and groups[0]["lr"] > 0
    if not exact:
        return TorchOptimizerStep(optimizer, {n: named_params[n] for n in flat}), flat
    base = groups[0]["lr"]
    pgroups = [ParamGroup(f"group{i}", tuple(ns), float(g["weight_decay"]), g["lr"] / base) for i, (g, ns) in enumerate(zip(groups, names))]
    g0 = groups[0]
    if kind == "SGD":
        return SGD(pgroups, momentum=g0["momentum"], nesterov=g0["nesterov"]), flat
    decoupled = kind == "AdamW" or bool(g0.get("decoupled_weight_decay", False))
    return Adam(pgroups, betas=tuple(g0["betas"]), eps=g0["eps"], decoupled=decoupled), flat


def sync_torch_optimizer(optimizer: torch.optim.Optimizer, functional: FunctionalOptimizer, targets: Mapping[str, Tensor],
                         state: OptState, step: int) -> None:
    """Write the functional optimizer's state into the torch optimizer's (so its ``state_dict()`` is current)."""
    if isinstance(functional, TorchOptimizerStep):
        return
    # the functional step stands in for optimizer.step(): tell torch's schedulers that updates happened
    optimizer._opt_called = True  # type: ignore[attr-defined]
    for n, s in state.items():
        if not s:
            continue
        entry = {k: v.detach().clone() for k, v in s.items()}
        if isinstance(functional, Adam):
            entry["step"] = torch.tensor(float(step))
        optimizer.state[targets[n]] = entry


def load_torch_optimizer_state(optimizer: torch.optim.Optimizer, functional: FunctionalOptimizer,
                               targets: Mapping[str, Tensor], state: OptState) -> int:
    """Start from the torch optimizer's existing state (a resumed optimizer); returns its step count."""
    step = 0
    if isinstance(functional, TorchOptimizerStep):
        return step
    for n, s in state.items():
        saved = optimizer.state.get(targets[n], {})
        for k in s:
            if k in saved and saved[k] is not None:
                s[k] = saved[k].detach().clone().to(s[k].device, s[k].dtype)
        if "step" in saved:
            step = max(step, int(float(saved["step"])))
    return step
