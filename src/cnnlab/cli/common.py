"""Helpers shared by CLI commands."""

from __future__ import annotations

from typing import NoReturn

import typer

from rich.markup import escape

from cnnlab.utils.console import err_console


def fail(message: str, code: int = 2) -> NoReturn:
    """Print a clear error (no traceback) and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # brackets in messages are text
    raise typer.Exit(code)
