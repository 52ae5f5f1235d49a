"""Progress of population runs: :class:`cnnlab.utils.progress.ProgressLog` plus the latest statistics.

A rich bar on a terminal; periodic plain ``k/N, ETA`` lines otherwise (cluster logs, nohup, CI), each
ending with the statistics of the last update (e.g. an ES generation's fitness).
"""

from __future__ import annotations

from typing import Any, Optional

from cnnlab.utils.progress import ProgressLog


class ProgressBar(ProgressLog):
    """``advance(n, stats="")`` moves the progress by n units (member-steps or generations).

    Args:
        enabled (bool): False for no output at all.
        description (str): what is counted, e.g. ``"4 members"``.
        total (int): the units of the whole run.
    """

    def __init__(self, enabled: bool, description: str, total: int):
        super().__init__(description, total, mode="auto" if enabled else "off")
        self.stats = ""

    def __enter__(self) -> "ProgressBar":
        super().__enter__()
        return self

    def advance(self, n: int = 1, stats: Optional[str] = None) -> None:
        if stats is not None:
            self.stats = stats
            bar: Any = self._bar
            if bar is not None:
                bar.update(self._task, description=f"{self.description}  {stats}")
        super().advance(n)

    def line(self) -> str:
        text = super().line()
        return f"{text}, {self.stats}" if self.stats else text
