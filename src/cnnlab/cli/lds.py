"""``cnnlab lds``: validate a run's MAGIC scores (and baselines, and external scores) by the LDS."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


def lds_cmd(
    run_dir: Path = typer.Argument(..., help="Analysis run directory holding MAGIC scores (from `cnnlab magic`)."),
    drop: float = typer.Option(0.5, "--drop", help="Fraction of training examples each subset drops."),
    models: int = typer.Option(50, "--num-models", min=2, help="Subset models (K)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset masks."),
    scores: Optional[List[Path]] = typer.Option(None, "--scores",
                                                help="External scores (.npy/.pt, N_train x N_targets) to validate too."),
    baselines: str = typer.Option("tracin,trak", "--baselines", help="Comma list of tracin, trak, or 'none'."),
    workers: int = typer.Option(1, "--workers", help="Worker processes training subset models."),
    engine: Optional[str] = typer.Option(None, "--engine", help="population (default when available) | step"),
    backend: str = typer.Option("auto", "--backend", help="Population backend: auto | vmap | loop | procs."),
    force: bool = typer.Option(False, "--force", help="Retrain the subset models of this regime."),
    json_out: bool = typer.Option(False, "--json", help="Print summary.json."),
) -> None:
    """Train (or reuse) K subset models with zero-weighted dropped examples; Spearman of predicted vs actual phi."""
    from cnnlab.attribution.baselines import BASELINES, trak_available
    from cnnlab.attribution.lds import ENGINES, Regime, population_available
    from cnnlab.attribution.pipeline import lds_analysis
    from cnnlab.engine.config import ConfigError

    if not (run_dir / "magic.json").is_file():
        fail(f"{run_dir} holds no MAGIC scores (no magic.json); run `cnnlab magic CONFIG --out {run_dir}` first")
    names = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    bad = [b for b in names if b not in BASELINES]
    if bad:
        fail(f"--baselines: unknown {', '.join(bad)}; available: {', '.join(BASELINES)} (or none)")
    if "trak" in names and not trak_available():
        names.remove("trak")
        console.print("[yellow]TRAK skipped:[/] the optional package traker is not installed (pip install 'cnnlab[attribution]')")
    if workers < 1:
        fail(f"--workers must be >= 1, got {workers}")
    if engine is not None and engine not in ENGINES:
        fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "population" and not population_available():
        fail("--engine population: cnnlab.population is not available in this installation; use --engine step")
    if backend not in ("auto", "vmap", "loop", "procs"):
        fail(f"--backend must be auto, vmap, loop or procs, got {backend!r}")
    try:
        regime = Regime(drop, models, seed)
    except ValueError as e:
        fail(f"--drop/--num-models: {e}")
    bar = None
    if not json_out:
        from rich.progress import Progress

        bar = Progress(console=console, transient=True)
    try:
        if bar is not None:
            with bar:
                task = bar.add_task("subset models", total=models)
                summary = lds_analysis(run_dir, regime, workers=workers, scores_files=scores or [], baselines=names,
                                       force=force, engine=engine, backend=backend,
                                       progress=lambda d, n: bar.update(task, completed=d))
        else:
            summary = lds_analysis(run_dir, regime, workers=workers, scores_files=scores or [], baselines=names,
                                   force=force, engine=engine, backend=backend)
    except (ConfigError, ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        fail(str(e))
    if json_out:
        print_json(summary)
        return
    rows = [(name, m["lds"], f"[{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]", m["pearson"], m["targets_used"], m["models"])
            for name, m in summary["methods"].items()]
    print_table(f"LDS, drop {drop:g}, {models} subset models, measurement {summary['measurement']}",
                ["method", "LDS (mean Spearman)", "95% CI", "mean Pearson", "targets", "models"], rows)
    console.print(f"scatter plot: {run_dir / 'lds' / regime.tag / 'scatter_magic.png'}")
