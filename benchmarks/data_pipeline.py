"""Data pipeline throughput: cnnlab's batched on-device crop+flip against a per-sample torch DataLoader.

Both sides serve CIFAR-shaped data (50,000 × 3×32×32 uint8, random pixels: content does not change the
cost), batch 512, random crop with 4 px reflect padding + random horizontal flip + normalisation, to
float32 NCHW batches:

(a) cnnlab: ``BatchLoader`` + ``Augment`` (one gather per batch, whole dataset as a tensor);
(b) baseline: ``torch.utils.data.DataLoader`` (shuffle, default collate, num_workers=0) over a Dataset whose
    ``__getitem__`` pads, crops, flips and normalises one image at a time (the usual torchvision-style recipe).

Also: augmentation time as a share of one ResNet-9 fwd+bwd+SGD step at batch 512 (timed here, or estimated
from reference.md's 165 img/s fp32 with --estimate-step), the cache load time of a CIFAR-10-sized dataset,
and, when ../shared/data/mnist is present, decoding the real MNIST test set. Writes its BENCHMARKS.md section.

    python benchmarks/data_pipeline.py [--baseline-batches 10] [--estimate-step] [--no-write]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _report import SHARED_MNIST, write_section  # noqa: E402

from cnnlab.data import ImageDataset, Split  # noqa: E402
from cnnlab.data.augment import Augment  # noqa: E402
from cnnlab.data.batches import BatchLoader  # noqa: E402
from cnnlab.data.cache import load_cached, save_cached  # noqa: E402

N, BATCH, PAD = 50_000, 512, 4
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
REFERENCE_IMG_S = 165.0  # reference.md: rn9 fp32 NCHW on this machine (measured at batch 256)


class PerSampleDataset(torch.utils.data.Dataset):
    """The conventional recipe: one image at a time, pad -> random crop -> random flip -> normalise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, seed: int = 0):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)
        self.gen = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        x = self.images[i].float().div_(255)
        x = F.pad(x[None], (PAD, PAD, PAD, PAD), mode="reflect")[0]
        dy, dx = torch.randint(0, 2 * PAD + 1, (2,), generator=self.gen).tolist()
        x = x[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(1, generator=self.gen).item() < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


def measure(images: torch.Tensor, labels: torch.Tensor, baseline_batches: int, rounds: int = 5) -> dict[str, float]:
    """Median seconds per batch of 512 for each pipeline, interleaved in ``rounds`` so that other jobs on a
    shared machine slow all of them alike: cnnlab runs one full epoch per flip mode, the baseline
    ``baseline_batches`` batches, each split evenly over the rounds."""
    loaders = {
        flip: BatchLoader(images, labels, BATCH, seed=0, drop_last=True,
                          augment=Augment(MEAN, STD, crop_padding=PAD, crop_mode="reflect", flip=flip))
        for flip in ("random", "alternating")
    }
    dl = torch.utils.data.DataLoader(PerSampleDataset(images, labels), batch_size=BATCH, shuffle=True,
                                     generator=torch.Generator().manual_seed(0), num_workers=0, drop_last=True)
    base_iter = iter(dl)
    next(base_iter)
    for loader in loaders.values():
        loader.batch(0, 0)  # warm-up
    times: dict[str, list[float]] = {"random": [], "alternating": [], "baseline": []}
    n = len(loaders["random"])
    for r in range(rounds):
        for flip, loader in loaders.items():
            for i in range(r * n // rounds, (r + 1) * n // rounds):
                t = time.perf_counter()
                loader.batch(1, i)
                times[flip].append(time.perf_counter() - t)
        for _ in range(r * baseline_batches // rounds, (r + 1) * baseline_batches // rounds):
            t = time.perf_counter()
            next(base_iter)
            times["baseline"].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()} | {f"{k}_best": min(v) for k, v in times.items()}


def rn9_step_seconds(steps: int = 2) -> float:
    from cnnlab.models import create_model

    model = create_model("resnet9")
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(BATCH, 3, 32, 32)
    y = torch.randint(0, 10, (BATCH,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def cache_load_seconds(images: torch.Tensor, labels: torch.Tensor) -> float:
    ds = ImageDataset("cifar_shaped", Split(images, labels), Split(images[:10_000].clone(), labels[:10_000].clone()),
                      [str(i) for i in range(10)], MEAN, STD)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "c.pt"
        save_cached(path, ds)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            loaded = load_cached(path)
            int(loaded.train.images[-1].sum())  # touch the data
            best = min(best, time.perf_counter() - t)
    return best


def real_mnist_decode() -> str | None:
    folder = SHARED_MNIST
    f = folder / "t10k-images-idx3-ubyte.gz"
    if not f.exists():
        return None
    from cnnlab.data.checksums import OFFICIAL, file_checksum
    from cnnlab.data.formats import read_idx_file

    ok = file_checksum(f) == OFFICIAL["mnist"].file(f.name).checksum.split(":")[1]
    t = time.perf_counter()
    arr = read_idx_file(f)
    dt = time.perf_counter() - t
    return (f"Real MNIST test images ({arr.shape[0]:,}×{arr.shape[1]}×{arr.shape[2]}, `{f.name}`, md5 "
            f"{'matches' if ok else 'DOES NOT match'} the official table): IDX gzip decode {dt * 1000:.0f} ms.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline-batches", type=int, default=15, help="DataLoader batches to time (it is slow)")
    ap.add_argument("--estimate-step", action="store_true", help="estimate the rn9 step from 165 img/s, do not time it")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for everything timed (1: fair to the single-threaded baseline and "
                         "steadier on a shared machine)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (N,), generator=g)

    med = measure(images, labels, args.baseline_batches)
    per_batch, per_batch_alt, base_batch = med["random"], med["alternating"], med["baseline"]
    ours_random, ours_alt, base = BATCH / per_batch, BATCH / per_batch_alt, BATCH / base_batch
    estimated = BATCH / REFERENCE_IMG_S
    if args.estimate_step:
        timed, timed_how = None, "not timed (--estimate-step)"
    else:
        timed = rn9_step_seconds()
        timed_how = f"{timed:.2f} s timed here (fp32 NCHW, mean of 2 steps after a warm-up)"
    step = min(estimated, timed) if timed else estimated  # the faster step gives the larger (conservative) share
    cache_s = cache_load_seconds(images, labels)
    mnist = real_mnist_decode()

    load = os.getloadavg()[0]
    machine = (f"{platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs (1-min load average "
               f"{load:.1f} at the end of the run), {torch.get_num_threads()} torch thread(s), torch "
               f"{torch.__version__}, Python {platform.python_version()}")
    best = {k: BATCH / med[f"{k}_best"] for k in ("random", "alternating", "baseline")}
    rows = [
        ("cnnlab BatchLoader + Augment (crop+random flip)", ours_random, best["random"]),
        ("cnnlab BatchLoader + Augment (crop+alternating flip)", ours_alt, best["alternating"]),
        ("torch DataLoader, per-sample crop+flip (num_workers=0)", base, best["baseline"]),
    ]
    rows = [(name, f"{m:,.0f}", f"{m / base:.1f}x", f"{b:,.0f}", f"{b / best['baseline']:.1f}x") for name, m, b in rows]
    share = per_batch / step
    body = "\n".join([
        f"Machine: {machine}. Data: {N:,}×3×32×32 uint8, batch {BATCH}, reflect-pad {PAD} crop + flip + normalise "
        f"to float32 NCHW. Median time per batch: cnnlab over a full epoch ({N // BATCH} batches) per flip mode, "
        f"the baseline over {args.baseline_batches} batches, interleaved in 5 rounds.",
        "",
        "| pipeline | images/s (median batch) | vs DataLoader | images/s (best batch) | vs DataLoader |",
        "|---|---:|---:|---:|---:|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
        "",
        f"Goal >= 10x: {'met' if ours_random / base >= 10 else 'NOT met'} on median batches "
        f"({ours_random / base:.1f}x), {'met' if best['random'] / best['baseline'] >= 10 else 'NOT met'} on best "
        f"batches ({best['random'] / best['baseline']:.1f}x; best = least disturbed by other jobs).",
        f"Augmentation of one batch of {BATCH}: {per_batch * 1000:.1f} ms. One ResNet-9 fwd+bwd+SGD step at batch "
        f"{BATCH}: {estimated:.2f} s estimated from reference.md's {REFERENCE_IMG_S:.0f} img/s fp32; {timed_how}. "
        f"Using the faster of the two, augmentation is {share * 100:.2f}% of a step "
        f"(goal < 5%: {'met' if share < 0.05 else 'NOT met'}).",
        f"Cache load of a CIFAR-10-sized dataset (50,000 + 10,000 × 3×32×32, `torch.load(weights_only=True)`, "
        f"best of 3, data touched): {cache_s * 1000:.0f} ms.",
        *([mnist] if mnist else []),
        "",
        "Run: `python benchmarks/data_pipeline.py` (`--estimate-step` skips timing the ResNet-9 step).",
    ])
    print(body)
    if not args.no_write:
        write_section("Data pipeline", body)


if __name__ == "__main__":
    main()
