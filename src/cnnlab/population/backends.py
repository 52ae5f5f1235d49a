"""Step backends: how one optimizer step of every member is computed with the engine's ``train_step``.

- ``vmap``: stacked leaves, ``vmap`` over ``train_step(differentiation="func")``; per-member learning rates
  are a tensor with in_dims 0. Fast on GPUs for small models; on CPU convolutions become grouped
  convolutions and run ~3x slower than a loop.
- ``loop``: ``train_step`` member after member on ordinary per-member states (the fastest eager path).

Both take either one batch shared by all members (x: (B, ...), in_dims None) or one batch per member
(x: (M, B, ...)), and per-member example weights w: (M, B). Members with dropout draw their masks from a
generator seeded per (member, step), so a run is reproducible; the two backends draw different masks.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from cnnlab.engine.step import StepSettings, TrainState, train_step
from cnnlab.population.bn import has_random_layers
from cnnlab.population.stack import meta_skeleton
from cnnlab.population.state import PopulationState
from cnnlab.utils.registry import Registry
from cnnlab.utils.seeding import derive_seed, fork_rng_seeded


class Stepper(ABC):
    """Owns the members' training state and advances it one step at a time."""

    name: str = ""

    def __init__(self, model: nn.Module, settings: StepSettings, state: PopulationState, *,
                 member_ids: Sequence[int] | None = None, seed: int = 0):
        if settings.autocast_dtype == torch.float16:
            raise ValueError("fp16 autocast needs a dynamic loss scale, which populations do not support; use bf16")
        self.skeleton = meta_skeleton(model)
        self.settings = settings
        self.member_ids = list(member_ids) if member_ids is not None else list(range(state.size))
        if len(self.member_ids) != state.size:
            raise ValueError(f"{len(self.member_ids)} member ids for a state of {state.size} members")
        self.seed = seed
        self.random = has_random_layers(model)

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def current_step(self) -> int:
        """Optimizer updates completed so far (the 0-based index of the next step)."""

    @abstractmethod
    def step(self, x: Tensor, y: Tensor, w: Tensor, lr: Sequence[float], *, shared: bool) -> tuple[Tensor, Tensor]:
        """One update of every member with learning rates ``lr`` (one float each); returns (loss (M,), correct (M,))."""

    @abstractmethod
    def eval_logits(self, x: Tensor) -> Tensor:
        """Eval-mode logits (M, B, C) of every member on one shared batch."""

    @abstractmethod
    def state(self) -> PopulationState:
        """The current state, stacked."""

    def _dropout_seed(self, member: int | None, step: int) -> int:
        return derive_seed(self.seed, f"dropout/{step}" if member is None else f"member/{member}/dropout/{step}")


class LoopStepper(Stepper):
    name = "loop"

    def __init__(self, model: nn.Module, settings: StepSettings, state: PopulationState, **kw):
        super().__init__(model, settings, state, **kw)
        self.states: list[TrainState] = [TrainState({n: t.clone() for n, t in s.params.items()},
                                                    {n: t.clone() for n, t in s.buffers.items()},
                                                    {n: {k: t.clone() for k, t in d.items()} for n, d in s.opt_state.items()},
                                                    s.step) for s in state.unstack()]
        self.frozen = [state.member_frozen(i) for i in range(state.size)]
        self.settings_m = [dataclasses.replace(settings, frozen=f) if f else settings for f in self.frozen]

    @property
    def size(self) -> int:
        return len(self.states)

    @property
    def current_step(self) -> int:
        return self.states[0].step

    def step(self, x, y, w, lr, *, shared):
        losses, correct = [], []
        self.skeleton.train()
        for i, st in enumerate(self.states):
            xi, yi = (x, y) if shared else (x[i], y[i])
            lr_i = lr[i]
            if self.random:
                with fork_rng_seeded(self._dropout_seed(self.member_ids[i], st.step)):
                    new, out = train_step(self.skeleton, st, xi, yi, w[i], lr_i, self.settings_m[i])
            else:
                new, out = train_step(self.skeleton, st, xi, yi, w[i], lr_i, self.settings_m[i])
            self.states[i] = new
            losses.append(out.loss)
            correct.append(out.correct)
        return torch.stack(losses), torch.stack(correct)

    @torch.no_grad()
    def eval_logits(self, x):
        self.skeleton.eval()
        out = []
        for st, f in zip(self.states, self.frozen):
            out.append(_eval_one(self.skeleton, {**f, **st.params}, st.buffers, x, self.settings.autocast_dtype))
        return torch.stack(out)

    def state(self):
        return PopulationState.stack(self.states, self.frozen if self.frozen and self.frozen[0] else None)


class VmapStepper(Stepper):
    name = "vmap"

    def __init__(self, model: nn.Module, settings: StepSettings, state: PopulationState, **kw):
        super().__init__(model, settings, state, **kw)
        self._state = PopulationState(
            {n: t.clone() for n, t in state.params.items()}, {n: t.clone() for n, t in state.buffers.items()},
            {n: {k: t.clone() for k, t in d.items()} for n, d in state.opt_state.items()}, state.step,
            {n: t.clone() for n, t in state.frozen.items()})

    @property
    def size(self) -> int:
        return self._state.size

    @property
    def current_step(self) -> int:
        return self._state.step

    def _member_step(self, step: int, denominator: float):
        skeleton, settings = self.skeleton, self.settings

        def f(params, buffers, opt_state, frozen, x, y, w, lr):
            s = dataclasses.replace(settings, frozen=frozen) if frozen else settings
            new, out = train_step(skeleton, TrainState(params, buffers, opt_state, step), x, y, w, lr, s,
                                  differentiation="func", denominator=denominator)
            return new.params, new.buffers, new.opt_state, out.loss, out.correct

        return f

    def step(self, x, y, w, lr, *, shared):
        st = self._state
        self.skeleton.train()
        xdim = None if shared else 0
        fn = vmap(self._member_step(st.step, float(w.shape[1])), in_dims=(0, 0, 0, 0, xdim, xdim, 0, 0), randomness="different")
        lr_t = torch.as_tensor(lr, dtype=torch.float32, device=w.device)
        if self.random:
            with fork_rng_seeded(self._dropout_seed(None, st.step)):
                p, b, o, loss, correct = fn(st.params, st.buffers, st.opt_state, st.frozen, x, y, w, lr_t)
        else:
            p, b, o, loss, correct = fn(st.params, st.buffers, st.opt_state, st.frozen, x, y, w, lr_t)
        self._state = PopulationState(p, b, o, st.step + 1, st.frozen)
        return loss, correct

    @torch.no_grad()
    def eval_logits(self, x):
        st = self._state
        self.skeleton.eval()
        amp = self.settings.autocast_dtype

        def one(params, buffers, frozen):
            return _eval_one(self.skeleton, {**frozen, **params}, buffers, x, amp)

        return vmap(one, in_dims=(0, 0, 0))(st.params, st.buffers, st.frozen)

    def state(self):
        return self._state


def _eval_one(skeleton: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
              autocast_dtype: torch.dtype | None) -> Tensor:
    if autocast_dtype is not None:
        with torch.autocast(device_type=x.device.type, dtype=autocast_dtype):
            return functional_call(skeleton, (params, buffers), (x,)).float()
    return functional_call(skeleton, (params, buffers), (x,)).float()


STEPPERS: Registry[type[Stepper]] = Registry("step backend", error=ValueError,
                                             hint="Register another with STEPPERS.register(name, cls).")
STEPPERS.register("loop", LoopStepper)
STEPPERS.register("vmap", VmapStepper)


def make_stepper(name: str, model: nn.Module, settings: StepSettings, state: PopulationState, **kw) -> Stepper:
    """The stepper registered as ``name`` (``loop`` or ``vmap``) over ``state``; ``kw``: ``member_ids``, ``seed``."""
    return STEPPERS.get(name)(model, settings, state, **kw)


def member_losses(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and correct counts per member from logits (M, B, C) and labels (B,)."""
    m, b, c = logits.shape
    loss = F.cross_entropy(logits.reshape(m * b, c), y.repeat(m), reduction="none").reshape(m, b).sum(1)
    correct = (logits.argmax(-1) == y).sum(1)
    return loss, correct
