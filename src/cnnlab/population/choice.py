"""``backend="auto"``: time a short probe of each step backend on the real batch and pick the fastest estimate."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from cnnlab.population.backends import make_stepper
from cnnlab.population.plan import TrainPlan
from cnnlab.population.procs import PROCESS_STARTUP_S, lr_picklable, start_method, worker_threads

_CHOICES: dict[tuple, dict[str, Any]] = {}


def cached_choice(plan: TrainPlan, workers: int) -> dict[str, Any]:
    """``choose_backend``, remembered per (architecture, batch, population, device, threads) in this process,
    so repeated calls (e.g. LDS training subset models chunk by chunk) probe once."""
    m = plan.models[0]
    x, _, _ = plan.batch(0, 0, [0])
    key = (type(m).__qualname__, tuple((n, tuple(p.shape)) for n, p in m.named_parameters()), tuple(x.shape), x.dtype,
           plan.shared_batch, plan.size, plan.epochs * plan.steps_per_epoch, workers, str(plan.device),
           torch.get_num_threads(), type(plan.settings.optimizer).__name__, plan.settings.autocast_dtype)
    if key not in _CHOICES:
        _CHOICES[key] = choose_backend(plan, workers)
        return _CHOICES[key]
    return {**_CHOICES[key], "cached": True}


def _time_steps(plan: TrainPlan, backend: str, ids: list[int], *, threads: int | None = None,
                give_up: float = math.inf) -> tuple[float, float | None]:
    """(first step, steady step) seconds for members ``ids``; the steady step is None when the first step
    alone took longer than ``give_up`` (the candidate is then slower than one already timed)."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        stepper = make_stepper(backend, plan.models[0], plan.settings, plan.initial_state(ids), member_ids=ids, seed=plan.seed)
        x, y, w = plan.batch(0, 0, ids)
        lrs = [plan.lr_at(0) * plan.lr_scale[j] for j in ids]
        sync = torch.cuda.synchronize if plan.device.type == "cuda" else (lambda: None)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            stepper.step(x, y, w, lrs, shared=plan.shared_batch)
            sync()
            times.append(time.perf_counter() - t)
            if times[0] > give_up:
                return times[0], None
        return times[0], times[1]
    finally:
        torch.set_num_threads(saved)


def choose_backend(plan: TrainPlan, workers: int, probe_members: int = 2) -> dict[str, Any]:
    """Pick the backend with the smallest estimated training time from a short probe.

    Times a first and a second step of ``min(M, probe_members)`` members on the first real batch with each
    candidate (``procs`` is timed as the loop on one thread), scales the second to M members and all steps,
    and adds process start-up for ``procs``. Candidates are timed likeliest-fastest first (CPU: procs, loop,
    vmap; accelerators: vmap, loop); one whose first step alone outlasts the best estimate so far is not
    timed further, and the in-process loop is not timed when even perfect thread scaling of the one-thread
    timing could not beat the best. Returns the choice with the timings it rests on.
    """
    ids = list(range(min(plan.size, probe_members)))
    k = len(ids)
    steps = plan.epochs * plan.steps_per_epoch
    cpu = plan.device.type == "cpu"
    procs_ok = cpu and workers > 1 and plan.size > 1 and lr_picklable(plan)
    order = (["procs"] if procs_ok else []) + (["loop", "vmap"] if cpu else ["vmap", "loop"])
    per_step: dict[str, float] = {}
    estimates: dict[str, float] = {}
    skipped: dict[str, str] = {}
    one_thread: float | None = None  # seconds per member-step of the loop on one thread
    for name in order:
        best = min(estimates.values(), default=math.inf)
        if name == "procs":
            n_chunks = min(workers, plan.size)
            first, step = _time_steps(plan, "loop", ids, threads=1, give_up=best)
            if step is not None:
                one_thread = step / k
                per_step[name] = one_thread * math.ceil(plan.size / n_chunks)
                estimates[name] = per_step[name] * steps + PROCESS_STARTUP_S[start_method(worker_threads(n_chunks))]
            else:
                skipped[name] = f"its first step took {first:.2f}s, more than the best estimated total {best:.2f}s"
            continue
        if name == "loop" and one_thread is not None:
            # the in-process loop on T threads is at best T times the one-thread loop: skip it when even that loses
            bound = one_thread * plan.size * steps / max(1, torch.get_num_threads())
            if bound >= best:
                skipped[name] = (f"even perfect scaling over {torch.get_num_threads()} threads ({bound:.2f}s) "
                                 f"cannot beat {best:.2f}s")
                continue
        first, step = _time_steps(plan, name, ids, give_up=best)
        if step is not None:
            per_step[name] = step * plan.size / k
            estimates[name] = per_step[name] * steps
        else:
            skipped[name] = f"its first step took {first:.2f}s, more than the best estimated total {best:.2f}s"
    best_name = min(estimates, key=lambda n: estimates[n])
    reason = f"fastest estimated total on {plan.device.type}: " + ", ".join(
        f"{n} {estimates[n]:.2f}s" for n in sorted(estimates, key=lambda n: estimates[n]))
    if skipped:
        reason += "; not timed further: " + ", ".join(skipped)
    return {"backend": best_name, "device": str(plan.device), "probe_members": k, "workers": workers,
            "seconds_per_step": per_step, "estimated_total_s": estimates, "skipped": skipped, "reason": reason}
