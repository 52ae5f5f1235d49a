"""``cnnlab population train | es``: train many models at once; evolve one with evolution strategies."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import (
    check_mlflow, check_out, fail, log_to_mlflow, mlflow_option, progress_option, resume_option,
    run_out_option, set_option,
)
from cnnlab.utils.console import console, print_json, print_table

app = typer.Typer(help="Populations: many models trained at once (vmap / loop / processes), evolution strategies.",
                  no_args_is_help=True)


def _run_dir(out: Optional[Path], name: str) -> Path:
    return out or Path("runs") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="YAML population config (a run config plus a `population` section)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. population.size=8 train.epochs=3"),
    out: Optional[Path] = run_out_option(),
    json_out: bool = typer.Option(False, "--json", help="Print result.json to stdout instead of tables."),
    progress: bool = progress_option(),
    resume: bool = resume_option(),
    mlflow: Optional[str] = mlflow_option("<parent of the run directory>"),
    set_: Optional[List[str]] = set_option("key=value override (repeatable; the same as a positional key=value)"),
) -> None:
    """Train a population (different seeds, data subsets, learning rates) with the engine's step."""
    from cnnlab.engine.config import ConfigError
    from cnnlab.population.config import PopulationRunConfig, load
    from cnnlab.population.run import run_population

    try:
        cfg = load(PopulationRunConfig, config, [*(overrides or []), *(set_ or [])])
    except ConfigError as e:
        fail(str(e))
    check_out(out, resume)
    run_dir = _run_dir(out, cfg.name)
    check_mlflow(mlflow)
    try:
        result = run_population(cfg, run_dir, progress=progress and not json_out, resume=resume)
    except (ConfigError, FileExistsError, ValueError) as e:  # bad config, run dir or checkpoint
        fail(str(e))
    log_to_mlflow(mlflow, run_dir, experiment=cfg.name)
    if json_out:
        print_json(result)
        return
    if result.get("diverged_members"):
        from cnnlab.utils.console import err_console

        err_console.print(f"warning: member(s) {', '.join(map(str, result['diverged_members']))} diverged (non-finite "
                          "loss or weights); they are marked 'diverged' and left out of the mean, std and best",
                          highlight=False, markup=False)
    choice = result["backend_choice"]
    console.print(f"backend: [bold]{result['backend']}[/]" + (f" (auto: {choice['reason']})" if choice else " (as configured)"))
    print_table(f"{cfg.name}: {cfg.model.name} x {result['size']} on {cfg.data.name}",
                ["member", "lr", "examples", "train loss", "test loss", "test acc"],
                [(m["index"], m["lr"], m["examples_kept"], m.get("train_loss", float("nan")),
                  m.get("test_loss", float("nan")), m.get("test_acc", float("nan"))) for m in result["members"]])
    s, t = result["summary"], result["timings"]
    print_table(None, ["", "value"], [("run directory", str(run_dir)), (f"test acc mean ± std ({s['members_counted']} members)", f"{s['test_acc_mean']:.4f} ± {s['test_acc_std']:.4f}"),
                                      ("best member", s["best_member"]), ("train time (s)", f"{t['train_s']:.1f}"),
                                      ("member-steps/s", f"{t['member_steps_per_s']:.1f}")])


@app.command("es")
def es_cmd(
    config: Path = typer.Argument(..., help="YAML ES config (model, data and an `es` section)."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="key=value overrides, e.g. es.algorithm=snes es.generations=50 es.sigma=0.02 es.workers=2"),
    out: Optional[Path] = run_out_option(),
    resume: bool = resume_option(),
    json_out: bool = typer.Option(False, "--json", help="Print result.json to stdout instead of a table."),
    progress: bool = progress_option(),
    mlflow: Optional[str] = mlflow_option("<parent of the run directory>"),
    set_: Optional[List[str]] = set_option("key=value override (repeatable; the same as a positional key=value)"),
) -> None:
    """Evolve a model's weights with evolution strategies: es.algorithm = openai | pgpe | snes | sep_cmaes.

    Shared keys (es.population, es.sigma, es.lr, es.optimizer = adam | sgd | clipup, ...) go to the algorithms
    that take them; an algorithm's own settings go in es.options (e.g. es.options.stdev_lr=0.05).
    es.workers=N spreads the fitness over N processes (es.executor=local) or Ray actors (es.executor=ray).
    """
    from cnnlab.engine.config import ConfigError
    from cnnlab.population.config import ESRunConfig, load
    from cnnlab.population.es_run import run_es

    try:
        cfg = load(ESRunConfig, config, [*(overrides or []), *(set_ or [])])
    except ConfigError as e:
        fail(str(e))
    check_out(out, resume)
    run_dir = _run_dir(out, cfg.name)
    check_mlflow(mlflow)
    import warnings

    warnings.filterwarnings("ignore", message="not used by", category=UserWarning)  # printed below, once
    try:
        result = run_es(cfg, run_dir, resume=resume, progress=progress and not json_out)
    except (ConfigError, FileExistsError, FileNotFoundError, ValueError) as e:
        fail(str(e))
    log_to_mlflow(mlflow, run_dir, experiment=cfg.name)
    if json_out:
        print_json(result)
        return
    f = result["final"]
    rows = [("run directory", str(run_dir)), ("generations", result["generations"]), ("population", result["population"]),
            ("parameters", result["num_params"]), ("fitness of the mean (first)", result["first"].get("mean_fitness")),
            ("fitness of the mean (last)", f.get("mean_fitness")), ("test accuracy", f["test_acc"]),
            ("test loss", f["test_loss"]), ("time (s)", f"{result['timings']['total_s']:.1f}"),
            ("plot", str(run_dir / "fitness.png"))]
    from rich.markup import escape

    for w in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {escape(w)}")
    print_table(f"{cfg.name}: {result['algorithm']} ES on {cfg.model.name}, {cfg.data.name} (fitness: {cfg.es.fitness})", ["", "value"], rows)
