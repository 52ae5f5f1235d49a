"""cnnlab's Trainer against a plain PyTorch loop and PyTorch Lightning, on the same work.

Same synthetic CIFAR-shaped data (uint8 3x32x32, seeded), model (cnnlab's CIFAR ResNet-20 / ResNet-9),
recipe (SGD momentum 0.9 nesterov, lr 0.05, weight decay 5e-4, batch 256, random crop (pad 4, reflect) +
flip, cross-entropy) and evaluation schedule (the whole test split at every epoch end) for everyone.
Timed: the second epoch (training + its evaluation), as training images per second. Each measurement is
a separate process; the tools are interleaved over rounds (order rotated) and the medians compared.

- ``cnnlab``: the config route with its defaults (``train.precision: auto``, ``train.channels_last: auto``:
  bf16 autocast + channels_last where the CPU has native bf16, else fp32 NCHW), on-device batched augmentation.
- ``cnnlab_fp32``: the same in fp32 / NCHW (what the choice buys).
- ``cnnlab_user``: bring-your-own: nn.Module + torch.optim.SGD + the plain loop's DataLoader, fp32.
- ``plain``: DataLoader over a Dataset with per-sample crop/flip, torch.optim.SGD, fp32 (what one writes).
- ``lightning``: a LightningModule with the same DataLoaders (the ``bench`` extra), fp32.

    python benchmarks/trainer_vs_peers.py [--rounds 3] [--models resnet20,resnet9] [--train 1280] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

LR, MOMENTUM, WD, BATCH, EPOCHS = 0.05, 0.9, 5e-4, 256, 2
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
TOOLS = ("cnnlab", "cnnlab_fp32", "cnnlab_user", "plain", "lightning")


def synthetic(n_train: int, n_test: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n_train + n_test,), generator=g)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


class AugmentedCifar(torch.utils.data.Dataset):
    """Per-sample random crop (reflect pad 4) + flip + normalise, as a torchvision transform would."""

    def __init__(self, x, y, train: bool):
        self.x, self.y, self.train = x, y, train
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        img = self.x[i].float().div_(255)
        if self.train:
            img = F.pad(img[None], (4, 4, 4, 4), mode="reflect")[0]
            dy, dx = torch.randint(0, 9, (2,)).tolist()
            img = img[:, dy:dy + 32, dx:dx + 32]
            if torch.rand(()) < 0.5:
                img = img.flip(-1)
        return (img - self.mean) / self.std, self.y[i]


def loaders(n_train: int, n_test: int):
    xtr, ytr, xte, yte = synthetic(n_train, n_test)
    train = torch.utils.data.DataLoader(AugmentedCifar(xtr, ytr, True), batch_size=BATCH, shuffle=True,
                                        generator=torch.Generator().manual_seed(0))
    test = torch.utils.data.DataLoader(AugmentedCifar(xte, yte, False), batch_size=1000)
    return train, test


def model_and_opt(name: str):
    from cnnlab.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WD)


def run_plain(name, n_train, n_test):
    model, opt = model_and_opt(name)
    train, test = loaders(n_train, n_test)
    times = []
    for _ in range(EPOCHS):
        t0 = time.perf_counter()
        model.train()
        for x, y in train:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test:
                correct += int((model(x).argmax(1) == y).sum())
        times.append(time.perf_counter() - t0)
    return times[-1], {}


def run_cnnlab(name, n_train, n_test, precision):
    from cnnlab.data.dataset import ImageDataset, Split
    from cnnlab.engine import Callback, Trainer, load_config

    xtr, ytr, xte, yte = synthetic(n_train, n_test)
    ds = ImageDataset("cifar10", Split(xtr, ytr), Split(xte, yte), [str(i) for i in range(10)], MEAN, STD)
    pinned = [] if precision == "default" else [f"train.precision={precision}", "train.channels_last=false"]
    cfg = load_config(None, [f"model.name={name}", "data.name=cifar10", "data.crop_padding=4", "data.flip=random",
                             f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.eval_batch_size=1000",
                             "optim.name=sgd", f"optim.lr={LR}", f"optim.momentum={MOMENTUM}", "optim.nesterov=true",
                             f"optim.weight_decay={WD}", "optim.no_decay_1d=false", "schedule.name=constant",
                             "callbacks.curves=false", *pinned])
    times = []

    class Timer(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            times.append(metrics["train_time_s"] + metrics["eval_time_s"])

    trainer = Trainer(cfg, None, dataset=ds, callbacks=[Timer()], progress=False)
    result = trainer.fit()
    return times[-1], {"precision": result["precision"]}


def run_cnnlab_user(name, n_train, n_test):
    from cnnlab.engine import Callback, Trainer

    model, opt = model_and_opt(name)
    train, test = loaders(n_train, n_test)
    times = []

    class Timer(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            times.append(metrics["train_time_s"] + metrics["eval_time_s"])

    Trainer(model=model, optimizer=opt, train_loader=train, val_loader=test, epochs=EPOCHS, callbacks=[Timer()],
            progress=False).fit()
    return times[-1], {}


def run_lightning(name, n_train, n_test):
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl

    model, opt = model_and_opt(name)
    train, test = loaders(n_train, n_test)
    marks: dict[str, list[float]] = {"start": [], "end": []}

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = model

        def training_step(self, batch, i):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch, i):
            x, y = batch
            return (self.net(x).argmax(1) == y).sum()

        def configure_optimizers(self):
            return opt

    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            marks["start"].append(time.perf_counter())

        def on_validation_epoch_end(self, trainer, module):
            if not trainer.sanity_checking:
                marks["end"].append(time.perf_counter())

    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Timer()])
    trainer.fit(Module(), train, test)
    return marks["end"][-1] - marks["start"][-1], {}


def worker(tool: str, name: str, n_train: int, n_test: int) -> dict:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(os.cpu_count() or 1))))
    if tool == "plain":
        t, extra = run_plain(name, n_train, n_test)
    elif tool == "cnnlab":
        t, extra = run_cnnlab(name, n_train, n_test, "default")
    elif tool == "cnnlab_fp32":
        t, extra = run_cnnlab(name, n_train, n_test, "fp32")
    elif tool == "cnnlab_user":
        t, extra = run_cnnlab_user(name, n_train, n_test)
    elif tool == "lightning":
        t, extra = run_lightning(name, n_train, n_test)
    else:
        raise SystemExit(f"unknown tool {tool}")
    return {"tool": tool, "model": name, "seconds": t, "images_per_s": n_train / t, **extra}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--models", default="resnet20,resnet9")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train", type=int, default=1280)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(worker(a.worker, a.model, a.train, a.test)))
        return
    tools = a.tools.split(",")
    runs: dict[tuple[str, str], list[float]] = {}
    chosen = {}
    load_before = os.getloadavg()[0]
    for r in range(a.rounds):
        for name in a.models.split(","):
            order = tools[r % len(tools):] + tools[: r % len(tools)]
            for tool in order:
                cmd = [sys.executable, __file__, "--worker", tool, "--model", name, "--train", str(a.train), "--test", str(a.test)]
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    print(f"{tool} {name} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
                    continue
                rec = json.loads(p.stdout.strip().splitlines()[-1])
                runs.setdefault((name, tool), []).append(rec["images_per_s"])
                if tool == "cnnlab":
                    chosen[name] = rec["precision"]
                print(f"round {r + 1} {name:9s} {tool:12s} {rec['images_per_s']:8.1f} img/s", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    lines = ["| model | " + " | ".join(tools) + " | cnnlab / plain | cnnlab / Lightning | cnnlab_user / plain |",
             "|---|" + "---|" * (len(tools) + 3)]
    def ratio(name, x, y):
        return f"{med[(name, x)] / med[(name, y)]:.2f}x" if (name, x) in med and (name, y) in med else "-"

    for name in a.models.split(","):
        row = [f"{med.get((name, t), float('nan')):.0f}" for t in tools]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {ratio(name, 'cnnlab', 'plain')} | {ratio(name, 'cnnlab', 'lightning')} | "
                     f"{ratio(name, 'cnnlab_user', 'plain')} |")
    load_after = os.getloadavg()[0]
    spread = "; ".join(f"{n}/{t}: {min(v):.0f}-{max(v):.0f}" for (n, t), v in sorted(runs.items()))
    tools_arg = f" --tools {a.tools}" if a.tools != ap.get_default("tools") else ""
    body = f"""`python benchmarks/trainer_vs_peers.py --models {a.models}{tools_arg} --rounds {a.rounds} --train {a.train} --test {a.test}`: training images/s
(median of {a.rounds} rounds) over the second epoch of training plus its end-of-epoch evaluation of {a.test}
test images; synthetic CIFAR-shaped data, batch {BATCH}, SGD nesterov, crop + flip, same for every tool; each
measurement a separate process, tools interleaved (order rotated each round). {platform.processor() or platform.machine()},
{os.cpu_count()} cores, torch {torch.__version__}; 1-minute load average {load_before:.1f} before, {load_after:.1f} after
(other work on the machine makes single rounds noisy; range per cell: {spread}).

{chr(10).join(lines)}

cnnlab's choice of precision/layout here: {json.dumps(chosen)}. `cnnlab_fp32` is the same Trainer forced to
fp32/NCHW; `cnnlab_user` is the bring-your-own route (nn.Module + torch.optim.SGD + the plain loop's DataLoader).
"""
    print(body)
    if not a.no_write:
        from _report import write_section

        write_section(f"Trainer vs a plain loop and Lightning (CPU, {a.models})", body)


if __name__ == "__main__":
    main()
