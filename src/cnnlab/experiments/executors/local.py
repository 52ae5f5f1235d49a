"""Local execution: worker processes on this machine, each with its own torch thread count.

Workers (this process plus spawned ones) share no queue: each walks the run list and claims runs through
the store's locks, exactly as workers on other machines sharing the filesystem would, so ``cnnlab sweep
run`` started on several machines at once never trains a run twice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
from typing import Any, Callable, Optional

from cnnlab.experiments.executors.base import Executor, SubmitRequest, Submission, register_executor
from cnnlab.experiments.runner import Outcome, run_one
from cnnlab.experiments.sweep import Sweep, SweepRun


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_local(
    sweep: Sweep,
    runs: Optional[list[SweepRun]] = None,
    *,
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    retry_failed: bool = False,
    mlflow_uri: Optional[str] = None,
    on_outcome: Optional[Callable[[Outcome], None]] = None,
) -> list[Outcome]:
    """Execute ``runs`` (default: all; finished ones are skipped) with ``workers`` processes.

    ``workers=1`` runs in this process; more workers are this process plus ``workers - 1`` spawned ones. Returns the outcomes of the runs this call trained or skipped
    (runs that another worker held are left out).
    """
    indices = [r.index for r in (sweep.runs() if runs is None else runs)]
    if mlflow_uri:  # create the tracking store and experiment once, before workers race to do it
        from cnnlab.experiments.tracking import ensure_experiment

        ensure_experiment(mlflow_uri, sweep.name)
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        if threads_per_worker:
            torch.set_num_threads(threads_per_worker)
        try:
            return _loop(sweep, indices, retry_failed, mlflow_uri, on_outcome)
        finally:
            torch.set_num_threads(before)
    return _run_workers(sweep, indices, workers, threads_per_worker or default_threads(workers), retry_failed,
                        mlflow_uri, on_outcome)


def _loop(sweep: Sweep, indices: list[int], retry_failed: bool, mlflow_uri: Optional[str],
          on_outcome: Optional[Callable[[Outcome], None]]) -> list[Outcome]:
    outcomes = []
    for i in indices:
        out = run_one(sweep, i, retry_failed=retry_failed, mlflow_uri=mlflow_uri)
        if out.action == "busy":
            continue
        outcomes.append(out)
        if on_outcome is not None:
            on_outcome(out)
    return outcomes


def _worker(sweep: Sweep, indices: list[int], threads: int, retry_failed: bool, mlflow_uri: Optional[str],
            events: Any, worker_id: int) -> None:
    import torch

    from cnnlab.experiments.runner import exit_on_sigterm

    exit_on_sigterm()
    torch.set_num_threads(threads)
    # All workers walk the list in sweep order (seed-major), so finished runs cover the factors early;
    # a run another worker holds costs one failed O_EXCL create.
    try:
        _loop(sweep, indices, retry_failed, mlflow_uri, lambda o: events.put(("outcome", o.to_dict())))
    finally:
        events.put(("exit", worker_id))


def _run_workers(sweep: Sweep, indices: list[int], workers: int, threads: int, retry_failed: bool,
                 mlflow_uri: Optional[str], on_outcome: Optional[Callable[[Outcome], None]]) -> list[Outcome]:
    """This process is worker 0 (already warm: it starts training at once); ``workers - 1`` spawned
    processes join as soon as they have imported torch."""
    import torch

    ctx = mp.get_context("spawn")  # a clean interpreter per worker: own torch threads, no forked locks
    events = ctx.Queue()
    procs = {w: ctx.Process(target=_worker, args=(sweep, indices, threads, retry_failed, mlflow_uri, events, w),
                            name=f"cnnlab-sweep-worker-{w}", daemon=False) for w in range(1, workers)}
    for p in procs.values():
        p.start()
    # A run that one worker trained shows up as "skipped" for a worker that claimed it just after:
    # keep one outcome per run, the training one; report skips only for runs nobody trained.
    outcomes: dict[int, Outcome] = {}
    exited: set[int] = set()

    def take(out: Outcome) -> None:
        if out.action == "skipped":
            outcomes.setdefault(out.index, out)
            return
        outcomes[out.index] = out
        if on_outcome is not None:
            on_outcome(out)

    def handle(kind: str, payload: Any) -> None:
        if kind == "outcome":
            take(Outcome(**payload))
        elif kind == "exit":
            exited.add(payload)

    def drain() -> None:
        while True:
            try:
                handle(*events.get_nowait())
            except queue_mod.Empty:
                return

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _loop(sweep, indices, retry_failed, mlflow_uri, lambda out: (take(out), drain()))
        torch.set_num_threads(before)
        while len(exited) < len(procs):
            try:
                handle(*events.get(timeout=0.5))
            except queue_mod.Empty:
                for w, p in procs.items():  # crashed without saying goodbye (killed, segfault): runs stay resumable
                    if not p.is_alive() and p.exitcode != 0:
                        exited.add(w)
    finally:
        torch.set_num_threads(before)
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    skipped = [o for o in outcomes.values() if o.action == "skipped"]
    if on_outcome is not None:
        for o in skipped:
            on_outcome(o)
    return sorted(outcomes.values(), key=lambda o: o.index)


@register_executor
class LocalExecutor(Executor):
    name = "local"
    description = "worker processes on this machine (cnnlab sweep run)"

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        opts = sweep.spec.executors.local
        outcomes = run_local(sweep, request.runs, workers=request.workers or opts.workers,
                             threads_per_worker=request.threads or opts.threads_per_worker,
                             retry_failed=request.retry_failed, mlflow_uri=request.mlflow_uri,
                             on_outcome=request.on_outcome)
        return Submission(self.name, [r.index for r in request.runs], submitted=True,
                          outcomes=[o.to_dict() for o in outcomes])
