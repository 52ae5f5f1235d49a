"""``cnnlab report RUN_OR_SWEEP``: one static HTML page of everything a run or a sweep has produced."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json


def report_cmd(
    target: Path = typer.Argument(..., metavar="RUN_OR_SWEEP", help="A run directory, a folder of runs, or a sweep file."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for index.html and assets/ (default: TARGET/report, "
                                       "for a sweep <sweep root>/report)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value settings of the sweep, as given to `sweep run`."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Write a static HTML report (no server, no CDN: open index.html): config, metrics, curves and every analysis plot."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.experiments.report import write_report

    if out is not None and out.exists() and not out.is_dir():
        fail(f"--out {str(out)!r} is a file; give a folder")
    try:
        index = write_report(target, out, overrides=set_ or [])
    except (ConfigError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    if json_out:
        print_json({"index": str(index), "assets": sorted(p.name for p in (index.parent / "assets").glob("*"))})
        return
    console.print(f"report: {index}", highlight=False, markup=False, soft_wrap=True)
