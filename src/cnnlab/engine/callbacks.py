"""Trainer callbacks: a small public API (subclass ``Callback``) plus EarlyStopping and ModelCheckpoint."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class Callback:
    """Hooks called by the Trainer. Set ``trainer.should_stop = True`` to stop after this epoch.

    ``state_dict``/``load_state_dict`` let a resumed run continue with the callback's memory intact.
    """

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_batch_end(self, trainer: "Trainer", step: int) -> None:
        """After every optimizer step (``step`` = steps done); keep it cheap: it runs once per batch."""

    def on_step_end(self, trainer: "Trainer", step: int, loss: float | None) -> None:
        """After each logged step (every ``train.log_every`` batches and at epoch ends), with the recent mean loss."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: "Trainer", result: dict[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _monitored(metrics: dict[str, float], monitor: str) -> float:
    if monitor not in metrics:
        raise KeyError(f"monitored metric {monitor!r} is not logged; available: {', '.join(sorted(metrics))}")
    return float(metrics[monitor])


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (after ``warmup_epochs``)."""

    def __init__(self, monitor: str = "test_loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0, warmup_epochs: int = 0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.monitor, self.mode, self.patience, self.min_delta, self.warmup_epochs = monitor, mode, patience, min_delta, warmup_epochs
        self.best: float | None = None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch < self.warmup_epochs:
            return
        value = _monitored(metrics, self.monitor)
        if math.isfinite(value) and _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.stopped_epoch = epoch
                trainer.should_stop = True

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state):
        self.best, self.bad_epochs, self.stopped_epoch = state["best"], state["bad_epochs"], state["stopped_epoch"]


class ModelCheckpoint(Callback):
    """Keep the ``top_k`` checkpoints (with optimizer state) ranked by ``monitor`` in ``checkpoints/``."""

    def __init__(self, monitor: str = "test_acc", mode: str = "max", top_k: int = 1):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.monitor, self.mode, self.top_k = monitor, mode, top_k
        self.kept: list[tuple[float, int, str]] = []  # (value, epoch, filename)

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.top_k == 0 or trainer.run_dir is None or not trainer.is_main:
            return
        value = _monitored(metrics, self.monitor)
        if not math.isfinite(value):
            return
        ranked = sorted(self.kept, key=lambda t: t[0], reverse=self.mode == "max")
        if len(ranked) >= self.top_k and not _improved(value, ranked[-1][0], self.mode):
            return
        name = f"epoch{epoch:04d}-{self.monitor}={value:.4f}.pt"
        trainer.save_checkpoint(trainer.run_dir / "checkpoints" / name, epoch)
        self.kept.append((value, epoch, name))
        ranked = sorted(self.kept, key=lambda t: t[0], reverse=self.mode == "max")
        for _, _, old in ranked[self.top_k:]:
            (trainer.run_dir / "checkpoints" / old).unlink(missing_ok=True)
        self.kept = ranked[: self.top_k]

    @property
    def best_path(self) -> str | None:
        return self.kept[0][2] if self.kept else None

    def state_dict(self):
        return {"kept": [list(k) for k in self.kept]}

    def load_state_dict(self, state):
        self.kept = [tuple(k) for k in state["kept"]]
