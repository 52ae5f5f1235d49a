"""``cnnlab lds``: validate a run's MAGIC scores (and baselines, and external scores) by the LDS."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import check_attribution_executor_option, fail, print_submission
from cnnlab.utils.console import console, print_json, print_table


def lds_cmd(
    run_dir: Path = typer.Argument(..., help="Analysis run directory holding MAGIC scores (from `cnnlab magic`)."),
    drop: float = typer.Option(0.5, "--drop", help="Fraction of training examples each subset drops."),
    models: int = typer.Option(50, "--num-models", min=2, help="Subset models (K)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the subset masks."),
    scores: Optional[List[Path]] = typer.Option(None, "--scores",
                                                help="External scores (.npy/.pt, N_train x N_targets) to validate too."),
    baselines: str = typer.Option("tracin,trak", "--baselines", help="Comma list of tracin, trak, or 'none'."),
    workers: int = typer.Option(1, "--workers", help="Worker processes training subset models (this one included)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="population (default when available) | step"),
    backend: str = typer.Option("auto", "--backend", help="Population backend: auto | vmap | loop | procs."),
    force: bool = typer.Option(False, "--force", help="Retrain the subset models of this regime."),
    executor: Optional[str] = typer.Option(None, "--executor", help="Train the subset models as tasks of local | sge | "
                                           "slurm | ray (step engine, one task per model, resumable); sge/slurm submit a "
                                           "job array: run the same command again once it finished to merge."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="sge/slurm: array tasks running at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="sge/slurm: write the job script, do not submit it."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads per task / worker."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (default: a local Ray)."),
    index: Optional[int] = typer.Option(None, "--index", help="Train only subset model INDEX (1-based; what each array "
                                        "task runs) and exit."),
    json_out: bool = typer.Option(False, "--json", help="Print summary.json."),
) -> None:
    """Train (or reuse) K subset models with zero-weighted dropped examples; Spearman of predicted vs actual phi."""
    from cnnlab.attribution.methods import ATTRIBUTION_METHODS, baseline_names
    from cnnlab.attribution.lds import ENGINES, Regime, population_available
    from cnnlab.attribution.lds import reset_study
    from cnnlab.attribution.pipeline import lds_analysis, lds_study
    from cnnlab.engine.config import ConfigError
    from cnnlab.experiments.attribution_jobs import run_lds_models
    from cnnlab.utils.progress import ProgressLog

    if not (run_dir / "magic.json").is_file():
        fail(f"{run_dir} holds no MAGIC scores (no magic.json); run `cnnlab magic CONFIG --out {run_dir}` first")
    names = [] if baselines.strip() in ("", "none") else [b.strip() for b in baselines.split(",")]
    bad = [b for b in names if b not in baseline_names()]
    if bad:
        fail(f"--baselines: unknown {', '.join(bad)}; available: {', '.join(baseline_names())} (or none)")
    for b in [b for b in names if not ATTRIBUTION_METHODS.get(b).available()]:
        names.remove(b)
        console.print(f"[yellow]{b} skipped:[/] an optional package it needs is not installed "
                      "(pip install 'cnnlab[attribution]')")
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
    check_attribution_executor_option(executor)
    if index is not None:
        _task(run_dir, regime, index, threads, json_out)
        return
    try:
        with ProgressLog("subset models", models, mode="off" if json_out else "auto") as bar:
            if executor is not None:
                if force:
                    reset_study(run_dir, regime)
                study = lds_study(run_dir, regime)
                sub = run_lds_models(study, executor, workers=workers, threads=threads, max_concurrent=max_concurrent,
                                     dry_run=dry_run, address=address, progress=bar.callback())
                if sub is not None:
                    _submitted(run_dir, sub, json_out)
                    return
                force, engine = False, "step"
            summary = lds_analysis(run_dir, regime, workers=workers, scores_files=scores or [], baselines=names,
                                   force=force, engine=engine, backend=backend, progress=bar.callback())
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


def _task(run_dir: Path, regime, index: int, threads: Optional[int], json_out: bool) -> None:
    """One array task: train subset model ``index`` (1-based) of the study unless it is recorded."""
    import time

    from cnnlab.attribution.pipeline import lds_study
    from cnnlab.engine.config import ConfigError

    if threads:
        import torch

        torch.set_num_threads(threads)
    if not 1 <= index <= regime.models:
        fail(f"--index {index} is out of range: this regime has subset models 1..{regime.models}")
    t0 = time.perf_counter()
    try:
        trained = lds_study(run_dir, regime).train_one(index - 1)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    record = {"index": index, "model": index - 1, "action": "trained" if trained else "skipped",
              "seconds": time.perf_counter() - t0}
    if json_out:
        print_json(record)
    else:
        console.print(f"subset model {index}/{regime.models}: {record['action']} ({record['seconds']:.1f} s)",
                      highlight=False, markup=False)


def _submitted(run_dir: Path, sub, json_out: bool) -> None:
    from cnnlab.experiments.attribution_jobs import submission_summary

    print_submission(sub, submission_summary(sub), json_out, tasks="subset-model",
                     then=f"once the tasks finished, run `cnnlab lds {run_dir}` with the same --drop/--models/--seed to merge "
                          "the subset models and compute the LDS")
