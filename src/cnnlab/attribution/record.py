"""Keeping, while a run trains, the states a later MAGIC replay's first pass would recompute."""

from __future__ import annotations

import torch

from cnnlab.attribution.checkpointing import Checkpointing, make_checkpointing
from cnnlab.attribution.states import move_state
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.step import TrainState


class RecordReplayStates(Callback):
    """Keeps the training states a later replay's first pass needs (its checkpoint positions and the final
    state), so that MAGIC on a run trained in this process does not run the whole training again.

    The positions follow ``checkpointing``/``tree_k`` as :class:`Replay` would (k states for log, ~sqrt(T)
    for sqrt, all T for all). Parameters and optimizer state are kept by reference (the step returns new
    tensors); buffers are copied, as native BatchNorm updates its running statistics in place.
    A resumed run lacks the states before its checkpoint: nothing is recorded and the replay runs its own
    first pass. ``offload``: keep them in CPU memory (as ``Replay(offload=True)`` does with its states).
    """

    def __init__(self, checkpointing: str | Checkpointing = "log", tree_k: int = 4, *, offload: bool = False):
        self.strategy = make_checkpointing(checkpointing, tree_k)
        self.offload = offload
        self.states: dict[int, TrainState] = {}
        self._keep: set[int] = set()

    def on_train_start(self, trainer) -> None:
        total = len(trainer.parts.train_loader) * trainer.config.train.epochs
        first = self.strategy.split(0, total, 0)
        self.states.clear()
        if trainer.state.step > 0:  # resumed: the early states are gone, the replay will run its first pass
            self._keep = set()
            return
        self._keep = set(range(total) if first is None else first) | {total}
        self._record(trainer.state)

    def on_batch_end(self, trainer, step: int) -> None:
        self._record(trainer.state)

    def _record(self, state: TrainState) -> None:
        if state.step in self._keep:
            device = torch.device("cpu") if self.offload else next(iter(state.params.values())).device
            kept = move_state(state, device)  # detached (the same storage when the device is the same)
            kept.buffers = {k: v.clone() if v.data_ptr() == state.buffers[k].data_ptr() else v
                            for k, v in kept.buffers.items()}
            self.states[state.step] = kept
