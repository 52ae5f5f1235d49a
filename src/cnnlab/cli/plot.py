"""``cnnlab plot SWEEP``: PNG plots of a sweep's results (custom x/y/hue, or the two seed-study presets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, err_console, print_json

PRESETS = ("resolution", "ablation")


def plot_cmd(
    sweep_file: str = typer.Argument(..., metavar="SWEEP", help="Sweep YAML file."),
    x: Optional[str] = typer.Option(None, "--x", help="Column on the x axis (a factor, seed, model, family, resolution, ...)."),
    y: str = typer.Option("test_acc", "--y", help="Metric on the y axis."),
    hue: Optional[str] = typer.Option(None, "--hue", help="One line per value of this column."),
    preset: Optional[str] = typer.Option(None, "--preset", help="resolution: metric vs resolution per model family; "
                                         "ablation: metric vs each factor."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG path (default: ROOT/plots/<name>.png)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="key=value the sweep was run with."),
    root: Optional[Path] = typer.Option(None, "--root", help="Run-store directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the plotted numbers as JSON."),
) -> None:
    """Write a PNG: --x KEY --y METRIC [--hue KEY], or --preset resolution|ablation."""
    from cnnlab.cli.sweep import load_sweep
    from cnnlab.experiments import plots
    from cnnlab.experiments.results import collect

    if preset is None and x is None:
        fail("give --x KEY (and --y METRIC, optionally --hue KEY) or --preset resolution|ablation")
    if preset is not None and preset not in PRESETS:
        fail(f"--preset {preset!r} is unknown; choose from {', '.join(PRESETS)}")
    sweep = load_sweep(sweep_file, set_, root)
    table = collect(sweep)
    if table.stale_note() and not json_out:
        err_console.print(table.stale_note(), highlight=False, markup=False, soft_wrap=True)
    if not table.done():
        fail(f"no finished runs in {sweep.root}: run the sweep first (cnnlab sweep run {sweep_file})")
    stem = f"{preset}_{y}" if preset else f"{y}_vs_{x}" + (f"_by_{hue}" if hue else "")
    path = out or sweep.root / "plots" / f"{stem}.png"
    data: Any
    try:
        if preset == "resolution":
            data = plots.plot_resolution(table, path, metric=y)
            data = {str(k): {str(h): pts for h, pts in v.items()} for k, v in data.items()}
        elif preset == "ablation":
            data = plots.plot_ablation(table, path, metric=y)
        else:
            assert x is not None  # checked above: no preset means --x was given
            data = {str(h): pts for h, pts in plots.plot_metric(table, x, y, path, hue=hue).items()}
    except (KeyError, ValueError) as e:
        fail(str(e).strip("'\""))
    if json_out:
        print_json({"png": str(path), "data": data})
    else:
        console.print(f"wrote {path}", highlight=False, soft_wrap=True)
