"""A rich progress bar for population runs that is a no-op when disabled or not on a terminal."""

from __future__ import annotations

import sys


class ProgressBar:
    """``advance(n, stats="")`` moves the bar by n units (member-steps or generations)."""

    def __init__(self, enabled: bool, description: str, total: int):
        self.enabled = enabled and sys.stderr.isatty()
        self.description, self.total = description, total
        self._p = None
        self._task = None

    def __enter__(self) -> "ProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                               console=Console(stderr=True))
            self._p.__enter__()
            self._task = self._p.add_task(self.description, total=self.total, stats="")
        return self

    def advance(self, n: int = 1, stats: str | None = None) -> None:
        if self._p is not None:
            if stats is None:
                self._p.update(self._task, advance=n)
            else:
                self._p.update(self._task, advance=n, stats=stats)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
