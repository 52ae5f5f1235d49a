"""Console output: rich tables for people, ``--json`` for machines."""

from __future__ import annotations

import os
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


LONG_TABLE = 40  # rows shown before a table is cut to a summary (the whole table goes to a CSV file)


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *,
                limit: int | None = None, full_csv: str | os.PathLike | None = None) -> None:
    """A table whose cells are shown whole (folded onto more lines, never cut) and verbatim (no rich markup).

    With ``limit``, a longer table shows its first ``limit`` rows and says how many more there are; with
    ``full_csv`` too, every row is written there (temp file + rename) and the line names the file.
    """
    rows = list(rows)
    shown = rows if limit is None or len(rows) <= limit else rows[:limit]
    table = Table(title=Text(title) if title is not None else None)
    for col in columns:
        table.add_column(Text(col), overflow="fold")
    for row in shown:
        table.add_row(*(Text(format_cell(v)) for v in row))
    console.print(table)
    if len(shown) < len(rows):
        where = ""
        if full_csv is not None:
            write_csv(full_csv, columns, rows)
            where = f"; all {len(rows)} rows in {full_csv}"
        console.print(Text(f"... {len(rows) - len(shown)} more rows not shown{where} (--json prints everything)"))


def write_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Rows as a CSV file with a header, written through a temporary file."""
    import csv
    import io

    from cnnlab.utils.io import write_text_atomic

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_text_atomic(path, buf.getvalue())


def format_cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
