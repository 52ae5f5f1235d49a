"""Profile models × resolutions: parameters, FLOPs, latency, throughput, peak memory; stored per entry.

Each entry is ``OUT/{model}/{resolution}.json`` (written atomically, with a per-layer table); an
entry measured with the same settings is reused unless forced. ``export`` writes the flat table as
CSV + JSON, ``plot_families`` one PNG of FLOPs and latency vs resolution per model family.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from cnnlab.models import create_model, list_models, model_info
from cnnlab.models.registry import get_entry
from cnnlab.profile.flops import count_flops
from cnnlab.profile.layers import layer_table
from cnnlab.profile.memory import PassSpec, cpu_peak_memory, cuda_peak_memory
from cnnlab.profile.timing import cuda_event_latency, measure
from cnnlab.utils.io import write_json_atomic, write_text_atomic


@dataclass(frozen=True)
class ProfileSettings:
    """How to measure. ``batch_size`` is the throughput batch (latency is also taken at batch 1)."""

    batch_size: int = 32
    device: str = "auto"
    in_channels: int = 3
    num_classes: int = 10
    memory: bool = True
    min_run_time: float = 0.5
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.min_run_time <= 0:
            raise ValueError(f"min_run_time must be > 0, got {self.min_run_time}")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} asked for, but CUDA is not available on this machine")
        return dev


def select_models(patterns: str | Sequence[str]) -> list[str]:
    """Registered model names matching comma-separated shell patterns (``"resnet*,tiny_cnn"``); a name
    without wildcards may also be an alias, an import path ``pkg.mod:factory`` or an entry-point name."""
    pats = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns) if p.strip()]
    names: list[str] = []
    for p in pats:
        matched = list_models(p)
        if not matched and not any(c in p for c in "*?["):
            get_entry(p)  # raises a clear UnknownModelError for a bad name
            matched = [p]
        names.extend(n for n in matched if n not in names)
    return names


def profile_model(name: str, resolution: int, settings: ProfileSettings = ProfileSettings()) -> dict[str, Any]:
    """Measure one model at one square input resolution (FLOPs and memory per pass; latency per call)."""
    entry = get_entry(name)
    if resolution < entry.min_resolution:
        raise ValueError(f"{name!r} needs inputs of at least {entry.min_resolution} px, got {resolution}")
    device = settings.resolved_device()
    threads = settings.threads or torch.get_num_threads()
    s = settings
    model = create_model(name, num_classes=s.num_classes, in_channels=s.in_channels).to(device)
    info = model_info(model)
    x1 = torch.randn(1, s.in_channels, resolution, resolution, device=device)
    xb = torch.randn(s.batch_size, s.in_channels, resolution, resolution, device=device)

    model.eval()  # eval mode for counting: BN in train mode rejects one image with 1×1 maps; FLOPs are the same
    fwd = count_flops(model, x1)
    fwd_bwd = count_flops(model, x1, backward=True)
    layers = layer_table(model, x1, fwd.by_module)

    model.eval()

    def infer(x: torch.Tensor):
        def f():
            with torch.no_grad():
                return model(x)
        return f

    def train_step():
        model.zero_grad(set_to_none=True)
        model(xb).float().sum().backward()

    latency = {"forward_b1": measure(infer(x1), min_run_time=s.min_run_time, num_threads=threads).to_dict(),
               f"forward_b{s.batch_size}": measure(infer(xb), min_run_time=s.min_run_time, num_threads=threads).to_dict()}
    model.train()
    latency[f"forward_backward_b{s.batch_size}"] = measure(train_step, min_run_time=s.min_run_time,
                                                           num_threads=threads).to_dict()
    model.zero_grad(set_to_none=True)
    model.eval()
    cuda_events = None
    if device.type == "cuda":
        cuda_events = {"forward_b1": cuda_event_latency(infer(x1)),
                       f"forward_b{s.batch_size}": cuda_event_latency(infer(xb))}
    fb = latency[f"forward_b{s.batch_size}"]["median_s"]
    tb = latency[f"forward_backward_b{s.batch_size}"]["median_s"]
    memory = None
    if s.memory:
        specs = {k: PassSpec(name, resolution, s.batch_size, s.in_channels, s.num_classes, backward=b, threads=threads)
                 for k, b in (("forward", False), ("forward_backward", True))}
        del model, x1, xb
        if device.type == "cuda":
            memory = {k: cuda_peak_memory(v, device) for k, v in specs.items()}
        else:
            memory = {k: cpu_peak_memory(v) for k, v in specs.items()}
    return {
        "model": name, "family": entry.family, "resolution": resolution,
        "settings": _settings_dict(s), "device": str(device), "device_name": _device_name(device), "threads": threads,
        "torch": torch.__version__, "params": info.total_params, "trainable_params": info.trainable_params,
        "size_mb": info.size_mb,
        "flops": {"forward": fwd.total, "forward_backward": fwd_bwd.total, "per": "image",
                  "forward_by_op": fwd.by_op, "forward_backward_by_op": fwd_bwd.by_op},
        "latency": latency, "cuda_events": cuda_events,
        "throughput": {"forward_img_s": s.batch_size / fb, "train_img_s": s.batch_size / tb, "batch_size": s.batch_size},
        "memory": memory, "layers": layers,
    }


def _settings_dict(s: ProfileSettings) -> dict[str, Any]:
    return asdict(s)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def entry_path(out_dir: str | os.PathLike, model: str, resolution: int) -> Path:
    return Path(out_dir) / model / f"{resolution}.json"


def run_profile(models: Iterable[str], resolutions: Iterable[int], out_dir: str | os.PathLike,
                settings: ProfileSettings = ProfileSettings(), *, force: bool = False,
                on_entry=None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Profile every (model, resolution) pair into ``out_dir``; reuse stored entries with equal settings.

    Returns (entries, skipped) where skipped lists pairs below a model's minimum resolution.
    """
    entries, skipped = [], []
    for name in models:
        min_res, max_res = get_entry(name).min_resolution, get_entry(name).max_resolution
        for res in resolutions:
            if res < min_res:
                skipped.append({"model": name, "resolution": res, "reason": f"below the model minimum of {min_res} px"})
                continue
            if max_res is not None and res > max_res:
                skipped.append({"model": name, "resolution": res, "reason": f"above the model maximum of {max_res} px"})
                continue
            path = entry_path(out_dir, name, res)
            cached = None
            if path.is_file() and not force:
                cached = json.loads(path.read_text(encoding="utf-8"))
                if cached.get("settings") != _settings_dict(settings):
                    cached = None
            if cached is None:
                cached = profile_model(name, res, settings)
                write_json_atomic(path, cached)
                cached["cached"] = False
            else:
                cached["cached"] = True
            entries.append(cached)
            if on_entry is not None:
                on_entry(cached)
    return entries, skipped


TABLE_COLUMNS = ["model", "family", "resolution", "params", "gflops_fwd", "gflops_fwd_bwd", "latency_b1_ms",
                 "latency_b1_iqr_ms", "latency_batch_ms", "throughput_img_s", "train_img_s", "peak_mem_fwd_mib",
                 "peak_mem_train_mib", "device"]


def table_row(e: dict[str, Any]) -> dict[str, Any]:
    """The flat summary of one entry (FLOPs per image; latency at batch 1 and at the throughput batch)."""
    b = e["throughput"]["batch_size"]
    mem = e.get("memory") or {}
    return {
        "model": e["model"], "family": e["family"], "resolution": e["resolution"], "params": e["params"],
        "gflops_fwd": e["flops"]["forward"] / 1e9, "gflops_fwd_bwd": e["flops"]["forward_backward"] / 1e9,
        "latency_b1_ms": e["latency"]["forward_b1"]["median_s"] * 1e3,
        "latency_b1_iqr_ms": e["latency"]["forward_b1"]["iqr_s"] * 1e3,
        "latency_batch_ms": e["latency"][f"forward_b{b}"]["median_s"] * 1e3,
        "throughput_img_s": e["throughput"]["forward_img_s"], "train_img_s": e["throughput"]["train_img_s"],
        "peak_mem_fwd_mib": mem.get("forward", {}).get("peak_mib"),
        "peak_mem_train_mib": mem.get("forward_backward", {}).get("peak_mib"),
        "device": e["device"],
    }


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def load_entries(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every stored entry under ``out_dir`` (sorted by model, resolution)."""
    entries = [json.loads(p.read_text(encoding="utf-8")) for p in Path(out_dir).glob("*/*.json")]
    return sorted(entries, key=lambda e: (e["model"], e["resolution"]))


def export(entries: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, str]:
    """Write ``profile.csv`` and ``profile.json`` (flat rows) to ``out_dir``."""
    rows = [table_row(e) for e in entries]
    out = Path(out_dir)
    write_text_atomic(out / "profile.csv", _csv(rows, TABLE_COLUMNS))
    write_json_atomic(out / "profile.json", rows)
    return {"csv": str(out / "profile.csv"), "json": str(out / "profile.json")}


def plot_families(entries: Sequence[dict[str, Any]], out_dir: str | os.PathLike) -> dict[str, str]:
    """One PNG per family: forward GFLOPs and batch-1 latency vs resolution, one line per model."""
    from matplotlib.ticker import NullLocator

    from cnnlab.utils.plotting import pyplot, save_figure

    plt = pyplot()
    rows = [table_row(e) for e in entries]
    files = {}
    for family in sorted({r["family"] for r in rows}):
        fam = [r for r in rows if r["family"] == family]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
        for model in sorted({r["model"] for r in fam}):
            pts = sorted((r for r in fam if r["model"] == model), key=lambda r: r["resolution"])
            res = [r["resolution"] for r in pts]
            a1.plot(res, [r["gflops_fwd"] for r in pts], "o-", label=model)
            a2.errorbar(res, [r["latency_b1_ms"] for r in pts], yerr=[r["latency_b1_iqr_ms"] / 2 for r in pts],
                        fmt="o-", capsize=2, label=model)
        for ax, ylab in ((a1, "forward GFLOPs per image"), (a2, "latency, batch 1 (ms; bars: IQR)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ticks = sorted({r["resolution"] for r in fam})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlabel("input resolution (px)")
            ax.set_ylabel(ylab)
            ax.grid(True, which="both", alpha=0.3)
        a1.legend(fontsize=8)
        dev = fam[0]["device"]
        fig.suptitle(f"{family}: FLOPs and latency vs resolution ({dev})")
        p = Path(out_dir) / f"profile_{family}.png"
        save_figure(fig, p)
        files[family] = str(p)
    return files


__all__ = ["ProfileSettings", "TABLE_COLUMNS", "entry_path", "export", "load_entries", "plot_families", "profile_model",
           "run_profile", "select_models", "table_row"]
