"""Console output: rich tables for people, ``--json`` for machines."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnlab.utils.io import to_json

console = Console()
err_console = Console(stderr=True)


def print_json(obj: Any) -> None:
    """Print machine-readable JSON to stdout (no rich markup, no wrapping)."""
    print(to_json(obj))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A table whose cells are shown whole (folded onto more lines, never cut) and verbatim (no rich markup)."""
    table = Table(title=Text(title) if title is not None else None)
    for col in columns:
        table.add_column(Text(col), overflow="fold")
    for row in rows:
        table.add_row(*(Text(format_cell(v)) for v in row))
    console.print(table)


def format_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
