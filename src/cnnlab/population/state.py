"""The training state of a population: M engine ``TrainState``s stacked along a leading member dimension."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from cnnlab.engine.step import TrainState
from cnnlab.population.stack import Population, meta_skeleton


def _stack(ts: Sequence[Tensor]) -> Tensor:
    return torch.stack([t.detach() for t in ts])


@dataclass
class PopulationState:
    """Stacked params / buffers / optimizer state (dim 0 = member) plus each member's frozen parameters.

    ``step`` counts completed optimizer updates; all members always share it.
    """

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    opt_state: dict[str, dict[str, Tensor]]
    step: int = 0
    frozen: dict[str, Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    @classmethod
    def stack(cls, states: Sequence[TrainState], frozen: Sequence[dict[str, Tensor]] | None = None) -> "PopulationState":
        if not states:
            raise ValueError("stack needs at least one TrainState")
        steps = {s.step for s in states}
        if len(steps) != 1:
            raise ValueError(f"members are at different steps {sorted(steps)}; a population steps together")
        if any(s.loss_scale is not None for s in states):
            raise ValueError("fp16 loss scaling is not supported in populations (use bf16 or fp32)")
        s0 = states[0]
        frozen = list(frozen) if frozen is not None else [{} for _ in states]
        return cls(
            params={n: _stack([s.params[n] for s in states]) for n in s0.params},
            buffers={n: _stack([s.buffers[n] for s in states]) for n in s0.buffers},
            opt_state={n: {k: _stack([s.opt_state[n][k] for s in states]) for k in s0.opt_state[n]} for n in s0.opt_state},
            step=s0.step,
            frozen={n: _stack([f[n] for f in frozen]) for n in frozen[0]} if frozen and frozen[0] else {},
        )

    def member(self, i: int) -> TrainState:
        """Member ``i``'s TrainState (views into the stacked tensors)."""
        return TrainState({n: t[i] for n, t in self.params.items()}, {n: t[i] for n, t in self.buffers.items()},
                          {n: {k: t[i] for k, t in s.items()} for n, s in self.opt_state.items()}, self.step)

    def member_frozen(self, i: int) -> dict[str, Tensor]:
        return {n: t[i] for n, t in self.frozen.items()}

    def unstack(self) -> list[TrainState]:
        return [self.member(i) for i in range(self.size)]

    def select(self, members: Sequence[int]) -> "PopulationState":
        idx = torch.as_tensor(list(members), dtype=torch.long, device=next(iter(self.params.values())).device)

        def sel(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {n: t.index_select(0, idx) for n, t in d.items()}

        return PopulationState(sel(self.params), sel(self.buffers), {n: sel(s) for n, s in self.opt_state.items()},
                               self.step, sel(self.frozen))

    @classmethod
    def concat(cls, parts: Sequence["PopulationState"]) -> "PopulationState":
        """Members of several states, in order (e.g. the chunks trained by worker processes)."""
        if len({p.step for p in parts}) != 1:
            raise ValueError("cannot concatenate population states at different steps")

        def cat(ds: list[dict[str, Tensor]]) -> dict[str, Tensor]:
            return {n: torch.cat([d[n] for d in ds]) for n in ds[0]}

        p0 = parts[0]
        return cls(cat([p.params for p in parts]), cat([p.buffers for p in parts]),
                   {n: cat([p.opt_state[n] for p in parts]) for n in p0.opt_state}, p0.step,
                   cat([p.frozen for p in parts]) if p0.frozen else {})

    def to(self, device: str | torch.device) -> "PopulationState":
        def mv(d: dict[str, Tensor]) -> dict[str, Tensor]:
            return {n: t.to(device) for n, t in d.items()}

        return PopulationState(mv(self.params), mv(self.buffers), {n: mv(s) for n, s in self.opt_state.items()}, self.step, mv(self.frozen))

    def tensors(self) -> dict:
        """Plain nested dict (for checkpoints loadable with ``weights_only=True``)."""
        return {"params": self.params, "buffers": self.buffers, "opt_state": self.opt_state, "step": self.step, "frozen": self.frozen}

    @classmethod
    def from_tensors(cls, d: dict) -> "PopulationState":
        return cls(d["params"], d["buffers"], d["opt_state"], int(d["step"]), d.get("frozen", {}))

    def population(self, model: nn.Module) -> Population:
        """The trained members as a :class:`Population` (``model``: any module of the architecture)."""
        return Population(meta_skeleton(model), {**self.frozen, **self.params}, dict(self.buffers), list(self.params))
