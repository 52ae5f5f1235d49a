"""What a population training run is: the members, their data and settings, checked once (:class:`TrainPlan`).

A plan is picklable, so the ``procs`` backend sends it whole to its worker processes; ``TrainPlan.batch``
gives the (x, y, w) of one step for any group of members, shared batch or one per member.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from cnnlab.data.augment import Augment
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.step import StepSettings, TrainState
from cnnlab.population.state import PopulationState

BACKENDS = ("auto", "vmap", "loop", "procs")
LrFn = Callable[[int], float]
ProgressFn = Callable[[int], None]


@dataclass
class EvalSet:
    """Held-out data evaluated after epochs: uint8 images, labels and the eval transform.

    ``augment``: its deterministic ``eval_transform`` (channels, resize, normalisation) is applied;
    None means x / 255.
    """

    images: Tensor
    labels: Tensor
    augment: Augment | None = None
    batch_size: int = 1000
    channels_last: bool = False

    def batches(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, len(self.labels), self.batch_size):
            raw = self.images[s:s + self.batch_size].to(device)
            if self.augment is not None:
                x = self.augment.eval_transform(raw, channels_last=self.channels_last)
            else:
                x = raw.float() / 255.0
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[s:s + self.batch_size].to(device)


@dataclass
class TrainPlan:
    """Everything needed to train the members (picklable: sent whole to worker processes)."""

    models: list[nn.Module]
    loaders: list[BatchLoader]
    settings: StepSettings
    epochs: int
    lr: LrFn | float
    lr_scale: list[float]
    member_weights: Tensor | None
    eval_set: EvalSet | None
    eval_every: int
    seed: int
    size: int
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1

    @property
    def shared_batch(self) -> bool:
        return len(self.loaders) == 1

    @property
    def device(self) -> torch.device:
        return self.loaders[0].device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders[0])

    def lr_at(self, step: int) -> float:
        return float(self.lr(step)) if callable(self.lr) else float(self.lr)

    def initial_state(self, ids: Sequence[int]) -> PopulationState:
        opt = self.settings.optimizer
        if len(self.models) == 1:
            m = self.models[0]
            st = TrainState.from_model(m, opt)
            frozen = {n: p.detach() for n, p in m.named_parameters() if not p.requires_grad}
            return PopulationState.stack([st] * len(ids), [frozen] * len(ids) if frozen else None)
        states, frozens = [], []
        for i in ids:
            m = self.models[i]
            states.append(TrainState.from_model(m, opt))
            frozens.append({n: p.detach() for n, p in m.named_parameters() if not p.requires_grad})
        return PopulationState.stack(states, frozens if frozens[0] else None)

    def batch(self, epoch: int, i: int, ids: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, w) of batch i: x/y shared (B, ...) or per member (M, B, ...); w always (M, B)."""
        mw = self.member_weights
        if self.shared_batch:
            b = self.loaders[0].batch(epoch, i)
            if mw is None:
                w = b.w.expand(len(ids), -1)
            else:
                w = b.w[None] * mw.index_select(0, torch.as_tensor(list(ids), device=mw.device))[:, b.index]
            return b.x, b.y, w
        bs = [self.loaders[m].batch(epoch, i) for m in ids]
        ws = [b.w if mw is None else b.w * mw[m, b.index] for m, b in zip(ids, bs)]
        return torch.stack([b.x for b in bs]), torch.stack([b.y for b in bs]), torch.stack(ws)


def make_plan(model: nn.Module | Sequence[nn.Module], loaders: BatchLoader | Sequence[BatchLoader], settings: StepSettings,
              epochs: int, lr: LrFn | float, lr_scale: Sequence[float] | Tensor | None, member_weights: Tensor | None,
              members: int | None, eval_set: EvalSet | None, eval_every: int, seed: int) -> TrainPlan:
    """Check ``train_population``'s arguments against each other (one population size, matching loaders) and
    gather them into a :class:`TrainPlan`."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    loader_list = [loaders] if isinstance(loaders, BatchLoader) else list(loaders)
    if not models:
        raise ValueError("model: give one module or a non-empty list of modules")
    if not loader_list:
        raise ValueError("loaders: give one BatchLoader or a non-empty list")
    sizes: dict[str, int] = {}
    if len(models) > 1:
        sizes["model (one per member)"] = len(models)
    if len(loader_list) > 1:
        sizes["loaders (one per member)"] = len(loader_list)
    if member_weights is not None:
        if member_weights.ndim != 2:
            raise ValueError(f"member_weights must be (members, N), got shape {tuple(member_weights.shape)}")
        sizes["member_weights rows"] = member_weights.shape[0]
    scale: list[float] | None = None
    if lr_scale is not None:
        scale = [float(v) for v in (lr_scale.tolist() if isinstance(lr_scale, Tensor) else lr_scale)]
        sizes["lr_scale"] = len(scale)
    if members is not None:
        sizes["members"] = members
    if len(set(sizes.values())) > 1:
        raise ValueError("the population size is ambiguous: " + ", ".join(f"{k} = {v}" for k, v in sizes.items()))
    size = next(iter(sizes.values())) if sizes else 1
    if size < 1:
        raise ValueError(f"a population needs at least one member, got {size}")
    first = loader_list[0]
    for j, ld in enumerate(loader_list[1:], start=1):
        if (len(ld), ld.batch_size, ld.num_examples, ld.device) != (len(first), first.batch_size, first.num_examples, first.device):
            raise ValueError(f"loader {j} differs from loader 0 in batches per epoch, batch size, examples or device; "
                             "per-member loaders must share all of them (only the seed may differ)")
        if ld.world_size != 1:
            raise ValueError("population loaders must be single-process (world_size 1)")
    if member_weights is not None:
        n = first.images.shape[0]
        if member_weights.shape[1] != n:
            raise ValueError(f"member_weights must have one column per dataset example ({n}), got {member_weights.shape[1]}")
        if not torch.isfinite(member_weights).all():
            raise ValueError("member_weights must be finite")
        member_weights = member_weights.detach().to(first.device, torch.float32)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    models = [m.to(first.device) for m in models]
    return TrainPlan(models, loader_list, settings, epochs, lr, scale or [1.0] * size, member_weights, eval_set,
                 eval_every, seed, size)


def default_workers(size: int) -> int:
    """Worker processes for ``size`` members by default: one per usable CPU core, at most one per member."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, size))
