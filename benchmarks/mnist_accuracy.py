"""The small-CNN MNIST config on the real MNIST test set in ../shared/data/mnist (when present):
first 8,000 images train, last 2,000 test. Goal: >= 98% test accuracy. Prints accuracy and time.

    python benchmarks/mnist_accuracy.py [--mnist-dir ../shared/data/mnist] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _report import SHARED_MNIST, write_section  # noqa: E402

from cnnlab.data import ImageDataset, Split, channel_stats  # noqa: E402
from cnnlab.data.formats import read_idx_file  # noqa: E402
from cnnlab.engine.config import load_config  # noqa: E402
from cnnlab.engine.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = SHARED_MNIST


def shared_mnist_split(mnist_dir: Path, n_train: int = 8000) -> ImageDataset:
    """The official MNIST test set split into train (first n_train) and test (the rest)."""
    images = torch.from_numpy(read_idx_file(mnist_dir / "t10k-images-idx3-ubyte.gz").copy())[:, None]
    labels = torch.from_numpy(read_idx_file(mnist_dir / "t10k-labels-idx1-ubyte.gz").astype("int64"))
    train, test = Split(images[:n_train], labels[:n_train]), Split(images[n_train:], labels[n_train:])
    mean, std = channel_stats(train.images)
    return ImageDataset("mnist_t10k_split", train, test, [str(i) for i in range(10)], mean, std)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist-dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--compare-precision", action="store_true",
                    help="train fp32/NCHW and train.precision=auto (+ channels_last) and compare accuracy and speed")
    ap.add_argument("--model", default=None, help="with --compare-precision: another registry model (e.g. resnet20)")
    args = ap.parse_args()
    if not (args.mnist_dir / "t10k-images-idx3-ubyte.gz").exists():
        sys.exit(f"MNIST test files not found in {args.mnist_dir}; pass --mnist-dir")
    dataset = shared_mnist_split(args.mnist_dir)
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    if args.compare_precision:
        return compare_precision(dataset, overrides + ([f"model.name={args.model}", "model.options={}"] if args.model else []),
                                 write=not args.no_write)
    cfg = load_config(ROOT / "configs" / "mnist_small_cnn.yaml", overrides)
    t = time.perf_counter()
    result = Trainer(cfg, None, dataset=dataset, progress=False).fit()
    wall = time.perf_counter() - t
    acc = result["final"]["test_acc"]
    print(f"test accuracy {acc:.4f} after {result['epochs_completed']} epochs; {wall:.1f} s wall "
          f"({result['timings']['images_per_s']:.0f} train img/s, {torch.get_num_threads()} threads)")
    if not args.no_write:
        write_section("MNIST accuracy (benchmarks/mnist_accuracy.py)",
                      f"configs/mnist_small_cnn.yaml ({cfg.model.name} {cfg.model.options}) on the real MNIST test set "
                      f"(first 8,000 train / last 2,000 test), {result['epochs_completed']} epochs, CPU "
                      f"{torch.get_num_threads()} threads: **test accuracy {acc:.4f}** (goal >= 0.98), "
                      f"{wall:.1f} s wall, {result['timings']['images_per_s']:.0f} train img/s.")


def compare_precision(dataset: ImageDataset, overrides: list[str], write: bool) -> None:
    """The same run in fp32/NCHW and with cnnlab's automatic choice (bf16 + channels_last where native)."""
    rows = []
    for label, extra in (("fp32, NCHW", ["train.precision=fp32"]),
                         ("auto + channels_last", ["train.precision=auto", "train.channels_last=true"])):
        cfg = load_config(ROOT / "configs" / "mnist_small_cnn.yaml", overrides + extra)
        t = time.perf_counter()
        result = Trainer(cfg, None, dataset=dataset, progress=False).fit()
        wall = time.perf_counter() - t
        rows.append(f"| {label} | {result['precision']['autocast']} | {result['final']['test_acc']:.4f} | "
                    f"{result['final']['test_loss']:.4f} | {result['timings']['images_per_s']:.0f} | {wall:.1f} |")
        print(rows[-1], flush=True)
        model = cfg.model.name
    body = (f"`python benchmarks/mnist_accuracy.py --compare-precision {' '.join(overrides)}`: {model} on the real MNIST "
            f"test set (first 8,000 train / last 2,000 test), CPU {torch.get_num_threads()} threads, shared machine.\n\n"
            "| run | autocast | test acc | test loss | train img/s | wall s |\n|---|---|---|---|---|---|\n" + "\n".join(rows))
    if write:
        write_section(f"bf16 + channels_last accuracy check, {model} (benchmarks/mnist_accuracy.py)", body)


if __name__ == "__main__":
    main()
