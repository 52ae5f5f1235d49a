"""LDS subset-model training through the local executor: 2 worker processes (1 torch thread each) vs 1,
interleaved in the same sitting, on a tiny digits MAGIC run. Writes its section of BENCHMARKS.md.

    .venv/bin/python benchmarks/lds_workers.py [--models 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

CONFIG = {"name": "bench", "seed": 0, "model": {"name": "tiny_cnn", "options": {"widths": [8, 16], "activation": "gelu", "pool": "avg"}},
          "data": {"name": "digits", "subset": 1024}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
          "schedule": {"name": "onecycle"}, "train": {"epochs": 6, "batch_size": 32, "device": "cpu"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    from cnnlab.attribution.lds import Regime, reset_study
    from cnnlab.attribution.pipeline import ensure_trained_run, lds_study, magic_analysis
    from cnnlab.engine.config import build_config
    from cnnlab.experiments.attribution_jobs import run_lds_models

    work = Path(tempfile.mkdtemp(prefix="cnnlab-lds-bench-"))
    run = work / "run"
    torch.set_num_threads(1)
    ensure_trained_run(build_config(CONFIG), run)
    magic_analysis(run, targets=range(4), plot_columns=None)
    regime = Regime(0.25, args.models, 0)
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):
        for workers in (1, 2):  # interleaved
            reset_study(run, regime)
            study = lds_study(run, regime)
            t0 = time.perf_counter()
            run_lds_models(study, "local", workers=workers, threads=1)
            times[workers].append(time.perf_counter() - t0)
            assert not study.pending()
    shutil.rmtree(work, ignore_errors=True)
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
    best = {w: min(v) for w, v in times.items()}
    speedup = best[1] / best[2]
    body = f"""`benchmarks/lds_workers.py`: {args.models} subset models of a tiny digits run (tiny_cnn 8-16, 1024 images,
6 epochs), trained by `cnnlab lds --executor local` with 1 worker vs 2 worker processes (1 torch thread each),
interleaved, {args.rounds} rounds, best round reported. The 2-worker time includes spawning the worker processes
(importing torch in each, ~seconds), which a study of hundreds of models amortises.

| workers | best s | all rounds (s) | per model (s) |
|---|---|---|---|
| 1 | {best[1]:.1f} | {', '.join(f'{t:.1f}' for t in times[1])} | {best[1] / args.models:.2f} |
| 2 | {best[2]:.1f} | {', '.join(f'{t:.1f}' for t in times[2])} | {best[2] / args.models:.2f} |

Speed-up of 2 workers over 1: **{speedup:.2f}x** ({os.cpu_count()} cores, 1-minute load average {load} when
it finished). Caveat: measured on a machine shared with four other jobs running at the same time, so two
workers rarely had two free cores, and spawning each worker (a fresh interpreter importing torch) took
seconds under that load; the figure is depressed and noisy. The issue's target (>= 1.7x on an otherwise idle
2-core machine) is not shown by this measurement.
"""
    write_section("LDS subset models: 2 local workers vs 1 (benchmarks/lds_workers.py)", body)
    print(body)


if __name__ == "__main__":
    main()
