"""Cost of exact MAGIC metagradients relative to one training run of the same config.

For each checkpointing strategy (all, sqrt, log) and number of targets K (1, 10, 50), a fresh process
times one training run (the engine's step loop, no evaluation) and then the full replay, and reports
time / training time (per target too), stored states, recomputed steps and peak memory (bytes of stored states; the peak RSS (VmHWM) of the fresh process on CPU, CUDA peak on a GPU). Goals:
<= 3x one training run for one target, <= 1.5x per target when batched.

``--first-pass``: ``own`` = the replay runs its own first forward pass (MAGIC on a run trained elsewhere);
``trained`` = the timed training run keeps the states that pass would store (what ``cnnlab magic`` does
when it trains the run itself, via RecordReplayStates), so MAGIC's time is the reverse pass alone.

    python benchmarks/magic_cost.py [--epochs 2] [--targets 1,10,50] [--strategies all,sqrt,log]
                                    [--first-pass own,trained] [--device cpu] [--compile off,on]
                                    [--compile-chunk 4] [--cold-compile] [--train-repeats 3] [--md-only]

``--compile on``: the replay reverses steps with a torch.compile'd VJP; its row reports a second replay
on the same Replay (the steady cost) and, apart, the seconds the first one spent compiling.

Data: MNIST t10k split 8,000 / 2,000 (../shared/data/mnist) when present, else the digits set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SECTION = "## MAGIC metagradient cost"


def _dataset(train_size: int):
    sys.path.insert(0, str(HERE))
    from lds_mnist import MNIST_DIR, mnist_8k

    from cnnlab.data import load_dataset

    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        ds, name = mnist_8k(), "MNIST t10k"
    else:
        ds, name = load_dataset("digits"), "digits"
    if train_size and train_size < len(ds.train):
        ds.train = ds.train.subset(slice(0, train_size))
    return ds, f"{name}, {len(ds.train):,} train"


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


def one(strategy: str, k: int, epochs: int, device: str, threads: int, vjp: str, train_size: int,
        first_pass: str = "own", compile_chunk: int = 0, train_repeats: int = 3) -> dict:
    """Measure in this (fresh) process: one training run, then MAGIC for k targets."""
    from cnnlab.attribution import compute_magic
    from cnnlab.attribution.magic import prepare_config
    from cnnlab.attribution.replay import Replay, peak_rss_bytes
    from cnnlab.engine.setup import apply_runtime, build_run

    torch.set_num_threads(threads)
    ds, data_name = _dataset(train_size)
    config = prepare_config(_config(epochs, device))
    apply_runtime(config)
    parts = build_run(config, dataset=ds)
    replay = Replay(parts, checkpointing=strategy)
    sync = torch.cuda.synchronize if parts.device.type == "cuda" else (lambda: None)
    replay.forward(end=2)  # warm-up
    sync()
    # "trained": the training run keeps (by reference) the states the replay's first pass would store
    keep = {*replay.first_pass_positions(), replay.total_steps} if first_pass == "trained" else set()
    walls, cpus = [], []
    for _ in range(train_repeats):  # the median of a few runs: one run's time varies by ~15% here
        replay._store.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        replay.forward(keep=keep)
        sync()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    train_s, train_cpu = statistics.median(walls), statistics.median(cpus)
    rss_train = peak_rss_bytes()
    t0, c0 = time.perf_counter(), time.process_time()
    states = dict(replay._store) if first_pass == "trained" else None
    replay._store.clear()
    first_wall = compile_s = None
    if compile_chunk:
        # compiled: the first replay compiles (timed apart, by wall clock: the C++ compiler runs in child
        # processes); the second, on the same Replay, is the steady per-step cost a long run converges to
        from cnnlab.attribution.magic import measure_state, target_data
        from cnnlab.attribution.measures import get_measurement

        rp = Replay(parts, checkpointing=strategy, vjp=vjp, compile=True, compile_chunk=compile_chunk)
        x, y = target_data(parts, list(range(k)))
        loss = get_measurement("loss")
        rp.metagradient(lambda s: measure_state(parts, s, x, y, loss), k, states)
        sync()
        first_wall, compile_s = time.perf_counter() - t0, rp.stats.compile_s
        t0, c0 = time.perf_counter(), time.process_time()
        rp.metagradient(lambda s: measure_state(parts, s, x, y, loss), k, states)
        res = rp
    else:
        res = compute_magic(config, targets=list(range(k)), checkpointing=strategy, dataset=ds, vjp=vjp, states=states)
    sync()
    magic_s, magic_cpu = time.perf_counter() - t0, time.process_time() - c0
    # on a shared CPU the process's CPU time is the cost; wall time also counts waiting for a core
    cpu = parts.device.type == "cpu" and threads == 1
    ratio = magic_cpu / train_cpu if cpu else magic_s / train_s
    st = res.stats
    return {"strategy": st.checkpointing, "targets": k, "steps": st.steps, "train_s": train_s, "magic_s": magic_s,
            "train_cpu_s": train_cpu, "magic_cpu_s": magic_cpu, "clock": "cpu" if cpu else "wall",
            "wall_ratio": magic_s / train_s,
            "ratio": ratio, "ratio_per_target": ratio / k, "vjp_path": st.vjp_path,
            "peak_stored_states": st.peak_stored_states, "recomputed_steps": st.recomputed_steps,
            "peak_stored_mib": st.peak_stored_bytes / 2**20, "max_rss_mib": st.max_rss_bytes / 2**20,
            "train_rss_mib": rss_train / 2**20,
            "cuda_peak_mib": st.cuda_peak_bytes / 2**20 if st.cuda_peak_bytes else None,
            "data": data_name, "device": str(parts.device), "threads": threads, "first_pass": first_pass,
            "reused_states": st.reused_states, "train_repeats": train_repeats, "compile_chunk": compile_chunk, "compile_s": compile_s,
            "first_wall_ratio": first_wall / train_s if first_wall is not None else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--targets", default="1,10,50")
    ap.add_argument("--strategies", default="all,sqrt,log")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vjp", default="auto", help="auto | batched | looped (comma list to compare)")
    ap.add_argument("--first-pass", default="own,trained", help="own | trained (comma list to compare; see above)")
    ap.add_argument("--train-size", type=int, default=4000, help="training examples (0: all)")
    ap.add_argument("--compile", default="off", help="off | on (comma list to compare): torch.compile'd reverse steps")
    ap.add_argument("--compile-chunk", type=int, default=4, help="targets per compiled VJP call")
    ap.add_argument("--cold-compile", action="store_true", help="compile with an empty inductor cache")
    ap.add_argument("--train-repeats", type=int, default=3, help="training runs timed; the median is the denominator")
    ap.add_argument("--one", nargs=3, metavar=("STRATEGY", "K", "FIRST_PASS"), help=argparse.SUPPRESS)
    ap.add_argument("--no-md", action="store_true")
    ap.add_argument("--md-only", action="store_true", help="rewrite BENCHMARKS.md from the stored rows, measure nothing")
    args = ap.parse_args()
    if args.md_only:
        args.targets = ""
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.epochs, args.device, args.threads, args.vjp,
                             args.train_size, args.one[2], args.compile_chunk if args.compile == "on" else 0, args.train_repeats)))
        return
    rows = []
    combos = [(s, k, v, f, c) for c in args.compile.split(",") for f in args.first_pass.split(",")
              for s in args.strategies.split(",") for k in [int(x) for x in args.targets.split(",") if x]
              for v in (args.vjp.split(",") if k > 1 and c == "off" else ["auto"])]
    for strategy, k, vjp, first, comp in combos:
        cmd = [sys.executable, __file__, "--one", strategy, str(k), first, "--epochs", str(args.epochs),
               "--device", args.device, "--threads", str(args.threads), "--vjp", vjp,
               "--train-size", str(args.train_size), "--compile", comp, "--compile-chunk", str(args.compile_chunk),
               "--train-repeats", str(args.train_repeats)]
        env = dict(os.environ)
        with tempfile.TemporaryDirectory() as cache_dir:
            if args.cold_compile:
                env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        r["vjp_mode"] = vjp
        r["cold"] = bool(args.cold_compile and comp == "on")
        rows.append(r)
        print(f"{r['strategy']:>9} K={k:>3} first pass {first}: train {r['train_cpu_s']:.1f} s CPU ({r['train_s']:.1f} s wall), MAGIC "
              f"{r['magic_cpu_s']:.1f} s CPU ({r['magic_s']:.1f} s wall) = {r['ratio']:.2f}x by {r['clock']} time "
              f"({r['ratio_per_target']:.2f}x per target; wall {r['wall_ratio']:.2f}x), stored {r['peak_stored_states']} "
              f"states ({r['peak_stored_mib']:.1f} MiB), recomputed {r['recomputed_steps']} steps, "
              f"max RSS {r['max_rss_mib']:.0f} MiB (training alone {r['train_rss_mib']:.0f}), {r['vjp_path']}"
              + (f"; compiling {r['compile_s']:.0f} s, first (compiling) replay {r['first_wall_ratio']:.1f}x by wall time"
                 if r.get("compile_chunk") else ""), flush=True)
    # accumulate across invocations (e.g. a later K=50 run), keyed by what was measured
    cache = Path("runs/bench_magic_cost/rows.json")
    old = json.loads(cache.read_text()) if cache.is_file() else []
    key = lambda r: (r["strategy"], r["targets"], r["vjp_mode"], r["steps"], r["data"], r.get("first_pass", "own"),  # noqa: E731
                     r.get("compile_chunk", 0), r.get("cold", False))
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in rows})
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(list(merged.values()), indent=1))
    if not args.no_md:
        order = {"all": 0, "sqrt": 1}
        write_markdown(sorted(merged.values(), key=lambda r: (r.get("compile_chunk", 0), r.get("first_pass", "own"), r["steps"],
                                                              order.get(r["strategy"], 2), r["targets"], r["vjp_mode"])), args)


def _vjp_kind(r: dict) -> str:
    return "compiled" if r.get("compile_chunk") else "eager"


def write_markdown(rows: list[dict], args) -> None:
    sys.path.insert(0, str(HERE))
    from lds_mnist import replace_section

    r0 = rows[0]
    import datetime

    lines = [SECTION, "", f"_Measured {datetime.date.today()}; 1-min load average {os.getloadavg()[0]:.1f} at the end "
             "(the machine is shared, so absolute seconds vary; each ratio's two timings come from one process)._", "",
             f"`python benchmarks/magic_cost.py` (rows accumulate over invocations in runs/bench_magic_cost/rows.json; "
             "each row is its own fresh process, and rows from different invocations may have seen different "
             f"machine load) — {r0['device']} "
             f"({platform.machine()}, 2-core CPU shared with other jobs, {r0['threads']} thread), torch {torch.__version__}. "
             f"tiny_cnn 16/32/64 (GELU, avg pool, BN), {r0['data']}, batch 200, {r0['steps']} steps. "
             "Ratio = MAGIC time / one training run (the same step loop, no evaluation; the median of "
             f"{r0.get('train_repeats', 1)} runs) measured just before it in the same fresh process, by the process's CPU time (one "
             "thread: the compute cost, unaffected by waiting for a core on the shared machine; the wall-clock "
             "ratio is beside it). First pass `own`: MAGIC runs its own forward pass through the run (a run trained "
             "elsewhere); `trained`: the training run kept the states that pass would store, as `cnnlab magic` does "
             "when it trains the run itself, so MAGIC is the reverse pass alone. "
             "Goals: <= 3x for one target, <= 1.5x per target batched.", "",
             "Compiled rows (`--compile on`, `Replay(compile=True)`): the ratio is that of a second replay on the "
             "same Replay, after the first one compiled the reversed step (the steady cost of a long run); the "
             "compile column gives the seconds spent compiling and the first replay's wall-clock ratio with them.", "",
             "| VJP | first pass | checkpointing | targets K | steps | MAGIC / training (CPU time) | per target | wall-clock ratio | stored states (peak) | stored MiB | recomputed steps | max RSS MiB (training alone) | VJP path | compiling s (first replay, wall) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        comp = (f"{r['compile_s']:.0f}{' cold' if r.get('cold') else ''} ({r['first_wall_ratio']:.1f}x)"
                if r.get("compile_chunk") else "—")
        lines.append(f"| {_vjp_kind(r)} | {r.get('first_pass', 'own')} | {r['strategy']} | {r['targets']} | {r['steps']} | {r['ratio']:.2f}x | {r['ratio_per_target']:.2f}x | "
                     f"{r['wall_ratio']:.2f}x | "
                     f"{r['peak_stored_states']} | {r['peak_stored_mib']:.1f} | {r['recomputed_steps']} | "
                     f"{r['max_rss_mib']:.0f} ({r['train_rss_mib']:.0f}) | {r['vjp_path']} | {comp} |")
    lines.append("")
    for kind, first in sorted({(_vjp_kind(r), r.get("first_pass", "own")) for r in rows}):
        sub = [r for r in rows if r.get("first_pass", "own") == first and _vjp_kind(r) == kind]
        first = f"{first} ({kind})"
        single = [r["ratio"] for r in sub if r["targets"] == 1]
        multi = [r for r in sub if r["targets"] > 1]
        if single:
            lines += ["", f"First pass {first}, one target: {min(single):.2f}-{max(single):.2f}x (goal <= 3x: "
                      f"{'met' if max(single) <= 3 else 'not met' if min(single) > 3 else 'met by ' + ', '.join(sorted(r['strategy'] for r in sub if r['targets'] == 1 and r['ratio'] <= 3))})."]
        for path in sorted({r["vjp_path"] for r in multi}):
            per = [r["ratio_per_target"] for r in multi if r["vjp_path"] == path]
            lines += ["", f"First pass {first}, K > 1, {path} VJPs: {min(per):.2f}-{max(per):.2f}x per target "
                      f"(goal <= 1.5x: {'met' if max(per) <= 1.5 else 'not met'})."]
    lines += ["", "Where the time goes on this CPU, eagerly (torch profiler, one reverse step): the step recomputed with "
              "`create_graph=True` costs ~1.3 training steps and each target's VJP through it (a double backward) "
              "~2 more, about a third of that in BatchNorm's composite double-backward kernels (elementwise, "
              "memory-bound) and much of the rest in GELU's and the convolutions' second derivatives. With K targets "
              "the recompute is shared, so the per-target cost tends to ~2x. `is_grads_batched` (vmap) is slower "
              "than a loop of VJPs on a CPU (3.63x per target for K = 10 in the previous measurement, against 2.14x "
              "looped: convolutions become grouped convolutions), so `vjp=auto` loops on the CPU and batches on CUDA. "
              "Forward-over-reverse (`torch.func.jvp` of `grad`) was tried as a cheaper VJP: exact, but 5.9x a "
              "training step against 2.8x for reverse-over-reverse, so it is not used.", "",
              "Compiled (`compile=True`, `cnnlab magic --compile`): `torch.compile` of `torch.func.vjp` through the "
              "same `train_step` fuses those elementwise chains, which is where an eager reverse step loses its time "
              "on a CPU; the convolutions of this model are small. It roughly halves the reverse pass. The "
              "denominator stays the eager training run (MAGIC refuses `train.compile`: a compiled run is not "
              "bitwise the eager run the replay recomputes). Compiling is a one-off cost per batch shape and chunk "
              "size, and how long depends on inductor's on-disk cache: a graph it already holds from an earlier run "
              "compiles in seconds (16 s for the second 10-per-call row), a new one takes minutes (271 s for the "
              "first 10-per-call row; rows marked 'cold' start from an empty `TORCHINDUCTOR_CACHE_DIR`, "
              "`--cold-compile`). So `--compile` pays off for long runs "
              "(the seed's ResNet-9 CIFAR-10 config runs 1,200 steps) or repeated analyses of one setting; for a "
              "20-step run like this one, the first replay's wall time with compiling is higher than eager. End to "
              "end with `cnnlab magic --compile` on a tiny 8x8 digits model (460 steps, 4 targets): eager replay "
              "20.5 s; compiled 143.5 s of which 128.3 s compiling (two batch shapes, new graphs), then 24.1 s of "
              "which 8.8 s compiling once cached; scores within 2e-6 (relative) of the eager ones. No GPU was lent in "
              "any session, so neither the batched nor the compiled path was measured on CUDA.", "",
              "Noise: the denominator, a 20-step training run, took 2.5-3.3 s of CPU in different processes of this "
              "shared machine even as the median of 3, while the same compiled K = 10 replay took 42-45 s in all of "
              "them; per-target ratios near 1.5x are within that noise of the goal.", ""]
    replace_section(Path("BENCHMARKS.md"), SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
