"""``cnnlab magic``: train (or reuse) a deterministic run and compute exact MAGIC data-attribution scores."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import check_mlflow, fail, log_to_mlflow, mlflow_option, set_option
from cnnlab.utils.console import console, err_console, print_json, print_table


def magic_cmd(
    config: str = typer.Argument(..., help="YAML run config (e.g. configs/magic_mnist.yaml)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. train.epochs=3"),
    targets: Optional[str] = typer.Option(None, "--targets", help="Test targets, e.g. 0-49 or 3,7,10-12 (default: first 50)."),
    measure: str = typer.Option("loss", "--measure", help="loss | margin"),
    checkpointing: str = typer.Option("log", "--checkpointing", help="log | sqrt | all"),
    tree_k: int = typer.Option(4, "--tree-k", help="Chunks per level of the log checkpointing tree."),
    out: Optional[Path] = typer.Option(None, "--out", help="Analysis run directory (default: runs/<name>-magic-<time>)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 (the trained run) | float64 (exactness checks)."),
    vjp: str = typer.Option("auto", "--vjp", help="auto (batched on CUDA, looped on CPU) | batched | looped"),
    offload: bool = typer.Option(False, "--offload", help="Keep stored training states on the CPU (GPU runs)."),
    compile: bool = typer.Option(False, "--compile", help="Reverse the steps with a torch.compile'd VJP instead of --vjp's (faster per "
                                 "step; compiling takes minutes the first time, ~10 s from inductor's cache: for long runs)."),
    compile_chunk: int = typer.Option(4, "--compile-chunk", help="Targets per compiled VJP call (larger: faster per "
                                      "target, longer to compile)."),
    plot_targets: int = typer.Option(4, "--plot-targets", help="Targets shown in plots/proponents.png (0: no plot)."),
    force: bool = typer.Option(False, "--force", help="Recompute scores even if the run dir already holds them."),
    json_out: bool = typer.Option(False, "--json", help="Print a machine-readable (JSON) summary."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar (plain lines when stderr is not a terminal)."),
    mlflow: Optional[str] = mlflow_option("<parent of the run directory>"),
    set_: Optional[List[str]] = set_option("key=value override (repeatable; the same as a positional key=value)"),
) -> None:
    """Exact metagradients d phi / d w_i of a measurement phi on test targets, for every training example."""
    import torch

    from cnnlab.attribution.measures import list_measurements, parse_targets
    from cnnlab.attribution.pipeline import ensure_trained_run, load_run_dataset, magic_analysis
    from cnnlab.attribution.replay import RecordReplayStates
    from cnnlab.engine.config import ConfigError, load_config
    from cnnlab.engine.trainer import TrainingDiverged

    if measure not in list_measurements():
        fail(f"--measure must be one of {', '.join(list_measurements())}, got {measure!r}")
    if checkpointing not in ("log", "sqrt", "all"):
        fail(f"--checkpointing must be log, sqrt or all, got {checkpointing!r}")
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    if dtype not in dtypes:
        fail(f"--dtype must be float32 or float64, got {dtype!r}")
    if vjp not in ("auto", "batched", "looped"):
        fail(f"--vjp must be auto, batched or looped, got {vjp!r}")
    if tree_k < 2:
        fail(f"--tree-k must be >= 2, got {tree_k}")
    if compile_chunk < 1:
        fail(f"--compile-chunk must be >= 1, got {compile_chunk}")
    check_mlflow(mlflow)
    try:
        cfg = load_config(config, [*(overrides or []), *(set_ or [])])
        dataset = load_run_dataset(cfg)
        target_list = parse_targets(targets, len(dataset.test))
        run_dir = out or Path("runs") / f"{cfg.name}-magic-{datetime.now():%Y%m%d-%H%M%S}"
        # the training pass keeps the states the replay's first pass would recompute (float32 replays only)
        record = RecordReplayStates(checkpointing, tree_k, offload=offload) if dtype == "float32" else None
        result, reused_run = ensure_trained_run(cfg, run_dir, dataset=dataset, progress=progress and not json_out,
                                                record=record)
        if not json_out:
            console.print(f"{'reusing' if reused_run else 'trained'} run {run_dir}: test accuracy "
                          f"{result['final']['test_acc']:.4f}")
        kw = dict(targets=target_list, measure=measure, checkpointing=checkpointing, tree_k=tree_k,
                  dtype=dtypes[dtype], vjp=vjp, offload=offload, compile=compile,
                  compile_chunk=compile_chunk, force=force, plot_columns=range(plot_targets),
                  dataset=dataset, states=record.states if record is not None and not reused_run else None)
        if progress and not json_out:
            from cnnlab.utils.progress import ProgressLog

            with ProgressLog("MAGIC replay steps") as bar:  # a bar on a terminal, plain lines in a log
                magic, reused = magic_analysis(run_dir, **kw, progress=bar.callback())
        else:
            magic, reused = magic_analysis(run_dir, **kw)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError) as e:
        fail(str(e))
    except TrainingDiverged as e:
        fail(f"the run diverged: {e}", code=3)
    log_to_mlflow(mlflow, run_dir, experiment=cfg.name)
    s = magic.stats
    summary = {
        "run_dir": str(run_dir), "reused_scores": reused, "measurement": magic.measurement,
        "targets": magic.target_indices.tolist(), "num_train": int(magic.train_indices.numel()),
        "test_acc": result["final"]["test_acc"], "scores": str(run_dir / "scores.pt"), "stats": s.to_dict(),
        "warnings": magic.warnings, "matches_trained_run": magic.settings.get("matches_trained_run"),
    }
    if json_out:
        print_json(summary)
        return
    for w in magic.warnings:
        err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    rows = [("scores", f"{summary['scores']} ({summary['num_train']} x {len(summary['targets'])})"),
            ("measurement", magic.measurement), ("reused", reused),
            ("checkpointing", s.checkpointing), ("steps", s.steps), ("recomputed steps", s.recomputed_steps),
            ("peak stored states", s.peak_stored_states), ("peak stored MiB", s.peak_stored_bytes / 2**20),
            ("VJP path", s.vjp_path), ("replay time (s)", s.forward_s + s.reverse_s),
            *([("of which compiling (s)", s.compile_s)] if s.compile_s else []),
            ("matches trained run", summary["matches_trained_run"])]
    if (run_dir / "plots" / "proponents.png").is_file():
        rows.append(("plot", str(run_dir / "plots" / "proponents.png")))
    print_table("MAGIC", ["", "value"], rows)
