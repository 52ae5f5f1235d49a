"""``cnnlab train``: train one config into a run directory."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import List, Optional

import typer

from cnnlab.cli.common import (
    check_mlflow, check_out, fail, mlflow_option, progress_option, resolve_mlflow_uri, resume_option,
    run_out_option, set_option,
)
from cnnlab.utils.console import print_json, print_table


def train_cmd(
    config: Optional[str] = typer.Argument(None, help="YAML run config (default: small CNN on digits)."),
    overrides: Optional[List[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=0.1 train.epochs=3"),
    out: Optional[Path] = run_out_option(),
    resume: bool = resume_option(),
    json_out: bool = typer.Option(False, "--json", help="Print result.json to stdout instead of a table."),
    progress: bool = progress_option(),
    mlflow: Optional[str] = mlflow_option("<parent of the run directory>"),
    set_: Optional[List[str]] = set_option("key=value override (repeatable; the same as a positional key=value)"),
) -> None:
    """Train a model. With no arguments: the default small CNN on the embedded digits data."""
    from cnnlab.data.errors import DataError
    from cnnlab.engine.config import ConfigError, load_config
    from cnnlab.engine.trainer import Trainer, TrainingDiverged
    from cnnlab.utils.io import PathEscapeError

    if config is not None and "=" in config and not Path(config).exists():
        overrides = [config, *(overrides or [])]
        config = None
    try:
        cfg = load_config(config, [*(overrides or []), *(set_ or [])])
    except ConfigError as e:
        fail(str(e))
    check_out(out, resume)
    run_dir = out or Path("runs") / f"{cfg.name}-{datetime.now():%Y%m%d-%H%M%S}"
    check_mlflow(mlflow)
    lock = None
    created = not run_dir.exists()  # a refusal before anything is written leaves no empty run directory behind
    if int(os.environ.get("RANK", "0")) == 0:  # one claim per run (rank 0 of a torchrun job holds it)
        from cnnlab.experiments.store import LOCK_NAME, RunLock

        lock = RunLock.acquire(run_dir)
        if lock is None:
            fail(f"{run_dir} is being trained by another live process (it holds {run_dir / LOCK_NAME}); "
                 "wait for it to finish or pick another --out")
    try:
        callbacks = []
        if mlflow is not None:
            from cnnlab.experiments.tracking import MLflowCallback

            callbacks.append(MLflowCallback(resolve_mlflow_uri(mlflow, run_dir.parent), experiment=cfg.name,
                                            run_name=run_dir.name))
        trainer = Trainer(cfg, run_dir, progress=progress and not json_out, callbacks=callbacks)
        result = trainer.fit(resume=resume)
    except (ConfigError, FileExistsError, PathEscapeError) as e:
        fail(str(e))
    except DataError as e:  # missing or corrupt dataset files: the message says how to get them
        fail(f"data.name: {e}")
    except ValueError as e:  # an unreadable checkpoint, an unknown data.options key
        fail(str(e))
    except TrainingDiverged as e:
        fail(f"{e}; status 'diverged' written to {run_dir / 'result.json'}", code=3)
    finally:  # under torchrun: leave the process group before this rank exits
        from cnnlab.engine.distributed import shutdown

        shutdown()
        if lock is not None:
            lock.release()
        if created and run_dir.is_dir() and not run_dir.is_symlink() and not any(run_dir.iterdir()):
            run_dir.rmdir()
    if not trainer.is_main:
        return
    if json_out:
        print_json(result)
        return
    f = result["final"]
    rows = [("run directory", str(run_dir)), ("status", result["status"]), ("epochs", result["epochs_completed"]),
            ("test accuracy", f"{f['test_acc']:.4f}"), ("test loss", f"{f['test_loss']:.4f}"),
            *([("best (on validation): test accuracy", f"{result['test']['best']['test_acc']:.4f}")] if "best" in result.get("test", {}) else []),
            ("train loss", f"{f['train_loss']:.4f}"), ("macro F1", f"{f['test_f1']:.4f}"),
            ("train time (s)", f"{result['timings']['train_s']:.1f}"),
            ("images/s", f"{result['timings']['images_per_s']:,.0f}")]
    if "gen_gap" in f:
        rows.append(("generalisation gap", f"{f['gen_gap']:.4f}"))
    print_table(f"{cfg.name}: {cfg.model.name} on {cfg.data.name}", ["", "value"], rows)
