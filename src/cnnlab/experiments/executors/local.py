"""Local execution: worker processes on this machine, each with its own torch thread count.

Workers (this process plus spawned ones) share no queue: each walks the run list and claims runs through
the store's locks, exactly as workers on other machines sharing the filesystem would, so ``cnnlab sweep
run`` started on several machines at once never trains a run twice.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import threading
import time
from typing import Any, Callable, Optional

from pydantic import Field

from cnnlab.engine.config import StrictModel
from cnnlab.experiments.executors.base import Executor, SubmitRequest, Submission, register_executor
from cnnlab.experiments.runner import Outcome, run_one
from cnnlab.experiments.sweep import Sweep, SweepRun


class LocalOptions(StrictModel):
    """``executors: {local: ...}`` of a sweep file."""

    workers: int = Field(1, ge=1, description="worker processes on this machine")
    threads_per_worker: Optional[int] = Field(None, ge=1, description="torch threads per worker (default: cores / workers)")


def default_threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_local(
    sweep: Sweep,
    runs: Optional[list[SweepRun]] = None,
    *,
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    retry_failed: bool = False,
    rerun_stale: bool = False,
    mlflow_uri: Optional[str] = None,
    on_outcome: Optional[Callable[[Outcome], None]] = None,
    poll_s: float = 1.0,
) -> list[Outcome]:
    """Execute ``runs`` (default: all; finished ones are skipped) with ``workers`` processes.

    ``workers=1`` runs in this process; more workers are this process plus ``workers - 1`` spawned ones.
    No run is left behind: a worker that found a run claimed waits for it, and takes it over when its
    holder died (same host: pid gone; other host: heartbeat stale), so the call returns only when every
    run is done, failed, diverged or stale. Returns the outcomes of the runs this call trained or skipped.
    """
    indices = [r.index for r in (sweep.runs() if runs is None else runs)]
    kw = {"retry_failed": retry_failed, "rerun_stale": rerun_stale, "mlflow_uri": mlflow_uri}
    if mlflow_uri:  # create the tracking store and experiment once, before workers race to do it
        from cnnlab.experiments.tracking import ensure_experiment

        ensure_experiment(mlflow_uri, sweep.name)
    if workers <= 1:
        import torch

        before = torch.get_num_threads()
        if threads_per_worker:
            torch.set_num_threads(threads_per_worker)
        try:
            return _loop(sweep, indices, kw, on_outcome, poll_s)
        finally:
            torch.set_num_threads(before)
    return _run_workers(sweep, indices, workers, threads_per_worker or default_threads(workers), kw, on_outcome, poll_s)


def _loop(sweep: Sweep, indices: list[int], kw: dict[str, Any], on_outcome: Optional[Callable[[Outcome], None]],
          poll_s: float = 1.0) -> list[Outcome]:
    """One pass over ``indices``, then wait for the runs others held, taking over those whose holder died."""
    outcomes = []

    def attempt(i: int) -> bool:
        out = run_one(sweep, i, **kw)
        if out.action == "busy":
            return False
        outcomes.append(out)
        if on_outcome is not None:
            on_outcome(out)
        return True

    held = [i for i in indices if not attempt(i)]
    while held:
        time.sleep(poll_s)
        still = []
        for i in held:
            st = sweep.run(i).state()
            if st.status == "running":
                still.append(i)
            elif st.status == "pending" and not attempt(i):  # its holder is gone (or let go): take it over
                still.append(i)
            # done / failed / diverged / stale: finished by its holder
        held = still
    return outcomes


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    """In a spawned worker: when the process that started it dies (even by SIGKILL), stop like on SIGTERM
    (the run in progress is released and stays resumable)."""
    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="cnnlab-parent-watch", daemon=True).start()


def _worker(sweep: Sweep, indices: list[int], threads: int, kw: dict[str, Any], events: Any, worker_id: int,
            parent: int, poll_s: float) -> None:
    import torch

    from cnnlab.experiments.runner import exit_on_sigterm

    exit_on_sigterm()
    _watch_parent(parent)
    torch.set_num_threads(threads)
    # All workers walk the list in sweep order (seed-major), so finished runs cover the factors early;
    # a run another worker holds costs one failed O_EXCL create.
    try:
        _loop(sweep, indices, kw, lambda o: events.put(("outcome", o.to_dict())), poll_s)
    finally:
        events.put(("exit", worker_id))


def _run_workers(sweep: Sweep, indices: list[int], workers: int, threads: int, kw: dict[str, Any],
                 on_outcome: Optional[Callable[[Outcome], None]], poll_s: float) -> list[Outcome]:
    """This process is worker 0 (already warm: it starts training at once); ``workers - 1`` spawned
    processes join as soon as they have imported torch. Stopping this process stops them."""
    import torch

    ctx = mp.get_context("spawn")  # a clean interpreter per worker: own torch threads, no forked locks
    events = ctx.Queue()
    procs = {w: ctx.Process(target=_worker, args=(sweep, indices, threads, kw, events, w, os.getpid(), poll_s),
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
    finished = False
    try:
        def take_and_drain(out: Outcome) -> None:
            take(out)
            drain()

        _loop(sweep, indices, kw, take_and_drain, poll_s)
        torch.set_num_threads(before)
        while len(exited) < len(procs):
            try:
                handle(*events.get(timeout=0.5))
            except queue_mod.Empty:
                for w, p in procs.items():  # crashed without saying goodbye (killed, segfault)
                    if not p.is_alive() and p.exitcode != 0:
                        exited.add(w)
        drain()
        # a worker killed after this process's last look at its runs: finish them here
        _loop(sweep, [i for i in indices if sweep.run(i).state().status == "pending"], kw,
              lambda out: take(out), poll_s)
        finished = True
    finally:
        torch.set_num_threads(before)
        if not finished:  # interrupted: stop the workers now (they release their runs, which stay resumable)
            for p in procs.values():
                if p.is_alive():
                    p.terminate()
        for p in procs.values():
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    skipped = [o for o in outcomes.values() if o.action == "skipped"]
    if on_outcome is not None:
        for o in skipped:
            on_outcome(o)
    return sorted(outcomes.values(), key=lambda o: o.index)


@register_executor
class LocalExecutor(Executor):
    name = "local"
    description = "worker processes on this machine (cnnlab sweep run)"
    options_model = LocalOptions
    waits = True

    def submit(self, sweep: Sweep, request: SubmitRequest) -> Submission:
        opts: LocalOptions = self.options(sweep)
        outcomes = run_local(sweep, request.runs, workers=request.workers or opts.workers,
                             threads_per_worker=request.threads or opts.threads_per_worker,
                             retry_failed=request.retry_failed, rerun_stale=request.rerun_stale,
                             mlflow_uri=request.mlflow_uri,
                             on_outcome=request.on_outcome)
        return Submission(self.name, [r.index for r in request.runs], submitted=True,
                          outcomes=[o.to_dict() for o in outcomes])
