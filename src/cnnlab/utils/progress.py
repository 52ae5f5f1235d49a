"""Progress you can read in a log: a rich bar when stderr is a terminal, periodic plain lines otherwise
(cluster logs, nohup, CI, Jupyter), both with k/N and an ETA from the units finished so far."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, TextIO

#: seconds between plain progress lines (override with CNNLAB_PROGRESS_INTERVAL)
DEFAULT_INTERVAL_S = 30.0


def format_duration(seconds: float) -> str:
    """3725 -> "1h02m", 95 -> "1m35s", 7.2 -> "7s"."""
    s = int(round(max(0.0, seconds)))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def eta_seconds(done: int, total: int, elapsed: float) -> Optional[float]:
    """Remaining time at the rate so far; None before the first unit finished."""
    if done <= 0 or total <= 0:
        return None
    return elapsed / done * max(0, total - done)


class ProgressLog:
    """``with ProgressLog("subset models", total) as p: p.update(done)``.

    ``mode``: "auto" (bar on a terminal, lines otherwise), "bar", "lines" or "off". Plain lines go to
    ``stream`` (stderr) at most every ``interval_s`` seconds, and always for the first and last unit.
    """

    def __init__(self, description: str, total: Optional[int] = None, *, mode: str = "auto",
                 interval_s: Optional[float] = None, stream: Optional[TextIO] = None):
        if mode not in ("auto", "bar", "lines", "off"):
            raise ValueError(f"progress mode must be auto, bar, lines or off, got {mode!r}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.mode, self.description, self.total = mode, description, total
        env = os.environ.get("CNNLAB_PROGRESS_INTERVAL")
        self.interval_s = float(env) if interval_s is None and env else (interval_s if interval_s is not None else DEFAULT_INTERVAL_S)
        self.done = 0
        self._t0 = time.perf_counter()
        self._last_line = -float("inf")
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> "ProgressLog":
        self._t0 = time.perf_counter()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(file=self.stream), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def line(self) -> str:
        """``description: k/N (p%), 1m05s elapsed, ETA 3m10s``."""
        total = self.total
        text = f"{self.description}: {self.done}" + (f"/{total} ({100 * self.done / total:.0f}%)" if total else "")
        text += f", {format_duration(self.elapsed)} elapsed"
        eta = eta_seconds(self.done, total or 0, self.elapsed)
        if eta is not None and total and self.done < total:
            text += f", ETA {format_duration(eta)}"
        return text

    def update(self, done: int, total: Optional[int] = None, *, force: bool = False) -> None:
        """Set the number of finished units (and the total, when it becomes known)."""
        self.done = done
        if total is not None:
            self.total = total
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total)
        elif self.mode == "lines":
            now = time.perf_counter()
            last = self.total is not None and done >= self.total
            if force or last or done == 1 or now - self._last_line >= self.interval_s:
                self._last_line = now
                print(self.line(), file=self.stream, flush=True)

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def callback(self):
        """A ``progress(done, total)`` function for the analyses' progress hooks."""
        return lambda done, total: self.update(done, total)
