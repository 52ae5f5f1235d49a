"""Cost of exact MAGIC metagradients relative to one training run of the same config.

For each checkpointing strategy (all, sqrt, log) and number of targets K (1, 10, 50), a fresh process
times one training run (the engine's step loop, no evaluation) and then the full replay (its forward
pass included), and reports time / training time (per target too), stored states, recomputed steps
and peak memory (bytes of stored states; the peak RSS (VmHWM) of the fresh process on CPU, CUDA peak on a GPU). Goals:
<= 3x one training run for one target, <= 1.5x per target when batched.

    python benchmarks/magic_cost.py [--epochs 2] [--targets 1,10,50] [--strategies all,sqrt,log] [--device cpu]

Data: MNIST t10k split 8,000 / 2,000 (/work/shared/data/mnist) when present, else the digits set.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SECTION = "## MAGIC metagradient cost"


def _dataset():
    sys.path.insert(0, str(HERE))
    from lds_mnist import MNIST_DIR, mnist_8k

    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        return mnist_8k(), "MNIST t10k 8,000 train"
    from cnnlab.data import load_dataset

    return load_dataset("digits"), "digits 1,437 train"


def _config(epochs: int, device: str):
    from cnnlab.engine.config import build_config

    return build_config({
        "name": "magic_cost", "seed": 0,
        "model": {"name": "tiny_cnn", "options": {"widths": [16, 32, 64], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "mnist"},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.5, "anneal_strategy": "linear", "final_div_factor": 1.0},
        "train": {"epochs": epochs, "batch_size": 200, "bn_stats": "explicit", "device": device,
                  "deterministic": device != "cpu"},
    })


def one(strategy: str, k: int, epochs: int, device: str, threads: int) -> dict:
    """Measure in this (fresh) process: one training run, then MAGIC for k targets."""
    from cnnlab.attribution import compute_magic
    from cnnlab.attribution.magic import prepare_config
    from cnnlab.attribution.replay import Replay, peak_rss_bytes
    from cnnlab.engine.setup import apply_runtime, build_run

    torch.set_num_threads(threads)
    ds, data_name = _dataset()
    config = prepare_config(_config(epochs, device))
    apply_runtime(config)
    parts = build_run(config, dataset=ds)
    replay = Replay(parts)
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)
    replay.forward(end=2)  # warm-up
    sync()
    t0 = time.perf_counter()
    replay.forward()
    sync()
    train_s = time.perf_counter() - t0
    rss_train = peak_rss_bytes()
    t0 = time.perf_counter()
    res = compute_magic(config, targets=list(range(k)), checkpointing=strategy, dataset=ds)
    sync()
    magic_s = time.perf_counter() - t0
    st = res.stats
    return {"strategy": st.checkpointing, "targets": k, "steps": st.steps, "train_s": train_s, "magic_s": magic_s,
            "ratio": magic_s / train_s, "ratio_per_target": magic_s / train_s / k, "vjp_path": st.vjp_path,
            "peak_stored_states": st.peak_stored_states, "recomputed_steps": st.recomputed_steps,
            "peak_stored_mib": st.peak_stored_bytes / 2**20, "max_rss_mib": st.max_rss_bytes / 2**20,
            "train_rss_mib": rss_train / 2**20,
            "cuda_peak_mib": st.cuda_peak_bytes / 2**20 if st.cuda_peak_bytes else None,
            "data": data_name, "device": str(parts.device), "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--targets", default="1,10,50")
    ap.add_argument("--strategies", default="all,sqrt,log")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", nargs=2, metavar=("STRATEGY", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--no-md", action="store_true")
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.epochs, args.device, args.threads)))
        return
    rows = []
    for strategy in args.strategies.split(","):
        for k in [int(v) for v in args.targets.split(",")]:
            cmd = [sys.executable, __file__, "--one", strategy, str(k), "--epochs", str(args.epochs),
                   "--device", args.device, "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            rows.append(r)
            print(f"{r['strategy']:>9} K={k:>3}: train {r['train_s']:.1f} s, MAGIC {r['magic_s']:.1f} s = "
                  f"{r['ratio']:.2f}x ({r['ratio_per_target']:.2f}x per target), stored {r['peak_stored_states']} "
                  f"states ({r['peak_stored_mib']:.1f} MiB), recomputed {r['recomputed_steps']} steps, "
                  f"max RSS {r['max_rss_mib']:.0f} MiB (training alone {r['train_rss_mib']:.0f}), {r['vjp_path']}",
                  flush=True)
    if not args.no_md:
        write_markdown(rows, args)


def write_markdown(rows: list[dict], args) -> None:
    sys.path.insert(0, str(HERE))
    from lds_mnist import replace_section

    r0 = rows[0]
    lines = [SECTION, "",
             f"`python benchmarks/magic_cost.py --epochs {args.epochs}` — {r0['device']} "
             f"({platform.machine()}, 2-core shared CPU, {r0['threads']} thread), torch {torch.__version__}. "
             f"tiny_cnn 16/32/64 (GELU, avg pool, BN), {r0['data']}, batch 200, {r0['steps']} steps. "
             "Ratio = MAGIC wall time (its own forward pass included) / one training run (the same step loop, "
             "no evaluation) measured just before it in the same fresh process. Goals: <= 3x for one target, "
             "<= 1.5x per target batched.", "",
             "| checkpointing | targets K | MAGIC / training | per target | stored states (peak) | stored MiB | recomputed steps | max RSS MiB (training alone) | VJP path |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['targets']} | {r['ratio']:.2f}x | {r['ratio_per_target']:.2f}x | "
                     f"{r['peak_stored_states']} | {r['peak_stored_mib']:.1f} | {r['recomputed_steps']} | "
                     f"{r['max_rss_mib']:.0f} ({r['train_rss_mib']:.0f}) | {r['vjp_path']} |")
    lines.append("")
    replace_section(Path("BENCHMARKS.md"), SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
