"""``cnnlab results SWEEP``: one table of all runs and its mean ± std over seeds (no pandas needed)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import LONG_TABLE, console, err_console, print_json, print_table

DEFAULT_METRICS = ("test_acc", "test_loss", "gen_gap", "train_s")


def results_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP", help="Sweep YAML file."),
    csv: Optional[Path] = typer.Option(None, "--csv", help="Write the per-run table to this CSV file."),
    grouped_csv: Optional[Path] = typer.Option(None, "--grouped-csv", help="Write the mean/std-over-seeds table to this CSV file."),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric column(s) to show (default: test_acc, test_loss, gen_gap, train_s)."),
    per_run: bool = typer.Option(False, "--per-run", help="Show one row per run instead of the grouped table."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value the sweep was run with (as for `sweep run`)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Run-store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print {runs, groups} as JSON."),
) -> None:
    """Results of a sweep: factor columns + final metrics + timings, grouped mean ± std over seeds."""
    from cnnlab.cli.sweep import load_sweep
    from cnnlab.experiments.results import collect, format_mean_std

    sweep = load_sweep(sweep_file, set_, root)
    table = collect(sweep)
    metrics = list(metric) if metric else [m for m in DEFAULT_METRICS if m in table.metrics]
    unknown = [m for m in metrics if m not in table.metrics]
    if unknown and table.done():
        fail(f"--metric {unknown[0]!r} is not a result column; available: {', '.join(table.metrics)}")
    groups = table.grouped(metrics=[m for m in metrics if m in table.metrics])
    if csv:
        table.write_csv(csv)
    if grouped_csv:
        table.write_csv(grouped_csv, grouped=True)
    if json_out:
        print_json({"sweep": sweep.name, "factors": table.factors, "metrics": table.metrics,
                    "runs": table.rows, "groups": table.grouped(), "stale": [r["index"] for r in table.stale()]})
        return
    if table.stale_note():
        err_console.print(table.stale_note(), highlight=False, markup=False, soft_wrap=True)
    done = len(table.done())
    if per_run:
        cols = ["index", "name", "status", *metrics]
        print_table(f"{sweep.name}: {done}/{len(table.rows)} runs done", cols,
                    [[r.get(c, "-") if r.get(c) is not None else "-" for c in cols] for r in table.rows],
                    limit=LONG_TABLE, full_csv=csv or sweep.root / "results.csv")
    else:
        cols = [*table.factors, "n", *metrics]
        print_table(f"{sweep.name}: mean ± std over seeds ({done}/{len(table.rows)} runs done)", cols,
                    [[*(g[f] for f in table.factors), f"{g['n']}/{g['n_runs']}",
                      *(format_mean_std(g[f"{m}_mean"], g[f"{m}_std"]) for m in metrics)] for g in groups],
                    limit=LONG_TABLE, full_csv=grouped_csv or sweep.root / "results_grouped.csv")
    for path in (csv, grouped_csv):
        if path:
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
