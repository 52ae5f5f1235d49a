"""The Trainer's progress display, for a person at a terminal and for a log file alike.

On a terminal (stderr is a tty): a rich bar per epoch with the running loss, accuracy, images/s and ETA.
Otherwise (cluster logs, nohup, CI, Jupyter): plain lines on stderr through
:class:`cnnlab.utils.progress.ProgressLog`: ``training steps: k/N (p%), elapsed, ETA`` at the first logged step,
then at most every ``CNNLAB_PROGRESS_INTERVAL`` seconds (default 30) inside long epochs, and one summary line per
epoch (``epoch 3/10: loss 0.41 val_acc 0.8812 5,210 img/s (1m05s, ETA 2m31s)``). Nothing when disabled.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from cnnlab.utils.progress import ProgressLog, eta_seconds, format_duration


class EpochProgress:
    """``with EpochProgress(enabled, epochs, steps) as bar:`` then ``start_epoch(e)``, ``update(...)`` at each
    logged step, ``end_epoch(metrics)``.

    Args:
        enabled (bool): Show anything at all.
        epochs (int): Epochs the run is planned for (a resumed run starts at a later epoch).
        steps (int): Optimizer steps per epoch.
        mode (str, optional): "auto" (bar on a terminal, lines otherwise), "bar" or "lines". Default: "auto".
        interval_s (float, optional): Seconds between plain step lines; default ``CNNLAB_PROGRESS_INTERVAL`` or 30.
    """

    def __init__(self, enabled: bool, epochs: int, steps: int, *, mode: str = "auto", interval_s: Optional[float] = None):
        if mode not in ("auto", "bar", "lines"):
            raise ValueError(f"progress mode must be auto, bar or lines, got {mode!r}")
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        if mode == "auto":
            mode = "lines" if not sys.stderr.isatty() else "bar"
        self.lines = enabled and mode == "lines"
        self._bar: Any = None
        self._task: Any = None
        self._log: ProgressLog | None = None
        self._interval_s = interval_s
        self._t0 = time.perf_counter()
        self._epoch = 0
        self._first_epoch: int | None = None
        self._done = 0  # epochs finished in this process

    def __enter__(self) -> "EpochProgress":
        self._t0 = time.perf_counter()
        if self.enabled and not self.lines:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeRemainingColumn(),
                                 console=Console(file=sys.stderr), transient=False)
            self._bar.__enter__()
        return self

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if self._first_epoch is None:
            self._first_epoch = epoch
            if self.lines:  # steps counted over the epochs this process trains
                self._log = ProgressLog("training steps", (self.epochs - epoch) * self.steps, mode="lines",
                                        interval_s=self._interval_s, stream=sys.stderr)
                self._log.__enter__()
        if self._bar is not None:
            self._task = self._bar.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, stats="")

    def update(self, done: int, loss: float, acc: float, ips: float) -> None:
        """``done`` steps of the current epoch finished; ``loss``/``acc`` of the recent steps; images/s so far."""
        if self._bar is not None:
            self._bar.update(self._task, completed=done, stats=f"loss {loss:.4f} acc {acc:.3f} {ips:,.0f} img/s")
        elif self._log is not None and self._first_epoch is not None:
            total = self._log.total or 0
            overall = (self._epoch - self._first_epoch) * self.steps + done
            if overall < total:  # the run's last step is reported by the epoch line that follows
                self._log.update(overall)

    def end_epoch(self, m: dict[str, Any]) -> None:
        """The epoch's summary (train loss, validation or test accuracy, images/s)."""
        acc = next((f"{k} {m[k]:.4f}" for k in ("val_acc", "test_acc") if k in m), "")
        stats = f"loss {m['train_loss']:.4f} {acc} {m['images_per_s']:,.0f} img/s"
        if self._bar is not None:
            self._bar.update(self._task, stats=stats)
        elif self.lines:
            self._done += 1
            elapsed = time.perf_counter() - self._t0
            eta = eta_seconds(self._done, self.epochs - self._epoch - 1 + self._done, elapsed)
            print(f"epoch {self._epoch + 1}/{self.epochs}: {stats} ({format_duration(elapsed)}"
                  + (f", ETA {format_duration(eta)}" if eta else "") + ")", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        if self._log is not None:
            self._log.__exit__(*exc)
