"""Helpers shared by CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn, Optional

import typer

from rich.markup import escape

from cnnlab.utils.console import err_console


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # brackets in messages are text
    raise typer.Exit(code)


def check_out(out: Optional[Path], resume: bool) -> None:
    """Refuse an --out that cannot be a run directory, and --resume on one that holds no run to continue."""
    if out is None:
        if resume:
            fail("--resume needs --out RUN_DIR (the run to continue)")
        return
    if str(out).strip() in ("", "."):
        fail(f"--out {str(out)!r}: give a run directory (an empty --out would train into the current folder)")
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is an existing file, not a run directory")
    if resume and not ((out / "config.yaml").is_file() or (out / "checkpoints" / "last.pt").is_file()):
        fail(f"--resume: {out} holds no run to continue (no config.yaml or checkpoints/last.pt); "
             "leave out --resume to start a new run there")
