"""A TrainState as a replay handles it: its differentiable tensors in a fixed order, its size, moving it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cnnlab.engine.step import TrainState


@dataclass(frozen=True)
class StateLayout:
    """The differentiable tensors of a TrainState, in a fixed order: params, optimizer state, float buffers.

    Integer buffers (BatchNorm's ``num_batches_tracked``) and the step counter are carried along as
    constants: nothing is differentiated through them.
    """

    params: tuple[str, ...]
    opt: tuple[tuple[str, str], ...]
    buffers: tuple[str, ...]

    @classmethod
    def of(cls, state: TrainState) -> "StateLayout":
        return cls(tuple(state.params), tuple((n, k) for n, s in state.opt_state.items() for k in s),
                   tuple(n for n, b in state.buffers.items() if b.is_floating_point()))

    def flatten(self, state: TrainState) -> list[Tensor]:
        return ([state.params[n] for n in self.params] + [state.opt_state[n][k] for n, k in self.opt]
                + [state.buffers[n] for n in self.buffers])

    def rebuild(self, tensors: list[Tensor], like: TrainState) -> TrainState:
        """A TrainState with ``tensors`` in the differentiable slots and ``like``'s constants elsewhere."""
        it = iter(tensors)
        params = {n: next(it) for n in self.params}
        opt: dict[str, dict[str, Tensor]] = {n: {} for n in like.opt_state}
        for n, k in self.opt:
            opt[n][k] = next(it)
        buffers = dict(like.buffers)
        for n in self.buffers:
            buffers[n] = next(it)
        return TrainState(params, buffers, opt, like.step, like.loss_scale, like.good_steps)

    def leaves(self, state: TrainState) -> tuple[list[Tensor], TrainState]:
        """Fresh leaves requiring grad (detached from any earlier graph) and the state built on them."""
        leaves = [t.detach().requires_grad_(True) for t in self.flatten(state)]
        return leaves, self.rebuild(leaves, state)


def state_nbytes(state: TrainState) -> int:
    tensors = list(state.params.values()) + list(state.buffers.values())
    tensors += [t for s in state.opt_state.values() for t in s.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def move_state(state: TrainState, device: torch.device) -> TrainState:
    def mv(d):
        return {k: (mv(v) if isinstance(v, dict) else v.detach().to(device)) for k, v in d.items()}

    return TrainState(mv(state.params), mv(state.buffers), mv(state.opt_state), state.step, state.loss_scale, state.good_steps)
