"""The Trainer's progress display: a rich bar per epoch (loss, accuracy, images/s, ETA) on a terminal; one
plain line per epoch otherwise (cluster logs, nohup, CI); nothing when disabled."""

from __future__ import annotations

import sys
import time


class EpochProgress:
    """``with EpochProgress(enabled, epochs, steps) as bar:`` then ``start_epoch``, ``update`` per logged step,
    ``end_epoch`` with the epoch's metrics."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        self.lines = enabled and not sys.stderr.isatty()
        self._p = None
        self._t0 = time.perf_counter()
        self._done = 0

    def __enter__(self):
        self._t0 = time.perf_counter()
        if self.enabled and not self.lines:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False)
            self._p.__enter__()
        return self

    def start_epoch(self, epoch: int) -> None:
        self._epoch = epoch
        if self._p is not None:
            self._task = self._p.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, stats="")

    def update(self, done: int, loss: float, acc: float, ips: float) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done, stats=f"loss {loss:.4f} acc {acc:.3f} {ips:,.0f} img/s")

    def end_epoch(self, m: dict) -> None:
        acc = next((f"{k} {m[k]:.4f}" for k in ("val_acc", "test_acc") if k in m), "")
        stats = f"loss {m['train_loss']:.4f} {acc} {m['images_per_s']:,.0f} img/s"
        if self._p is not None:
            self._p.update(self._task, stats=stats)
        elif self.lines:
            from cnnlab.utils.progress import eta_seconds, format_duration

            self._done += 1
            elapsed = time.perf_counter() - self._t0
            eta = eta_seconds(self._done, self.epochs - self._epoch - 1 + self._done, elapsed)
            print(f"epoch {self._epoch + 1}/{self.epochs}: {stats} ({format_duration(elapsed)}"
                  + (f", ETA {format_duration(eta)}" if eta else "") + ")", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
