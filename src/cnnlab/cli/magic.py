"""``cnnlab magic``: train (or reuse) a deterministic run and compute exact MAGIC data-attribution scores."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, List, Optional

import typer

from cnnlab.cli.common import (
    check_attribution_executor_option, check_mlflow, fail, log_to_mlflow, mlflow_option, print_submission, progress_option,
    set_option,
)
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
    progress: bool = progress_option(),
    executor: Optional[str] = typer.Option(None, "--executor", help="Compute the scores in chunks of targets as tasks of "
                                           "local | sge | slurm | ray (resumable; merged into one scores file); "
                                           "sge/slurm submit a job array: run the same command again once it "
                                           "finished to merge."),
    chunk: Optional[int] = typer.Option(None, "--chunk", min=1, help="Targets per chunk task (default with --executor: 10; "
                                        "alone: --executor local)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="sge/slurm: array tasks running at once."),
    dry_run: bool = typer.Option(False, "--dry-run", help="sge/slurm: write the job script, do not submit it."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch threads per chunk task."),
    address: Optional[str] = typer.Option(None, "--address", help="ray: cluster address (default: a local Ray)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="ray: worker CPUs of the local Ray it starts (one chunk task per worker)."),
    index: Optional[int] = typer.Option(None, "--index", help="Compute only chunk INDEX (1-based; what each array task "
                                        "runs) of the trained run in --out, and exit."),
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
    check_attribution_executor_option(executor)
    chunked = executor is not None or chunk is not None or index is not None
    if index is not None:
        if out is None or chunk is None:
            fail("--index computes one chunk of an existing request: give --out RUN_DIR and --chunk too")
    check_mlflow(mlflow)
    items = [*(overrides or []), *(set_ or [])]
    try:
        cfg = load_config(config, items)
        dataset = load_run_dataset(cfg)
        target_list = parse_targets(targets, len(dataset.test))
        run_dir = out or Path("runs") / f"{cfg.name}-magic-{datetime.now():%Y%m%d-%H%M%S}"
        chunk_kw = dict(measure=measure, checkpointing=checkpointing, tree_k=tree_k, dtype=dtypes[dtype], vjp=vjp,
                        offload=offload, compile=compile, compile_chunk=compile_chunk)
        if index is not None:
            assert chunk is not None
            _chunk_task(cfg, run_dir, target_list, chunk, index, threads, json_out, dataset, chunk_kw)
            return
        # the training pass keeps the states the replay's first pass would recompute (float32 replays only)
        record = (RecordReplayStates(checkpointing, tree_k, offload=offload) if dtype == "float32" and not chunked
                  else None)
        result, reused_run = ensure_trained_run(cfg, run_dir, dataset=dataset, progress=progress and not json_out,
                                                record=record)
        if not json_out:
            console.print(f"{'reusing' if reused_run else 'trained'} run {run_dir}: test accuracy "
                          f"{result['final']['test_acc']:.4f}")
        kw: dict[str, Any] = dict(targets=target_list, measure=measure, checkpointing=checkpointing, tree_k=tree_k,
                  dtype=dtypes[dtype], vjp=vjp, offload=offload, compile=compile,
                  compile_chunk=compile_chunk, force=force, plot_columns=range(plot_targets),
                  dataset=dataset, states=record.states if record is not None and not reused_run else None)
        if chunked:
            from cnnlab.experiments.attribution_jobs import magic_task_command

            got = _chunked(run_dir, target_list, chunk or 10, executor or "local", force=force, dataset=dataset,
                           chunk_kw=chunk_kw, plot_targets=plot_targets, progress=progress and not json_out,
                           task_command=lambda chunks: magic_task_command(
                               config, items, run_dir, chunks, measure=measure, checkpointing=checkpointing,
                               tree_k=tree_k, dtype=dtype, vjp=vjp, offload=offload, compile=compile,
                               compile_chunk=compile_chunk, threads=threads),
                           threads=threads, max_concurrent=max_concurrent, dry_run=dry_run, address=address,
                           workers=workers)
            if not isinstance(got, tuple):
                _submitted(run_dir, got, json_out)
                return
            magic, reused = got
        elif progress and not json_out:
            from cnnlab.utils.progress import ProgressLog

            with ProgressLog("MAGIC replay steps") as bar:  # a bar on a terminal, plain lines in a log
                magic, reused = magic_analysis(run_dir, **kw, progress=bar.callback())
        else:
            magic, reused = magic_analysis(run_dir, **kw)
    except (ConfigError, ValueError, FileExistsError, FileNotFoundError, ImportError, RuntimeError) as e:
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


def _chunked(run_dir: Path, targets: list[int], chunk: int, executor: str, *, force: bool, dataset, chunk_kw: dict,
             plot_targets: int, progress: bool, task_command, threads: Optional[int], max_concurrent: Optional[int],
             dry_run: bool, address: Optional[str], workers: Optional[int]):
    """MAGIC over chunks of targets through ``executor``: (result, reused) once merged, else the Submission."""
    from cnnlab.attribution.pipeline import magic_chunks, merge_magic_chunks, reusable_magic
    from cnnlab.experiments.attribution_jobs import run_magic_chunks
    from cnnlab.utils.progress import ProgressLog

    saved = None if force else reusable_magic(run_dir, targets, chunk_kw["measure"], chunk_kw["dtype"])
    if saved is not None:
        return saved, True
    chunks = magic_chunks(run_dir, targets, chunk, force=force, dataset=dataset, **chunk_kw)
    with ProgressLog("MAGIC chunks", len(chunks), mode="auto" if progress else "off") as bar:
        sub = run_magic_chunks(chunks, executor, task_command(chunks), workers=workers, threads=threads,
                               max_concurrent=max_concurrent, dry_run=dry_run, address=address,
                               progress=bar.callback())
    if sub is not None:
        return sub
    return merge_magic_chunks(chunks, plot_columns=range(plot_targets)), False


def _chunk_task(cfg, run_dir: Path, targets: list[int], chunk: int, index: int, threads: Optional[int],
                json_out: bool, dataset, chunk_kw: dict) -> None:
    """One array task: compute chunk ``index`` (1-based) of the request unless its file exists."""
    import time

    from cnnlab.attribution.magic import prepare_config
    from cnnlab.attribution.pipeline import magic_chunks
    from cnnlab.engine.run import read_run_config
    from cnnlab.utils.configdiff import config_diff, mismatch_message

    if threads:
        import torch

        torch.set_num_threads(threads)
    if not (run_dir / "config.yaml").is_file():
        fail(f"--index: {run_dir} holds no run (no config.yaml); run `cnnlab magic` without --index first")
    diff = config_diff(read_run_config(run_dir).to_dict(), prepare_config(cfg).to_dict())
    if diff:
        fail(mismatch_message("compute MAGIC chunks of", run_dir, diff, hint="pass the config the run was trained with"))
    chunks = magic_chunks(run_dir, targets, chunk, dataset=dataset, **chunk_kw)
    from cnnlab.utils.progress import ProgressLog

    t0 = time.perf_counter()
    # array tasks log to files: plain "k/N, ETA" lines of the replayed steps
    with ProgressLog(f"MAGIC chunk {index} replay steps", mode="off" if json_out else "auto") as bar:
        computed = chunks.compute_one(index, progress=bar.callback())
    record = {"index": index, "chunks": len(chunks), "targets": chunks.chunks[index - 1] if index <= len(chunks) else [],
              "action": "computed" if computed else "skipped", "seconds": time.perf_counter() - t0}
    if json_out:
        print_json(record)
    else:
        console.print(f"MAGIC chunk {index}/{len(chunks)}: {record['action']} ({record['seconds']:.1f} s)",
                      highlight=False, markup=False)


def _submitted(run_dir: Path, sub, json_out: bool) -> None:
    from cnnlab.experiments.attribution_jobs import submission_summary

    print_submission(sub, {"run_dir": str(run_dir), **submission_summary(sub, unit="chunks")}, json_out, tasks="MAGIC chunk",
                     then="once the tasks finished, run the same `cnnlab magic` command again (without --force) to merge the "
                          "chunks into one scores file")
