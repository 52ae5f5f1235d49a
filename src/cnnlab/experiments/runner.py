"""Run one sweep run under the store's rules: claim it, skip it if finished, resume it if interrupted,
record a failure instead of raising, release the claim. Every executor ends up calling ``run_one``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from cnnlab.experiments import store
from cnnlab.experiments.sweep import Sweep, SweepRun
from cnnlab.utils.io import PathEscapeError, ensure_contained, safe_unlink

SUMMARY_METRICS = ("test_acc", "test_loss", "train_loss", "gen_gap")
# what the engine and the store write in a run directory: none of them may lead outside it
_RUN_FILES = ("checkpoints", "metrics.jsonl", "result.json", "config.yaml", store.RUN_RECORD, store.FAILURE_NAME,
              store.PREVIOUS_FAILURE_NAME, store.TRACEBACK_NAME)

_DATASET_CACHE: dict[str, Any] = {}


@dataclass
class Outcome:
    """What one ``run_one`` call did. ``action``: trained | resumed | skipped | busy | refused (a path escape)."""

    index: int
    name: str
    status: str
    action: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of this process (all its threads) while training the run
    error: Optional[str] = None
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (a scheduler's time limit, ``kill``) into SystemExit, so the claim is released, the MLflow
    run closed and the run left resumable instead of waiting for its lock to go stale."""
    import signal
    import sys
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def cached_dataset(config) -> Any:
    """Load the run's dataset, reusing the last one this process loaded when the data section matches."""
    from cnnlab.data import load_dataset

    d = config.data
    key = json.dumps([d.name, d.root, d.options], sort_keys=True, default=str)
    if key not in _DATASET_CACHE:
        _DATASET_CACHE.clear()  # keep one dataset in memory per worker
        _DATASET_CACHE[key] = load_dataset(d.name, root=d.root, **d.options)
    return _DATASET_CACHE[key]


def run_one(sweep: Sweep, index: int, *, retry_failed: bool = False, rerun_stale: bool = False,
            mlflow_uri: Optional[str] = None, progress: bool = False, callbacks: tuple = ()) -> Outcome:
    """Train run ``index`` (1-based) of ``sweep`` if it is not done and no other worker holds it.

    A run directory trained under another config (``stale``) is left alone unless ``rerun_stale``: then its
    old result, log and checkpoints are deleted and the run is trained afresh."""
    run = sweep.run(index)
    try:
        ensure_contained(sweep.root, run.run_dir.relative_to(sweep.root))
        lock = store.RunLock.acquire(run.run_dir)
    except PathEscapeError as e:
        return Outcome(index, run.name, "failed", "refused", error=str(e))
    if lock is None:
        st = run.state()
        return Outcome(index, run.name, st.status, "busy", error=None if st.status != "failed" else st.detail)
    try:
        st = run.state(ignore_lock=True)
        if st.status == "stale" and not rerun_stale:
            return Outcome(index, run.name, "stale", "skipped", error=st.detail)
        if st.status in ("done", "diverged") or (st.status == "failed" and not retry_failed):
            return Outcome(index, run.name, st.status, "skipped", metrics=_summary(st.result))
        try:
            ensure_contained(run.run_dir, *_RUN_FILES)
            if st.status == "stale":
                store.clear_stale(run.run_dir)
                st = run.state(ignore_lock=True)
        except PathEscapeError as e:
            return Outcome(index, run.name, "failed", "refused", error=str(e))
        return _train(sweep, run, st, mlflow_uri=mlflow_uri, progress=progress, callbacks=callbacks)
    finally:
        lock.release()


def _train(sweep: Sweep, run: SweepRun, st: store.RunState, *, mlflow_uri: Optional[str], progress: bool,
           callbacks: tuple) -> Outcome:
    from cnnlab.engine.trainer import Trainer, TrainingDiverged

    store.clear_failure(run.run_dir)
    resume = (run.run_dir / store.LAST_CHECKPOINT).exists()
    if not resume:
        _clear_partial(run.run_dir)
    store.write_run_record(run.run_dir, run.expected, sweep=sweep.name, index=run.index, name=run.name)
    tracker = None
    cbs = list(callbacks)
    if mlflow_uri:
        from cnnlab.experiments.tracking import MLflowCallback

        tracker = MLflowCallback(mlflow_uri, experiment=sweep.name, run_name=run.name,
                                 tags=_tags(sweep, run))
        cbs.insert(0, tracker)  # first: it sees every epoch before another callback can stop the run
    t0, c0 = time.perf_counter(), time.process_time()
    action = "resumed" if resume else "trained"
    try:
        trainer = Trainer(run.config, run.run_dir, callbacks=cbs, dataset=cached_dataset(run.config), progress=progress)
        result = trainer.fit(resume=resume)
        return Outcome(run.index, run.name, "done", action, time.perf_counter() - t0, time.process_time() - c0,
                       metrics=_summary(result))
    except TrainingDiverged as e:
        return Outcome(run.index, run.name, "diverged", action, time.perf_counter() - t0, time.process_time() - c0, error=str(e),
                       metrics=_summary(store.read_json(run.run_dir / store.RESULT_NAME)))
    except Exception as e:  # noqa: BLE001  (a failed run is recorded, the sweep goes on)
        record = store.record_failure(run.run_dir, e, index=run.index)
        if tracker is not None:
            tracker.close("FAILED", error=record["error"])
        return Outcome(run.index, run.name, "failed", action, time.perf_counter() - t0, time.process_time() - c0,
                       error=record["error"])
    except BaseException:  # Ctrl-C / kill: leave the run resumable
        if tracker is not None:
            tracker.close("KILLED")
        raise


def _clear_partial(run_dir: Path) -> None:
    """A fresh (re)start: drop a metrics log and top-k checkpoints left by an attempt that saved no last.pt."""
    safe_unlink(run_dir, "metrics.jsonl")
    ckpts = run_dir / "checkpoints"
    if ckpts.is_dir():
        for p in ckpts.glob("*.pt"):
            safe_unlink(run_dir, p.relative_to(run_dir))


def _tags(sweep: Sweep, run: SweepRun) -> dict[str, str]:
    tags = {"cnnlab.sweep": sweep.name, "cnnlab.sweep_file": str(sweep.path.resolve()), "cnnlab.index": str(run.index),
            "cnnlab.run_dir": str(run.run_dir.resolve()), "cnnlab.seed": str(run.seed)}
    tags.update({f"factor.{k}": str(v) for k, v in run.labels.items()})
    return tags


def _summary(result: Optional[dict[str, Any]]) -> dict[str, float]:
    final = (result or {}).get("final") or {}
    return {k: final[k] for k in SUMMARY_METRICS if isinstance(final.get(k), (int, float))}
