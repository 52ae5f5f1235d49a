"""Where the Trainer's time goes, next to a plain PyTorch loop, on the same model, batch and recipe.

Three measurements, each in this one process with the variants alternated step by step (so a shared,
noisy machine slows them alike):

- ``parts``: median seconds per training step of (a) nn.Module + torch.optim.SGD, (b) cnnlab's
  ``train_step`` as the bring-your-own route drives it (torch.optim mapped onto the functional SGD),
  and the pieces that differ: the forward+backward alone each way, the optimizer update alone each way,
  one batch of the DataLoader raw and wrapped by the Trainer's source, and the end-of-epoch evaluation
  of the test data each way.
- ``torch``: torch.profiler's top operators (self CPU time) over a few steps of each.
- ``python``: cProfile's top functions (cumulative) over one epoch of ``Trainer(...).fit()`` on the
  bring-your-own route and of the plain loop.

    python benchmarks/profile_trainer.py [--model resnet20] [--batch 256] [--reps 8] [--what parts,torch,python]
        [--precision fp32|bf16] [--channels-last] [--clock wall|cpu] [--out FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import contextlib
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from trainer_vs_peers import LR, MOMENTUM, WD, AugmentedCifar, model_and_opt, synthetic  # noqa: E402


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _time(fn: Callable[[], object]) -> float:
    t0 = _clock()
    fn()
    return _clock() - t0


def alternate(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, tuple[float, float, float]]:
    """(median, min, max) seconds per call of each function, called in turn ``reps`` times after one warm-up
    (the order rotated each time: whichever runs first after another can be systematically slower)."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    keys = list(fns)
    for r in range(reps):
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            times[k].append(_time(fns[k]))
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


class Setup:
    """A plain model + torch.optim pair and, from an identical copy, the bring-your-own Trainer's pieces."""

    def __init__(self, model_name: str, batch: int, precision: str, channels_last: bool):
        from cnnlab.engine import Trainer

        self.fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.amp = torch.bfloat16 if precision == "bf16" else None
        self.plain_model, self.plain_opt = model_and_opt(model_name)
        self.plain_model.to(memory_format=self.fmt)
        xtr, ytr, xte, yte = synthetic(batch * 2, 1000)
        self.train_ds, self.test_ds = AugmentedCifar(xtr, ytr, True), AugmentedCifar(xte, yte, False)
        self.train_dl = torch.utils.data.DataLoader(self.train_ds, batch_size=batch, shuffle=True,
                                                    generator=torch.Generator().manual_seed(0))
        self.test_dl = torch.utils.data.DataLoader(self.test_ds, batch_size=1000)
        x, y = next(iter(self.train_dl))
        self.x, self.y = x.contiguous(memory_format=self.fmt), y
        model, opt = model_and_opt(model_name)
        self.trainer = Trainer(model=model, optimizer=opt, train_loader=self.train_dl, val_loader=self.test_dl,
                               epochs=1, progress=False, use_amp=precision == "bf16", channels_last=channels_last)

    def autocast(self):
        return torch.autocast("cpu", dtype=self.amp) if self.amp is not None else contextlib.nullcontext()

    # -- the plain loop's pieces
    def plain_fwd_bwd(self) -> None:
        with self.autocast():
            loss = F.cross_entropy(self.plain_model(self.x).float(), self.y)
        self.plain_opt.zero_grad(set_to_none=True)
        loss.backward()

    def plain_step(self) -> None:
        self.plain_fwd_bwd()
        self.plain_opt.step()

    def plain_eval(self) -> None:
        self.plain_model.eval()
        with torch.no_grad(), self.autocast():
            for x, y in self.test_dl:
                int((self.plain_model(x.contiguous(memory_format=self.fmt)).argmax(1) == y).sum())
        self.plain_model.train()

    # -- cnnlab's pieces
    def cnnlab_step(self) -> None:
        from cnnlab.engine.step import train_step

        tr = self.trainer
        w = torch.ones(len(self.y))
        tr.state, _ = train_step(tr.model, tr.state, self.x, self.y, w, LR, tr.parts.settings, denominator=len(self.y))

    def cnnlab_fwd_bwd(self) -> None:
        from cnnlab.engine.step import forward_loss

        tr = self.trainer
        params = {n: p.detach().requires_grad_(True) for n, p in tr.state.params.items()}
        w = torch.ones(len(self.y))
        loss, _ = forward_loss(tr.model, params, tr.state.buffers, self.x, self.y, w, float(len(self.y)), tr.parts.settings)
        torch.autograd.grad(loss, list(params.values()))

    def cnnlab_update(self, grads: dict[str, torch.Tensor]) -> None:
        tr = self.trainer
        with torch.no_grad():
            tr.parts.settings.optimizer.update_fast(tr.state.params, grads, tr.state.opt_state, LR, tr.state.step + 1)

    def cnnlab_eval(self) -> None:
        self.trainer.evaluate("val")


def parts(s: Setup, reps: int) -> list[str]:
    grads = {n: torch.randn_like(p) for n, p in s.trainer.state.params.items()}
    for p in s.plain_model.parameters():
        p.grad = torch.randn_like(p)
    src = s.trainer.parts.train_loader
    raw = {"dl": iter(s.train_dl), "src": src.epoch(0)}

    def next_raw():
        try:
            return next(raw["dl"])
        except StopIteration:
            raw["dl"] = iter(s.train_dl)
            return next(raw["dl"])

    def next_src():
        try:
            return next(raw["src"])
        except StopIteration:
            raw["src"] = src.epoch(0)
            return next(raw["src"])

    def plain_opt_step():
        for p in s.plain_model.parameters():
            if p.grad is None:
                p.grad = torch.randn_like(p)
        s.plain_opt.step()

    groups = {
        "step": {"plain": s.plain_step, "cnnlab": s.cnnlab_step},
        "forward+backward": {"plain": s.plain_fwd_bwd, "cnnlab": s.cnnlab_fwd_bwd},
        "optimizer update": {"plain": plain_opt_step, "cnnlab": lambda: s.cnnlab_update(grads)},
        "one train batch from the DataLoader": {"plain": next_raw, "cnnlab": next_src},
        "evaluation (1000 test images)": {"plain": s.plain_eval, "cnnlab": s.cnnlab_eval},
    }
    out = ["| part | plain (ms, median [min-max]) | cnnlab (ms) | cnnlab / plain time |", "|---|---|---|---|"]
    for name, fns in groups.items():
        r = alternate(fns, reps)
        (pm, pl, ph), (cm, cl, ch) = r["plain"], r["cnnlab"]
        out.append(f"| {name} | {pm * 1e3:.1f} [{pl * 1e3:.1f}-{ph * 1e3:.1f}] | {cm * 1e3:.1f} [{cl * 1e3:.1f}-{ch * 1e3:.1f}] "
                   f"| {cm / pm:.3f} |")
        print(out[-1], flush=True)
    return out


def torch_profile(s: Setup, steps: int, top: int = 12) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    out = []
    for name, fn in (("plain", s.plain_step), ("cnnlab", s.cnnlab_step)):
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
        out += [f"### torch.profiler, {name} step x{steps} (top {top} by self CPU)", "", "```", table.strip(), "```", ""]
    return out


def python_profile(s: Setup, model_name: str, top: int = 15) -> list[str]:
    from cnnlab.engine import Trainer

    model, opt = model_and_opt(model_name)
    trainer = Trainer(model=model, optimizer=opt, train_loader=s.train_dl, val_loader=s.test_dl, epochs=1, progress=False)
    pmodel, popt = s.plain_model, s.plain_opt

    def plain_epoch():
        pmodel.train()
        for x, y in s.train_dl:
            loss = F.cross_entropy(pmodel(x), y)
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()
        s.plain_eval()

    out = []
    for name, fn in (("plain loop, one epoch + eval", plain_epoch), ("Trainer (bring-your-own), fit() of one epoch", trainer.fit)):
        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        buf = io.StringIO()
        pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(top)
        body = buf.getvalue()
        body = body[body.find("ncalls"):] if "ncalls" in body else body
        out += [f"### cProfile, {name} (top {top} cumulative)", "", "```", body.strip(), "```", ""]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--what", default="parts,torch,python")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--clock", default="wall", choices=tuple(CLOCK),
                    help="cpu: this process's CPU time (steadier than wall time on a shared machine; use one thread)")
    ap.add_argument("--out", help="also write the report to this markdown file")
    a = ap.parse_args()
    global _clock
    _clock = CLOCK[a.clock]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", str(os.cpu_count() or 1))))
    s = Setup(a.model, a.batch, a.precision, a.channels_last)
    what = a.what.split(",")
    lines = [f"{a.model}, batch {a.batch}, {a.precision}{', channels_last' if a.channels_last else ''}, "
             f"{torch.get_num_threads()} threads, {a.clock} clock, torch {torch.__version__}, lr {LR} momentum {MOMENTUM} wd {WD}", ""]
    if "parts" in what:
        lines += parts(s, a.reps) + [""]
    if "torch" in what:
        lines += torch_profile(s, max(2, a.reps // 2))
    if "python" in what:
        lines += python_profile(s, a.model)
    text = "\n".join(lines)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
