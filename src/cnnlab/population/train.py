"""Population training: M members trained at once with the engine's ``train_step``.

Members may differ in initial weights (one model per member, or one shared), data order (one
``BatchLoader`` per member, or one shared: then every member sees the same batch and vmap uses in_dims
None for it), per-example weights (a weight matrix M x N; zero drops an example but keeps the batch
layout, so BatchNorm statistics still include it) and learning rate (a per-member multiplier of one
schedule). Backends (:mod:`cnnlab.population.backends`):

- ``vmap``: one vmapped step of all members; ``loop``: member after member in this process;
- ``procs``: the members split into chunks, each trained by the loop in its own process with one
  thread per core (members never interact, so this equals the loop up to float rounding);
- ``auto``: times one step of each candidate on the real batch (a few members) and picks the
  fastest estimated total, counting process start-up for ``procs``.

The pieces live beside this module: the checked arguments (:mod:`~cnnlab.population.plan`), training in
this process (:mod:`~cnnlab.population.members`) or in worker processes (:mod:`~cnnlab.population.procs`),
``auto``'s probe (:mod:`~cnnlab.population.choice`) and the resume files (:mod:`~cnnlab.population.checkpoints`);
their names are re-exported here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import Tensor, nn

from cnnlab.data.batches import BatchLoader
from cnnlab.engine.setup import apply_malloc
from cnnlab.engine.step import StepSettings
from cnnlab.population.checkpoints import CHECKPOINT_FORMAT
from cnnlab.population.checkpoints import record_choice as _record_choice
from cnnlab.population.checkpoints import recorded_choice as _recorded_choice
from cnnlab.population.choice import cached_choice as _cached_choice
from cnnlab.population.choice import choose_backend
from cnnlab.population.members import train_members
from cnnlab.population.plan import BACKENDS, EvalSet, LrFn, ProgressFn, TrainPlan, default_workers, make_plan
from cnnlab.population.procs import PROCESS_STARTUP_S, lr_picklable, train_processes
from cnnlab.population.stack import Population
from cnnlab.population.state import PopulationState

__all__ = ["BACKENDS", "CHECKPOINT_FORMAT", "EvalSet", "LrFn", "PROCESS_STARTUP_S", "PopulationResult", "ProgressFn",
           "TrainPlan", "choose_backend", "train_population"]


@dataclass
class PopulationResult:
    """The trained members and how they got there.

    ``state``: stacked final state (dim 0 = member). ``history``: one record per epoch with per-member
    lists (train_loss, train_acc, lr and, when evaluated, test_loss, test_acc). ``backend``: the backend
    that ran; ``choice``: how ``auto`` chose it (probe timings, estimates), else None.
    """

    state: PopulationState
    history: list[dict[str, Any]]
    backend: str
    choice: dict[str, Any] | None
    train_time_s: float
    model: nn.Module = field(repr=False)

    @property
    def size(self) -> int:
        return self.state.size

    def population(self) -> Population:
        return self.state.population(self.model)

    def members(self) -> list[nn.Module]:
        """Each trained member as an ordinary module in eval mode."""
        return self.population().unstack()

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def train_population(
    model: nn.Module | Sequence[nn.Module],
    loaders: BatchLoader | Sequence[BatchLoader],
    settings: StepSettings,
    *,
    epochs: int,
    lr: LrFn | float,
    lr_scale: Sequence[float] | Tensor | None = None,
    member_weights: Tensor | None = None,
    members: int | None = None,
    eval_set: EvalSet | None = None,
    eval_every: int = 1,
    backend: str = "auto",
    workers: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
) -> PopulationResult:
    """Train a population with the engine's step and return the stacked final state.

    Each member runs exactly what ``Trainer.fit`` runs for one model: for every batch of every epoch,
    ``train_step(model, state, x, y, w, lr, settings)`` with loss ``sum_i w_i * loss_i / batch_size``.

    - ``model``: the initial weights, one module shared by all members or one per member.
    - ``loaders``: the data order, one ``BatchLoader`` shared by all members (every member sees the same
      batches: the LDS / subset-training case) or one per member (equal sizes and batch size).
    - ``settings``: the engine's StepSettings (optimizer, label smoothing, clipping, ...). Frozen
      parameters are taken from each member's model.
    - ``lr``: the schedule, a function of the 0-based optimizer step (e.g. ``Schedule.lr``) or a constant;
      ``lr_scale``: one multiplier per member (member m uses ``lr(t) * lr_scale[m]``).
    - ``member_weights``: (M, N) per-example weights by dataset index, multiplied onto the loader's own
      weights; zero drops an example from member m's loss (the batch layout is unchanged, so BatchNorm
      statistics still include it). This is how many subset models are trained for LDS::

          parts = build_run(config)                       # shared init, order, augmentation
          res = train_population(parts.model, parts.train_loader, parts.settings,
                                 epochs=config.train.epochs, lr=parts.schedule.lr,
                                 member_weights=masks.float())           # masks: (K, N) bool
          models = res.members()

    - ``members``: M, needed only when nothing else says it.
    - ``eval_set``: evaluated (eval mode, per member) every ``eval_every`` epochs and after the last.
    - ``backend``: auto | vmap | loop | procs; ``workers``: processes for ``procs`` (default: CPU cores).
    - ``seed``: seeds the dropout masks (per member and step) of models that have dropout.
    - ``progress``: called with the number of member-steps just completed.
    - ``checkpoint_dir``: every ``checkpoint_every`` epochs each group of members trained together (all of
      them for vmap/loop, one chunk per worker for procs) saves its state and history there atomically;
      a later call with the same arguments continues each group from its last saved epoch (bitwise, with
      the same backend and workers, which a resumed ``auto`` reads back from the directory).
    """
    plan = make_plan(model, loaders, settings, epochs, lr, lr_scale, member_weights, members, eval_set, eval_every, seed)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    n_workers = default_workers(plan.size) if workers is None else workers
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if checkpoint_dir is not None:
        plan.checkpoint_dir, plan.checkpoint_every = Path(checkpoint_dir), checkpoint_every
    apply_malloc(plan.device)
    choice = None
    if backend == "auto":
        choice = _recorded_choice(plan)
        if choice is None:
            choice = _cached_choice(plan, n_workers)
            _record_choice(plan, choice, n_workers)
        backend = choice["backend"]
        n_workers = choice.get("workers", n_workers)
    t0 = time.perf_counter()
    ids = list(range(plan.size))
    if backend == "procs":
        if plan.device.type != "cpu":
            raise ValueError("backend 'procs' runs on the CPU; use vmap or loop on an accelerator")
        if not lr_picklable(plan):
            raise ValueError("backend 'procs' sends the lr schedule to worker processes: pass a module-level "
                             "function or a Schedule's .lr, not a lambda or closure")
        state, history = train_processes(plan, ids, n_workers, progress)
    else:
        state, history = train_members(plan, backend, ids, progress)
    template = model if isinstance(model, nn.Module) else list(model)[0]
    return PopulationResult(state, history, backend, choice, time.perf_counter() - t0, template)
