"""Training throughput of ResNet-9 at 32 px, batch 256: the Trainer against its ceiling and a conventional loop.

(a) bare model step: nn.Module + torch.optim.SGD on one pre-made batch (no data pipeline): the ceiling.
(b) the Trainer: cnnlab's epochs (deterministic order, on-device crop+flip, the functional step).
(c) conventional: torch DataLoader over a Dataset with per-sample crop/flip, NCHW, torch.optim.SGD.
Goals: b/a >= 0.95, b/c >= 2.0 in fp32, bf16 >= 1.9x fp32. Writes its section of BENCHMARKS.md.

    python benchmarks/train_throughput.py [--steps 8] [--device cpu|cuda] [--no-write]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _report import write_section  # noqa: E402

from cnnlab.data import load_dataset  # noqa: E402
from cnnlab.engine.config import load_config  # noqa: E402
from cnnlab.engine.trainer import Trainer  # noqa: E402
from cnnlab.models import create_model  # noqa: E402

BATCH = 256


def bare_step(device: str, precision: str, steps: int, channels_last: bool) -> float:
    model = create_model("resnet9").to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(BATCH, 3, 32, 32, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (BATCH,), device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def step():
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * BATCH / (time.perf_counter() - t)


def trainer_epoch(device: str, precision: str, steps: int, channels_last: bool) -> float:
    cfg = load_config(None, [
        "model.name=resnet9", "data.name=synthetic", f"data.options.n_train={BATCH * (steps + 1)}",
        "data.options.n_test=256", "data.crop_padding=4", "data.flip=random", f"train.batch_size={BATCH}",
        "train.epochs=1", f"train.precision={precision}", f"train.channels_last={str(channels_last).lower()}",
        f"train.device={device}", "optim.nesterov=true", "train.drop_last=true", "train.log_every=1000"])
    trainer = Trainer(cfg, None, progress=False)
    trainer.fit()
    # images/s of the training loop alone (evaluation excluded), first step included as in real use
    return trainer.history[-1]["images_per_s"]


class _AugDataset(torch.utils.data.Dataset):
    """The conventional pattern: per-sample pad + random crop + random flip + normalise in __getitem__."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i].float() / 255
        x = F.pad(x, (4, 4, 4, 4), mode="reflect")
        dx, dy = torch.randint(0, 9, (2,)).tolist()
        x = x[:, dy:dy + 32, dx:dx + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return (x - self.mean) / self.std, self.labels[i]


def conventional(device: str, precision: str, steps: int, channels_last: bool) -> float:
    ds = load_dataset("synthetic", n_train=BATCH * (steps + 1), n_test=16)
    loader = torch.utils.data.DataLoader(_AugDataset(ds.train.images, ds.train.labels, ds.mean, ds.std),
                                         batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0)
    model = create_model("resnet9").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    t = time.perf_counter()
    n = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(y)
    _sync(device)
    return n / (time.perf_counter() - t)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    fp32_b = None
    for precision, cl in (("fp32", False), ("fp32", True), ("bf16", True)):
        a = bare_step(args.device, precision, args.steps, cl)
        b = trainer_epoch(args.device, precision, args.steps, cl)
        c = conventional(args.device, precision, args.steps, False)
        if precision == "fp32" and not cl:
            fp32_b = b
        label = f"{precision}{' channels_last' if cl else ''}"
        rows.append((label, a, b, c, b / a, b / c, b / fp32_b))
        print(f"{label:20s} bare {a:8.1f}  trainer {b:8.1f}  conventional {c:8.1f} img/s   "
              f"b/a {b / a:.2f}  b/c {b / c:.2f}  vs fp32 {b / fp32_b:.2f}", flush=True)
    machine = (torch.cuda.get_device_name() if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads")
    lines = [f"ResNet-9 (2.27M params), 32 px, batch {BATCH}, {args.steps} timed steps each; device: {machine}; "
             f"torch {torch.__version__}. (c) uses NCHW fp32 layout except for its autocast dtype.", "",
             "| precision | (a) bare step img/s | (b) Trainer img/s | (c) conventional img/s | b/a | b/c | b vs fp32 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} |" for r in rows]
    if not args.no_write:
        write_section("Training throughput (benchmarks/train_throughput.py)", "\n".join(lines))


if __name__ == "__main__":
    main()
