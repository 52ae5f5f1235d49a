"""Latency: ``torch.utils.benchmark.Timer.blocked_autorange`` (median, IQR), and CUDA events on a GPU."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Latency:
    """Seconds per call: median and interquartile range over the timer's blocks, and how many calls were timed."""

    median_s: float
    iqr_s: float
    mean_s: float
    calls: int
    blocks: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(fn: Callable[[], object], *, min_run_time: float = 0.5, warmup: int = 2, num_threads: int | None = None,
            label: str = "") -> Latency:
    """Time ``fn()`` with ``Timer.blocked_autorange`` after ``warmup`` calls (the timer synchronises CUDA)."""
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, label=label,
                  num_threads=num_threads if num_threads is not None else torch.get_num_threads())
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(float(m.median), float(m.iqr), float(m.mean), int(m.number_per_run * len(m.times)), len(m.times))


def cuda_event_latency(fn: Callable[[], object], *, iters: int = 20, warmup: int = 3) -> dict[str, float]:
    """Per-call GPU time from CUDA events (median and IQR in seconds over ``iters`` single calls)."""
    if not torch.cuda.is_available():
        raise RuntimeError("CUDA events need a CUDA device")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000.0)
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "iqr_s": q[2] - q[0], "iters": iters}


__all__ = ["Latency", "cuda_event_latency", "measure"]
