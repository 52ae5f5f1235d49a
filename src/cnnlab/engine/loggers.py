"""Where a run's numbers go besides metrics.jsonl: a CSV file, TensorBoard events, the learning-curve plot.

Each logger is a :class:`~cnnlab.engine.callbacks.Callback` writing inside the run directory. A config turns
them on by name (``callbacks.loggers: [csv, tensorboard]``) and attaches any other callback by import path
(``callbacks.custom: [{class_path: "mypkg.cbs:Notify", init_args: {...}}]``); in Python pass instances to
``Trainer(..., callbacks=[...])``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from cnnlab.engine.callbacks import Callback
from cnnlab.utils.io import write_text_atomic

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer

SPLITS = ("train", "train_clean", "val", "test")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class CSVLogger(Callback):
    """One row per epoch, every scalar metric a column, in ``RUN_DIR/{filename}``.

    Args:
        filename (str, optional): File name inside the run directory. Default: ``metrics.csv``.

    The file is rewritten whole after each epoch (temp file + rename), so a killed run never leaves a torn
    row, and a resumed run continues the rows of the epochs it restored.
    """

    def __init__(self, filename: str = "metrics.csv"):
        self.filename = filename
        self.path: Path | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        self.path = trainer.run_dir / self.filename if trainer.run_dir is not None else None

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, Any]) -> None:
        if self.path is None or not getattr(trainer, "is_main", True):
            return
        rows = [_scalars(m) for m in [*trainer.history, metrics]]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, buf.getvalue())


class TensorBoardLogger(Callback):
    """TensorBoard event files in ``RUN_DIR/{subdir}`` (``tensorboard --logdir RUN_DIR/tb``).

    Args:
        subdir (str, optional): Folder inside the run directory. Default: ``tb``.
        log_steps (bool, optional): Also log the running training loss and learning rate at every logged
            step (``train.log_every``), not only the epoch metrics. Default: True.

    Needs the ``tensorboard`` package (``pip install 'cnnlab[tensorboard]'``). Epoch metrics are logged at
    the epoch number under ``epoch/<metric>``, step values at the optimizer step under ``step/<name>``; a
    resumed run purges events past its restored point, so curves never double back.
    """

    def __init__(self, subdir: str = "tb", log_steps: bool = True):
        from importlib.util import find_spec

        if find_spec("tensorboard") is None:  # fail when the run is set up, not after its first epoch
            raise ImportError("the tensorboard logger needs the tensorboard package: pip install 'cnnlab[tensorboard]'")
        self.subdir, self.log_steps = subdir, log_steps
        self.writer: Any = None

    def on_train_start(self, trainer: "Trainer") -> None:
        if trainer.run_dir is None or not getattr(trainer, "is_main", True):
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(trainer.run_dir / self.subdir), purge_step=trainer.state.step or None)

    def on_step_end(self, trainer: "Trainer", step: int, loss: float | None) -> None:
        if self.writer is None or not self.log_steps:
            return
        if loss is not None and math.isfinite(loss):
            self.writer.add_scalar("step/train_loss", loss, step)
        self.writer.add_scalar("step/lr", float(trainer.parts.schedule.lr(max(step - 1, 0))), step)

    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for k, v in _scalars(metrics).items():
            if k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, epoch + 1)
        self.writer.flush()

    def on_train_end(self, trainer: "Trainer", result: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class CurvesPlot(Callback):
    """``RUN_DIR/curves.png`` at the end of training: loss and accuracy per epoch for every split logged.

    Args:
        filename (str, optional): File name inside the run directory. Default: ``curves.png``.

    A run of one epoch has one point per curve: nothing to draw, so no file is written (the result's
    numbers say it all).
    """

    def __init__(self, filename: str = "curves.png"):
        self.filename = filename

    def on_train_end(self, trainer: "Trainer", result: dict[str, Any]) -> None:
        if trainer.run_dir is None or not getattr(trainer, "is_main", True):
            return
        plot_curves(trainer.history, trainer.run_dir / self.filename, title=trainer.config.name)


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Plot ``{split}_loss`` and ``{split}_acc`` per epoch from a run's metric records into ``path``.

    Returns the path, or None when there are fewer than two epochs (no curve to draw).
    """
    if len(history) < 2:
        return None
    from cnnlab.utils.plotting import pyplot, save_figure

    plt = pyplot()
    epochs = [int(m.get("epoch", i + 1)) for i, m in enumerate(history)]  # records count epochs from 1
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "top-1 accuracy")):
        for split in SPLITS:
            key = f"{split}_{metric}"
            values = [m.get(key) for m in history]
            if any(isinstance(v, (int, float)) for v in values):
                ax.plot(epochs, [float(v) if isinstance(v, (int, float)) else math.nan for v in values],
                        marker="o", ms=3, label=split.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    return Path(path)


LOGGERS = {"csv": CSVLogger, "tensorboard": TensorBoardLogger}


def custom_callback(class_path: str, init_args: dict[str, Any], key: str = "callbacks.custom") -> Callback:
    """Build the callback a config names by import path; ConfigError naming ``key`` if it is not one."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.utils.imports import import_object

    try:
        factory = import_object(class_path)
    except ValueError as e:
        raise ConfigError(f"{key}.class_path: {e}") from None
    if not callable(factory):
        raise ConfigError(f"{key}.class_path: {class_path!r} is not a class or function")
    try:
        callback = factory(**init_args)
    except TypeError as e:
        raise ConfigError(f"{key}.init_args: {class_path} does not take {sorted(init_args)}: {e}") from None
    if not isinstance(callback, Callback):
        raise ConfigError(f"{key}.class_path: {class_path!r} made a {type(callback).__name__}, not a "
                          "cnnlab.engine.callbacks.Callback (subclass it)")
    return callback
