"""LDS of MAGIC on MNIST next to TracIn and TRAK, on the same subset models.

Data: the real MNIST test set from ../shared/data/mnist (t10k IDX files) split into the first 8,000
images for training and the last 2,000 for testing. A small CNN (BN + GELU + average pooling, SGD
momentum 0.9, wd 5e-4, batch 200, triangular OneCycle 0.01 -> 0.05 -> 0.002, 10 epochs) is trained, MAGIC scores are computed for the
first ``--targets`` test examples, and every method is validated on ``--models`` subset models per drop
fraction. ``--variant`` switches to settings that break attribution (ReLU + max pooling, high lr).

    python benchmarks/lds_mnist.py --models 50 --targets 10 --drops 0.01,0.5 --workers 2
    python benchmarks/lds_mnist.py --variant relu_max --drops 0.01

Results accumulate in ``--root`` (resumable: a killed run continues where it stopped) and the
"MAGIC LDS on MNIST" section of BENCHMARKS.md is rewritten from everything found there.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _report import SHARED_MNIST  # noqa: E402

from cnnlab.attribution.lds import LDSStudy, Regime
from cnnlab.attribution.pipeline import ensure_trained_run, lds_analysis, magic_analysis
from cnnlab.data import ImageDataset, Split
from cnnlab.data.dataset import channel_stats
from cnnlab.data.formats import read_idx_file
from cnnlab.engine.config import build_config
from cnnlab.engine.run import read_result

MNIST_DIR = SHARED_MNIST
SECTION = "## MAGIC LDS on MNIST"

VARIANTS = {
    "smooth": {"activation": "gelu", "pool": "avg", "batchnorm": True, "lr": 0.05},
    "relu_max": {"activation": "relu", "pool": "max", "batchnorm": True, "lr": 0.05},
    "high_lr": {"activation": "gelu", "pool": "avg", "batchnorm": True, "lr": 0.2},
    "no_bn": {"activation": "gelu", "pool": "avg", "batchnorm": False, "lr": 0.05},
}


def mnist_8k(root: Path = MNIST_DIR) -> ImageDataset:
    """The MNIST test set split 8,000 train (first) / 2,000 test (last)."""
    images = read_idx_file(root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx_file(root / "t10k-labels-idx1-ubyte.gz")
    x = torch.from_numpy(images.copy())[:, None]
    y = torch.from_numpy(labels.astype("int64"))
    train, test = Split(x[:8000], y[:8000]), Split(x[8000:], y[8000:])
    mean, std = channel_stats(train.images)
    return ImageDataset("mnist_t10k_8k", train, test, [str(i) for i in range(10)], mean, std,
                        {"source": str(root), "split": "t10k[:8000] / t10k[8000:]"})


# tiny_cnn shapes: "gap" = 3 stages 16/32/64 + global average pooling (24k params on MNIST); "map7" = 2 stages
# 16/32 + a 7x7 average-pooled map flattened into the head (20.5k params; learns MNIST in fewer epochs)
# "rn9p_w025": the seed's smooth ResNet-9 (resnet9_paper: conv biases, LSE pool k2 eps 0.1, global average
# pool, output x0.04) at width 0.25 (16/32/64 channels, 143,296 parameters), a CPU-sized member of the family;
# the variant's activation/pool/BN do not apply to it (its lr does). On digits it is served at 16 px (min 11).
ARCHS = {
    "gap": {"widths": [16, 32, 64]},
    "map7": {"widths": [16, 32], "head_pool": 7},
    "rn9p_w025": {"model": "resnet9_paper", "width": 0.25, "resolution": 16},
    "rn9_w025": {"model": "resnet9", "width": 0.25, "resolution": 16},  # rn9 (max pooling) for comparison
}


def run_config(variant: str, epochs: int, seed: int = 0, data: str = "mnist", arch: str = "gap"):
    v = VARIANTS[variant]
    options = dict(ARCHS[arch])
    model, resolution = options.pop("model", "tiny_cnn"), options.pop("resolution", None)
    if model == "tiny_cnn":
        options.update(activation=v["activation"], pool=v["pool"], batchnorm=v["batchnorm"])
    return build_config({
        "name": f"lds_{data}_{variant}",
        "seed": seed,
        "model": {"name": model, "options": options},
        # mnist: data.name names the format; the benchmark passes its own 8k/2k split of the t10k files
        "data": {"name": data, **({"resolution": resolution} if resolution and data == "digits" else {})},
        "optim": {"name": "sgd", "lr": v["lr"], "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.3, "anneal_strategy": "linear", "div_factor": 5.0,
                     "final_div_factor": 5.0},
        "train": {"epochs": epochs, "batch_size": 200, "bn_stats": "explicit", "device": "cpu"},
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="smooth", choices=sorted(VARIANTS))
    ap.add_argument("--data", default="mnist", choices=["mnist", "digits"],
                    help="digits: sklearn's 8x8 digits (1,437 train), a quick stand-in for comparing variants")
    ap.add_argument("--arch", default="gap", choices=sorted(ARCHS), help="tiny_cnn shape or resnet9_paper member (see ARCHS)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--targets", type=int, default=10)
    ap.add_argument("--drops", default="0.01,0.5")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engine", default="step", choices=["step", "population"])
    ap.add_argument("--baselines", default="tracin,trak")
    ap.add_argument("--root", type=Path, default=Path("runs/bench_lds_mnist"))
    ap.add_argument("--no-md", action="store_true", help="do not rewrite the BENCHMARKS.md section")
    ap.add_argument("--only", choices=["magic", "subsets"], help="one phase only, so phases can run in parallel "
                    "processes: 'magic' (train the run + MAGIC scores) or 'subsets' (train the subset models)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of this process (1: no OpenMP spinning "
                    "on a shared machine; run phases in parallel instead)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.data == "mnist":
        ds = mnist_8k()
    else:
        from cnnlab.data import load_dataset

        ds = load_dataset("digits")
    config = run_config(args.variant, args.epochs, data=args.data, arch=args.arch)
    arch = "" if args.arch == "gap" else f"{args.arch}-"
    run_dir = args.root / f"{'' if args.data == 'mnist' else args.data + '-'}{arch}{args.variant}-e{args.epochs}"
    drops = [float(d) for d in args.drops.split(",")]
    if args.only == "subsets":  # the subset models need neither the trained run nor the scores
        for drop in drops:
            study = LDSStudy(run_dir, Regime(drop, args.models), config=config,
                             train_indices=torch.arange(len(ds.train)), targets=list(range(args.targets)),
                             measure="loss", num_train=len(ds.train), dataset=ds)
            t0 = time.perf_counter()
            study.train(workers=args.workers, engine=args.engine, progress=lambda d, n, drop=drop, t0=t0: print(
                f"  drop {drop:g}: {d}/{n} subset models ({time.perf_counter() - t0:.0f} s)", flush=True))
        return
    t0 = time.perf_counter()
    result, reused = ensure_trained_run(config, run_dir, dataset=ds)
    print(f"[{args.variant}] run {run_dir}: test acc {result['final']['test_acc']:.4f} "
          f"({'reused' if reused else f'{time.perf_counter() - t0:.0f} s'})", flush=True)
    t0 = time.perf_counter()
    magic, reused = magic_analysis(run_dir, targets=range(args.targets), dataset=ds, checkpointing="log")
    print(f"[{args.variant}] MAGIC {args.targets} targets: {'reused' if reused else f'{time.perf_counter() - t0:.0f} s'}"
          f" ({magic.stats.vjp_path} VJPs, {magic.stats.checkpointing})", flush=True)
    if args.only == "magic":
        return
    baselines = [b for b in args.baselines.split(",") if b and b != "none"]
    for drop in drops:
        t0 = time.perf_counter()
        done = [0]

        def progress(d, n, drop=drop, t0=t0, done=done):
            if d - done[0] >= 5 or d == n:
                done[0] = d
                print(f"  drop {drop:g}: {d}/{n} subset models ({time.perf_counter() - t0:.0f} s)", flush=True)

        summary = lds_analysis(run_dir, Regime(drop, args.models), workers=args.workers, baselines=baselines,
                               dataset=ds, engine=args.engine, progress=progress)
        for name, m in summary["methods"].items():
            print(f"  drop {drop:g} {name:>8}: LDS {m['lds']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}] "
                  f"pearson {m['pearson']:.3f}", flush=True)
    if not args.no_md:
        write_markdown(args.root)


def collect(root: Path) -> list[dict]:
    rows = []
    for run_dir in sorted(p for p in root.glob("*") if (p / "magic.json").is_file()):
        result = read_result(run_dir) or {}
        meta = json.loads((run_dir / "magic.json").read_text())
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        for s in sorted(run_dir.glob("lds/*/summary.json")):
            summary = json.loads(s.read_text())
            rows.append({"run": run_dir.name, "data": cfg["data"]["name"],
                         "replay_matches": meta["settings"].get("matches_trained_run"), "acc": result.get("final", {}).get("test_acc"),
                         "model": cfg["model"]["name"], "opts": cfg["model"]["options"], "lr": cfg["optim"]["lr"],
                         "epochs": cfg["train"]["epochs"],
                         "targets": len(meta["target_indices"]), **summary["regime"], "methods": summary["methods"]})
    return rows


def write_markdown(root: Path, path: Path = Path("BENCHMARKS.md")) -> None:
    rows = collect(root)
    if not rows:
        return
    import datetime
    import os

    lines = [SECTION, "", f"_Measured {datetime.date.today()}; 1-min load average {os.getloadavg()[0]:.1f} at the end._", "",
             f"`python benchmarks/lds_mnist.py` — {platform.processor() or platform.machine()}, 2-core shared CPU, "
             f"torch {torch.__version__}. Data: real MNIST t10k images, first 8,000 train / last 2,000 test. "
             "tiny_cnn (model column: stage widths, then GAP = global average pooling into the linear head or "
             "map7 = a 7x7 average-pooled map flattened into it), SGD momentum 0.9, wd 5e-4, batch 200, triangular OneCycle "
             "(lr/5 -> lr at 30% -> lr/25). "
             "LDS = mean over targets of the Spearman correlation (over subset models) of predicted "
             "(-sum of dropped scores) and actual test loss; 95% bootstrap CI over targets. TracIn and TRAK "
             "(traker, 1 checkpoint, proj_dim 512) are scored on the same subset models.", "",
             "| run | data | model | act / pool / BN | lr | epochs | test acc | targets | drop | models | MAGIC LDS [95% CI] | TracIn LDS | TRAK LDS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["methods"]

        def cell(name, m=m):
            if name not in m:
                return "-"
            v = m[name]
            return f"{v['lds']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if name == "magic" else f"{v['lds']:.3f}"

        o = r["opts"]
        mark = " (*)" if r["replay_matches"] is False else ""
        if r.get("model", "tiny_cnn") == "tiny_cnn":
            head = "GAP" if o.get("head_pool", 1) == 1 else f"map{o['head_pool']}"
            model, act = f"{'/'.join(map(str, o['widths']))} {head}", f"{o['activation']} / {o['pool']} / {'BN' if o.get('batchnorm', True) else 'no BN'}"
        else:
            pools = "LSE k2 + global avg" if r["model"] == "resnet9_paper" else "max k2 + global max"
            model, act = f"{r['model']} width {o.get('width', 2.5)}", f"relu / {pools} / BN"
        lines.append(f"| {r['run']}{mark} | {r['data']} | {model} | {act} "
                     f"| {r['lr']:g} | {r['epochs']} | {r['acc']:.4f} | {r['targets']} | {r['drop']:g} | {r['models']} "
                     f"| {cell('magic')} | {cell('tracin')} | {cell('trak')} |")
    lines.append("")
    lines += summary_lines(rows)
    replace_section(path, SECTION, "\n".join(lines))


def summary_lines(rows: list[dict]) -> list[str]:
    """The goal (MAGIC LDS >= 0.95 at drop 0.01 and >= 98% test accuracy on MNIST) and caveats, from the rows."""
    out = []
    for r in rows:
        if r["data"] == "mnist" and r["drop"] == 0.01 and "magic" in r["methods"]:
            lds, acc = r["methods"]["magic"]["lds"], r["acc"]
            met = "met" if lds >= 0.95 and acc >= 0.98 else "not met"
            out.append(f"Goal MAGIC LDS >= 0.95 at drop 0.01 with >= 98% test accuracy ({r['run']}): {met} "
                       f"(LDS {lds:.3f}, accuracy {acc:.4f}, {r['models']} subset models, {r['targets']} targets).")
    if any(r["data"] == "mnist" for r in rows):
        out.append("For comparison, the reference prototype (reference.md) measured LDS 0.958 at 98.75% (10 epochs) and "
                   "0.990 at 98.2% (5 epochs) with a ~24k-parameter CNN that reaches 98% in 5 epochs. tiny_cnn with "
                   "global average pooling into its head (GAP) needs 10 epochs for 98% (96.9-97.9% at 5 epochs for lr "
                   "0.05-0.1) and its metagradients are further from linear over a 1% removal; with a 7x7 map "
                   "flattened into the head (map7, `head_pool: 7`, 20.5k parameters) it learns MNIST in 5 epochs, "
                   "like the prototype, and the LDS follows. MAGIC's scores are exact (float64 finite differences "
                   "agree to ~1e-9 in the tests), so what keeps the LDS below 1 is how far the trained model's test "
                   "loss is from linear in the example weights over the removal.")
    if any(r["replay_matches"] is False for r in rows):
        out.append("(*) The run was trained with 2 torch threads and replayed (like its subset models) with 1, so "
                   "the replay's weights differ from the trained run's in the last bits; scores, subset models and "
                   "LDS all refer to the 1-thread run, the test accuracy to the 2-thread one.")
    few = sorted({r["models"] for r in rows if r["models"] < 50})
    if few:
        out.append(f"Some regimes use {', '.join(map(str, few))} subset models instead of the specified >= 50, to fit the "
                   "shared 2-core machine (a 10-epoch MNIST subset model costs ~80 s of one core; MAGIC for 10 targets "
                   "~25 training runs); `python benchmarks/lds_mnist.py --models 50` runs the full version.")
    if any(r["data"] == "digits" for r in rows):
        out.append("Rows on `digits` (sklearn's 8x8 digits, 1,437 train / 360 test, same model and optimizer) are a "
                   "quick stand-in for comparing settings: ReLU + max pooling and a high learning rate make "
                   "metagradients chaotic and their LDS drops; without BatchNorm this model did not train at lr 0.05 "
                   "in 10 epochs (10% accuracy), so no LDS is reported for it.")
    return [p for line in out for p in (line, "")]


def replace_section(path: Path, heading: str, body: str) -> None:
    """Rewrite one '## ' section of a markdown file (append it if missing), leaving the others intact."""
    from cnnlab.utils.io import write_text_atomic

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(heading + "\n")
    if start < 0:
        new = text.rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n"
    else:
        nxt = text.find("\n## ", start + len(heading))
        new = text[:start] + body.rstrip("\n") + "\n" + (text[nxt:] if nxt >= 0 else "")
    write_text_atomic(path, new)


if __name__ == "__main__":
    sys.exit(main())
