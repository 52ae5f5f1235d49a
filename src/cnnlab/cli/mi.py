"""``cnnlab mi SWEEP | RUN_DIR...``: first-layer masking + mutual information per run, and the table/plots across runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from cnnlab.cli.common import fail
from cnnlab.cli.sweep import RootOpt, SetOpt, load_sweep
from cnnlab.utils.console import LONG_TABLE, console, print_json, print_table


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not vals:
        raise ValueError(f"{option}: no value given")
    return vals


def mi_cmd(
    paths: List[Path] = typer.Argument(..., help="A sweep file (its finished runs), or run directories, or folders "
                                                 "holding run directories (found by result.json)."),
    root: Optional[Path] = RootOpt,
    set_: Optional[List[str]] = SetOpt,
    keep: str = typer.Option("0.25,0.5,0.75", "--keep", help="Keep fractions of the first block's activations."),
    masks: int = typer.Option(10, "--masks", min=1, help="Seeded masks per keep fraction."),
    examples: int = typer.Option(2000, "--examples", min=1, help="Evaluation examples per split (capped by the split size)."),
    mask_seed: int = typer.Option(0, "--mask-seed", help="Seed of the masks (same seed + shape -> same masks in every run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the example subset and the bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=1, help="Bootstrap resamples for the intervals."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the intervals."),
    correction: str = typer.Option("miller-madow", "--correction", help="miller-madow | none."),
    gap_examples: Optional[int] = typer.Option(None, "--gap-examples", min=1,
                                               help="Examples per split for the accuracy gap (default: whole splits)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Evaluation batch size (does not change results)."),
    factors: Optional[str] = typer.Option(None, "--factors",
                                          help="Config keys to colour plots by (default: the keys that differ between runs)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the table and plots (default: <parent of the runs>/mi)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: each run's)."),
    force: bool = typer.Option(False, "--force", help="Recompute results already stored in RUN_DIR/analysis/mi.json."),
    json_out: bool = typer.Option(False, "--json", help="Print the table rows as JSON."),
) -> None:
    """MI(Y; Ŷ) in bits with and without masking the first conv block, vs the generalisation gap.

    Per run the result is stored in RUN_DIR/analysis/mi.json (reused unless --force); across runs a
    table (CSV, JSON) and one plot of MI drop vs generalisation gap per factor are written to --out.
    Given a sweep file, every finished run of the sweep is analysed and coloured by the sweep's factors
    (default --out: <sweep root>/mi); runs not yet done are listed and skipped.
    """
    from cnnlab.engine.analysis_run import find_run_dirs, varying_factors
    from cnnlab.info.analysis import MIConfig
    from cnnlab.info.runs import compute_run_mi, run_units, summarize
    from cnnlab.utils.configdiff import flatten
    from cnnlab.utils.progress import ProgressLog

    try:
        cfg = MIConfig(keeps=_floats(keep, "--keep"), n_masks=masks, n_examples=examples, mask_seed=mask_seed, seed=seed,
                       n_boot=bootstrap, confidence=confidence, correction=correction, batch_size=batch_size,
                       gap_examples=gap_examples)
        sweep, sweep_runs = _finished_sweep_runs(paths, root, set_, quiet=json_out)
        dirs = [r.run_dir for r in sweep_runs] if sweep is not None else find_run_dirs(paths)
        reports = []
        # progress in masked evaluations over all runs: a bar on a terminal, plain k/N + ETA lines in a log
        with ProgressLog(f"masking MI ({len(dirs)} runs, masked evaluations)", len(dirs) * run_units(cfg),
                         mode="off" if json_out else "auto") as log:
            for d in dirs:
                reports.append(compute_run_mi(d, cfg, force=force, device=device, progress=log.advance))
        configs = [_config_of(d) for d in dirs]
        flat = [flatten(c) for c in configs]
        if sweep is not None:  # the sweep's own factor names and labels (wd, bn, ...) plus the seed
            flat = [{**fl, **r.labels, "seed": r.seed} for fl, r in zip(flat, sweep_runs)]
            default_factors = [f.name for f in sweep.factors]
        else:
            default_factors = varying_factors(configs)
        chosen = [f.strip() for f in factors.split(",") if f.strip()] if factors else default_factors
        missing = [f for f in chosen if all(f not in fl for fl in flat)]
        if missing:
            raise ValueError(f"--factors: {', '.join(missing)} not found in the runs' configs "
                             f"(keys look like optim.lr, train.batch_size)")
        labels = [str(r.run_dir.relative_to(sweep.root)) for r in sweep_runs] if sweep is not None else _labels(dirs)
        entries = [(lab, {f: fl.get(f) for f in chosen}, rep) for lab, fl, rep in zip(labels, flat, reports)]
        plot_by = chosen or ["run"]
        if not chosen:
            entries = [(lab, {"run": lab}, rep) for lab, _, rep in entries]
        if out is not None:
            dest = out
        elif sweep is not None:
            dest = sweep.root / "mi"
        else:
            dest = Path(os.path.commonpath([str(d.resolve()) for d in dirs])) / "mi"
        summary = summarize(entries, plot_by, dest)
        if sweep is not None:
            summary["sweep"] = {"name": sweep.name, "root": str(sweep.root), "runs": len(sweep),
                                "analysed": len(sweep_runs), "skipped_not_done": len(sweep) - len(sweep_runs)}
    except (FileNotFoundError, ValueError, KeyError) as e:
        fail(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e))
    if json_out:
        print_json(summary)
        return
    cached = sum(1 for r in reports if r.get("cached"))
    print_table(f"masking MI (bits, Miller-Madow; {cfg.n_masks} masks; {len(dirs)} runs, {cached} from stored results)",
                ["run", *chosen, "split", "keep", "MI", "MI drop", "CI low", "CI high", "acc drop", "gen gap"],
                [(r["run"], *[r.get(f) for f in chosen], r["split"], r["keep"], r["mi_unmasked"], r["mi_diff"],
                  r["mi_diff_low"], r["mi_diff_high"], r["acc_drop"], r["gen_gap"]) for r in summary["rows"]],
                limit=LONG_TABLE)
    console.print(f"table: {summary['files']['csv']}")
    for f, p in summary["files"]["plots"].items():
        console.print(f"plot ({f}): {p}")
    if summary.get("plot_note"):
        console.print(f"plots: {summary['plot_note']}", highlight=False, markup=False)


def _config_of(run_dir: Path) -> dict:
    from cnnlab.utils.io import load_yaml_text

    p = run_dir / "config.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{run_dir} has no config.yaml")
    return load_yaml_text(p.read_text(encoding="utf-8")) or {}


def _labels(dirs: list[Path]) -> list[str]:
    """Run labels: folder names, or paths relative to the common parent where names repeat."""
    names = [d.name for d in dirs]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([str(d.resolve()) for d in dirs]))
    return [str(d.resolve().relative_to(root)) for d in dirs]



def _finished_sweep_runs(paths: list[Path], root: Optional[Path], overrides: Optional[list[str]], *, quiet: bool):
    """(sweep, its finished runs) when ``paths`` is one sweep file, else (None, []).

    Raises FileNotFoundError when the sweep has no finished run yet."""
    if not (len(paths) == 1 and paths[0].suffix in (".yaml", ".yml")):
        if root is not None or overrides:
            raise ValueError("--root and --set apply to a sweep file, not to run directories")
        return None, []
    if not paths[0].is_file():
        raise FileNotFoundError(f"sweep file {str(paths[0])!r} does not exist")
    sweep = load_sweep(str(paths[0]), overrides, root)
    done = sweep.runs("done")
    if not done:
        raise FileNotFoundError(f"sweep {sweep.name!r} has no finished run under {sweep.root} "
                                f"(run it with `cnnlab sweep run {paths[0]}`; see `cnnlab sweep status`)")
    stale = sweep.runs("stale")
    if stale and not quiet:
        console.print(f"[yellow]{len(stale)} run(s) of {sweep.name!r} are stale (trained under another config, e.g. "
                      f"run {stale[0].index}: {escape(stale[0].state().detail)}) and are skipped; "
                      "`cnnlab sweep run ... --rerun-stale` retrains them[/]")
    skipped = len(sweep) - len(done) - len(stale)
    if skipped and not quiet:
        console.print(f"[yellow]{skipped} of {len(sweep)} runs of {sweep.name!r} are not done and are skipped "
                      f"(`cnnlab sweep status {paths[0]}`)[/]")
    return sweep, done
