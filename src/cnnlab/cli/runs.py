"""``cnnlab runs list | info | clean``: find analysis run directories, inspect them, free their disk space."""

from __future__ import annotations

from pathlib import Path

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import LONG_TABLE, console, print_json, print_table

app = typer.Typer(help="List, inspect and clean analysis run directories.", no_args_is_help=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


@app.command("list")
def list_cmd(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for run directories."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Every run directory under ROOT with its status, accuracy, MAGIC scores and LDS results."""
    from cnnlab.attribution.store import find_runs, run_info

    try:
        infos = [run_info(p) for p in find_runs(root)]
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if json_out:
        print_json(infos)
        return
    rows = []
    for i in infos:
        m = i["magic"]
        lds = "; ".join(f"drop {r['drop']:g}: " + ", ".join(f"{k} {v['lds']:.3f}" for k, v in r["methods"].items())
                        for r in i["lds"])
        rows.append((i["run"], i["status"], i["test_acc"] if i["test_acc"] is not None else "-",
                     f"{m['measurement']} x {m['targets']}" if m else "-", lds or "-", _mib(i["bytes"]["total"])))
    print_table(f"{len(rows)} runs under {root}", ["run", "status", "test acc", "MAGIC", "LDS", "MiB"], rows,
                limit=LONG_TABLE)


@app.command("info")
def info_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    json_out: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Training result, MAGIC settings and cost, LDS per regime and method, plots and disk use of one run."""
    from cnnlab.attribution.store import run_info

    try:
        info = run_info(run)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if json_out:
        print_json(info)
        return
    rows = [("status", info["status"]), ("test accuracy", info["test_acc"]), ("epochs", info["epochs"])]
    m = info["magic"]
    if m:
        rows += [("MAGIC", f"{m['measurement']}, {m['targets']} targets x {m['num_train']} train, {m['checkpointing']}, "
                           f"{m['time_s']:.1f} s, VJP {m['vjp_path']}")]
        rows += [("warning", w) for w in m["warnings"]]
    rows += [("baselines", ", ".join(info["baselines"]) or "-")]
    for r in info["lds"]:
        for name, v in r["methods"].items():
            rows.append((f"LDS {r['regime']} {name}", f"{v['lds']:.4f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"))
    rows += [("plots", ", ".join(info["plots"]) or "-"),
             ("disk MiB (total / checkpoints / lds)",
              f"{_mib(info['bytes']['total'])} / {_mib(info['bytes']['checkpoints'])} / {_mib(info['bytes']['lds'])}")]
    print_table(str(run), ["", "value"], rows)


@app.command("clean")
def clean_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    what: str = typer.Option("scratch", "--what", help="scratch: TRAK working files and checkpoints other than last.pt "
                             "and the best (the trained weights stay) | checkpoints: all checkpoints too (explain, mi "
                             "and --resume then fail) | all: the whole run directory."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask before deleting the whole run (--what all)."),
) -> None:
    """Free a run's disk space. By default the final weights, scores, LDS results and plots stay."""
    from cnnlab.attribution.store import CLEAN_WHAT, clean_run

    if what not in CLEAN_WHAT:
        fail("--what must be one of: " + "; ".join(f"{k} ({v})" for k, v in CLEAN_WHAT.items()) + f"; got {what!r}")
    if what == "all" and not yes and not typer.confirm(f"delete {run} and everything in it ({CLEAN_WHAT['all']})?"):
        raise typer.Exit(1)
    try:
        removed = clean_run(run, what)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    console.print("removed: " + (", ".join(removed) if removed else "nothing (already clean)"), highlight=False, markup=False)
    if what == "scratch":
        console.print("kept the trained weights (checkpoints/last.pt); --what checkpoints removes them too, --what all "
                      "removes the whole run directory", highlight=False, markup=False)
