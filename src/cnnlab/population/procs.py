"""The ``procs`` backend: members split into contiguous chunks, each trained by the loop in its own process.

Members never interact, so this equals the in-process loop up to float rounding. Workers report
member-steps through a queue for the progress bar; states come back as serialized tensors.
"""

from __future__ import annotations

import io
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Sequence

import torch

from cnnlab.engine.setup import apply_malloc
from cnnlab.population.members import train_members
from cnnlab.population.plan import ProgressFn, TrainPlan, default_workers
from cnnlab.population.state import PopulationState

# Start-up of the worker processes in seconds, by start method, measured on the 2-core CPU machine this
# project is benchmarked on: "fork" (used when each worker gets one thread, so no OpenMP pool is
# inherited) ~0.1 s; "spawn" re-imports torch and cnnlab ~2.5 s. Only used by ``auto``'s estimate.
PROCESS_STARTUP_S = {"fork": 0.2, "spawn": 2.5}

_PROGRESS_QUEUE = None


def _init_worker(threads: int, queue) -> None:
    global _PROGRESS_QUEUE
    torch.set_num_threads(threads)
    apply_malloc(torch.device("cpu"))
    _PROGRESS_QUEUE = queue


def _worker_train(plan: TrainPlan, ids: list[int]) -> tuple[bytes, list[dict]]:
    def report(n: int) -> None:
        if _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put(n)

    state, history = train_members(plan, "loop", ids, report)
    buf = io.BytesIO()
    torch.save(state.tensors(), buf)
    return buf.getvalue(), history


def shards(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, stop) ranges covering 0..n, sizes differing by at most one, none empty."""
    parts = max(1, min(parts, n))
    k, r = divmod(n, parts)
    out, s = [], 0
    for p in range(parts):
        e = s + k + (1 if p < r else 0)
        out.append((s, e))
        s = e
    return out


def chunks(ids: Sequence[int], parts: int) -> list[list[int]]:
    """``ids`` cut into ``parts`` contiguous groups (see :func:`shards`)."""
    return [list(ids[s:e]) for s, e in shards(len(ids), parts)]


def train_processes(plan: TrainPlan, ids: Sequence[int], workers: int, progress: ProgressFn | None) -> tuple[PopulationState, list[dict]]:
    """Train members ``ids`` in ``workers`` processes, each a contiguous chunk with the loop backend; the
    states concatenated in member order and the histories merged (per-member lists joined)."""
    import torch.multiprocessing as mp  # registers torch's tensor reductions for the pipes

    groups = chunks(ids, workers)
    threads = worker_threads(len(groups))
    ctx = mp.get_context(start_method(threads))
    queue = ctx.Queue()
    with ProcessPoolExecutor(max_workers=len(groups), mp_context=ctx, initializer=_init_worker, initargs=(threads, queue)) as ex:
        futures = [ex.submit(_worker_train, plan, c) for c in groups]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
        _drain(queue, progress)
        results = [f.result() for f in futures]
    states = [PopulationState.from_tensors(torch.load(io.BytesIO(b), weights_only=True)) for b, _ in results]
    state = PopulationState.concat(states).to(plan.device)
    return state, _merge_histories([h for _, h in results])


def lr_picklable(plan: TrainPlan) -> bool:
    """Whether the lr schedule can be sent to worker processes (a module-level function, not a lambda)."""
    import pickle

    try:
        pickle.dumps(plan.lr)
    except Exception:
        return False
    return True


def worker_threads(workers: int) -> int:
    """Threads per worker process: the usable cores shared out, at least one."""
    return max(1, default_workers(10**6) // workers)


def start_method(threads: int) -> str:
    """fork is near-instant but only safe without an inherited OpenMP pool, i.e. with one thread per worker."""
    return "fork" if threads == 1 and os.name == "posix" else "spawn"


def _drain(queue, progress: ProgressFn | None) -> None:
    import queue as _q

    while True:
        try:
            n = queue.get_nowait()
        except (_q.Empty, OSError, ValueError):
            return
        if progress is not None:
            progress(n)


def _merge_histories(parts: list[list[dict]]) -> list[dict]:
    merged = []
    for records in zip(*parts):
        out: dict[str, Any] = {}
        for k, v in records[0].items():
            if isinstance(v, list):
                out[k] = [x for r in records for x in r[k]]
            elif k == "train_time_s":
                out[k] = max(r[k] for r in records)
            else:
                out[k] = v
        merged.append(out)
    return merged
