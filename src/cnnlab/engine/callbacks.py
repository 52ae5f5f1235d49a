"""Trainer callbacks: a small public API (subclass ``Callback``) plus EarlyStopping, ModelCheckpoint and
LRSchedulerCallback, each also usable standalone in a hand-written loop (the ResoMap seed's API)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.utils.io import save_torch_atomic, write_json_atomic

if TYPE_CHECKING:
    from cnnlab.engine.config import RunConfig
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
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs (after ``warmup_epochs``).

    As a Trainer callback it reads ``monitor`` from each epoch's metrics; standalone (the ResoMap loop),
    call ``step(epoch, value)`` each epoch and check ``stop``.
    """

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int = 5, min_delta: float = 0.0,
                 warmup_epochs: int = 0, verbose: bool = False):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        if patience < 0 or warmup_epochs < 0 or min_delta < 0:
            raise ValueError("patience, warmup_epochs and min_delta must be >= 0")
        self.monitor, self.mode, self.patience, self.min_delta, self.warmup_epochs = monitor, mode, patience, min_delta, warmup_epochs
        self.verbose = verbose
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None

    @property
    def stop(self) -> bool:
        """Whether training should stop (the patience ran out)."""
        return self.stopped_epoch is not None

    def step(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s (0-based) monitored value; returns ``stop``. Epochs before
        ``warmup_epochs`` are ignored; a non-finite value counts as no improvement."""
        if epoch < self.warmup_epochs or self.stop:
            return self.stop
        value = float(value)
        if math.isfinite(value) and _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.stopped_epoch = epoch
                if self.verbose:
                    print(f"early stopping at epoch {epoch}: {self.monitor} best {self.best} at epoch {self.best_epoch}")
        return self.stop

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch < self.warmup_epochs:
            return
        if self.step(epoch, _monitored(metrics, self.monitor)):
            trainer.should_stop = True

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state):
        self.best, self.bad_epochs, self.stopped_epoch = state["best"], state["bad_epochs"], state["stopped_epoch"]
        self.best_epoch = state.get("best_epoch")


class ModelCheckpoint(Callback):
    """Keep the ``save_top_k`` checkpoints ranked by ``monitor``.

    As a Trainer callback without ``save_dir`` it writes full resumable checkpoints to the run's
    ``checkpoints/``. Standalone (or with ``save_dir``), ``step(epoch, metrics, model, optimizer,
    resolution=...)`` saves ``{"model_state_dict", "optimizer_state_dict" (if save_optimizer), "epoch",
    "metrics", "resolution", "monitor"}`` to ``save_dir`` (loadable with ``torch.load(weights_only=True)``)
    and keeps ``metadata`` (also written to ``save_dir/checkpoints.json``).
    """

    def __init__(self, save_dir: str | Path | None = None, monitor: str = "val_acc", mode: str = "max", save_top_k: int = 1,
                 save_optimizer: bool = True, *, top_k: int | None = None):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        k = save_top_k if top_k is None else top_k
        if k < 0:
            raise ValueError(f"save_top_k must be >= 0, got {k}")
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.monitor, self.mode, self.top_k, self.save_optimizer = monitor, mode, k, save_optimizer
        self.kept: list[tuple[float, int, str]] = []  # (value, epoch, filename), best first
        self._dir: Path | None = self.save_dir
        self._meta: dict[str, dict[str, Any]] = {}

    def _admit(self, epoch: int, value: float, name: str, save) -> bool:
        if self.top_k == 0 or not math.isfinite(value):
            return False
        ranked = sorted(self.kept, key=lambda t: t[0], reverse=self.mode == "max")
        if len(ranked) >= self.top_k and not _improved(value, ranked[-1][0], self.mode):
            return False
        save(name)
        self.kept.append((value, epoch, name))
        ranked = sorted(self.kept, key=lambda t: t[0], reverse=self.mode == "max")
        for _, _, old in ranked[self.top_k:]:
            self._dir_for_files().joinpath(old).unlink(missing_ok=True)
        self.kept = ranked[: self.top_k]
        return True

    def _dir_for_files(self) -> Path:
        assert self._dir is not None
        return self._dir

    def on_epoch_end(self, trainer, epoch, metrics):
        if self.save_dir is not None:
            if trainer.is_main:
                trainer.sync_model()
                self.step(epoch, metrics, trainer.model, getattr(trainer, "user_optimizer", None))
            return
        if self.top_k == 0 or trainer.run_dir is None or not trainer.is_main:
            return
        self._dir = trainer.run_dir / "checkpoints"
        value = _monitored(metrics, self.monitor)
        self._admit(epoch, value, f"epoch{epoch:04d}-{self.monitor}={value:.4f}.pt",
                    lambda name: trainer.save_checkpoint(self._dir / name, epoch))

    def step(self, epoch: int, metrics: dict[str, float], model, optimizer=None, resolution: int | None = None) -> bool:
        """Save ``model`` (and ``optimizer``) if ``metrics[monitor]`` ranks in the top k; returns whether it saved."""
        if self.save_dir is None:
            raise ValueError("ModelCheckpoint.step needs save_dir (as a Trainer callback without one it writes to the run directory)")
        self._dir = self.save_dir
        self.save_dir.mkdir(parents=True, exist_ok=True)
        value = _monitored(metrics, self.monitor)
        res = f"-res{resolution}" if resolution is not None else ""
        name = f"epoch{epoch:04d}{res}-{self.monitor}={value:.4f}.pt"
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

        def save(fname: str) -> None:
            payload: dict[str, Any] = {"model_state_dict": model.state_dict(), "epoch": epoch, "metrics": clean,
                                       "monitor": self.monitor, "resolution": resolution}
            if self.save_optimizer and optimizer is not None:
                payload["optimizer_state_dict"] = optimizer.state_dict()
            save_torch_atomic(self.save_dir / fname, payload)
            self._meta[fname] = {"epoch": epoch, "value": value, "resolution": resolution, "metrics": clean}

        saved = self._admit(epoch, value, name, save)
        if saved:
            write_json_atomic(self.save_dir / "checkpoints.json", self.metadata)
        return saved

    @property
    def metadata(self) -> dict[str, Any]:
        """Monitor, mode and the kept checkpoints (best first) with their epoch, value, resolution and metrics."""
        meta = self._meta
        return {"monitor": self.monitor, "mode": self.mode, "save_top_k": self.top_k,
                "best": self.best_path,
                "checkpoints": [{"file": name, "epoch": e, "value": v, **{k: meta[name][k] for k in ("resolution", "metrics") if name in meta}}
                                for v, e, name in self.kept]}

    def get_best_checkpoint_path(self) -> Path | None:
        """Path of the best kept checkpoint (None before the first save)."""
        if not self.kept:
            return None
        return (self._dir or Path(".")) / self.kept[0][2]

    @property
    def best_path(self) -> str | None:
        return self.kept[0][2] if self.kept else None

    def state_dict(self):
        return {"kept": [list(k) for k in self.kept]}

    def load_state_dict(self, state):
        self.kept = [tuple(k) for k in state["kept"]]


_SCHEDULERS = {
    "cosine": ("CosineAnnealingLR", {"T_max"}),
    "step": ("StepLR", {"step_size"}),
    "plateau": ("ReduceLROnPlateau", set()),
    "exponential": ("ExponentialLR", {"gamma"}),
    "multistep": ("MultiStepLR", {"milestones"}),
}


class LRSchedulerCallback(Callback):
    """A torch learning-rate scheduler by name, stepped once per epoch.

    ``scheduler_type``: cosine (CosineAnnealingLR: ``T_max``, ``eta_min``), step (StepLR: ``step_size``,
    ``gamma``), plateau (ReduceLROnPlateau: ``mode``, ``factor``, ``patience``, ... and ``monitor``, the
    metric it watches, default val_loss), exponential (ExponentialLR: ``gamma``), multistep (MultiStepLR:
    ``milestones``, ``gamma``). ``scheduler_params`` are passed on as the torch scheduler's arguments.
    Standalone: ``step(epoch)`` each epoch, or ``step(metrics=...)`` for plateau. As a Trainer callback
    (or ``Trainer(scheduler=...)``) it steps at each epoch end, plateau with that epoch's metrics.
    """

    def __init__(self, optimizer, scheduler_type: str = "cosine", scheduler_params: dict[str, Any] | None = None, verbose: bool = False):
        import torch

        if scheduler_type not in _SCHEDULERS:
            raise ValueError(f"scheduler_type must be one of {', '.join(_SCHEDULERS)}; got {scheduler_type!r}")
        params = dict(scheduler_params or {})
        cls_name, required = _SCHEDULERS[scheduler_type]
        missing = sorted(required - set(params))
        if missing:
            raise ValueError(f"scheduler_params for {scheduler_type!r} need {', '.join(missing)}")
        self.monitor = params.pop("monitor", "val_loss") if scheduler_type == "plateau" else None
        self.scheduler_type, self.optimizer, self.verbose = scheduler_type, optimizer, verbose
        try:
            self.scheduler = getattr(torch.optim.lr_scheduler, cls_name)(optimizer, **params)
        except TypeError as e:
            raise ValueError(f"scheduler_params for {scheduler_type!r}: {e}") from None

    @property
    def is_plateau(self) -> bool:
        return self.scheduler_type == "plateau"

    def step(self, epoch: int | None = None, metrics: dict[str, float] | float | None = None) -> None:
        """Advance one epoch (``epoch`` is informational); plateau needs ``metrics`` (a dict with ``monitor``, or the value)."""
        if self.is_plateau:
            if metrics is None:
                raise ValueError(f"the plateau scheduler steps on a metric: step(metrics={{{self.monitor!r}: value}})")
            value = metrics if isinstance(metrics, (int, float)) else _monitored(metrics, self.monitor)
            self.scheduler.step(float(value))
        else:
            self.scheduler.step()
        if self.verbose:
            print(f"epoch {epoch}: lr {self.get_last_lr()}")

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def on_epoch_end(self, trainer, epoch, metrics):
        self.step(epoch, metrics if self.is_plateau else None)

    def state_dict(self):
        return {"scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state):
        self.scheduler.load_state_dict(state["scheduler"])


def config_callbacks(config: "RunConfig") -> list[Callback]:
    """The callbacks a RunConfig's ``callbacks`` section asks for: early stopping, checkpoints, loggers by name,
    custom callbacks by import path, the curves plot."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.engine.loggers import LOGGERS, CurvesPlot, custom_callback

    out: list[Callback] = []
    es = config.callbacks.early_stopping
    if es is not None:
        out.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.warmup_epochs))
    ck = config.callbacks.checkpoint
    if ck is not None:
        out.append(ModelCheckpoint(monitor=ck.monitor, mode=ck.mode, save_top_k=ck.top_k))
    for name in config.callbacks.loggers:
        try:
            out.append(LOGGERS[name]())
        except ImportError as e:
            raise ConfigError(f"callbacks.loggers: {e}") from None
    out += [custom_callback(spec.class_path, spec.init_args, f"callbacks.custom[{i}]")
            for i, spec in enumerate(config.callbacks.custom)]
    if config.callbacks.curves:
        out.append(CurvesPlot())
    return out
