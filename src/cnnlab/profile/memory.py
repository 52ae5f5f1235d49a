"""Peak memory of one model's forward (inference) or forward+backward (training) pass.

GPU: CUDA's peak allocator statistics around building the model and running the pass (weights,
input, activations, gradients). CPU: tracemalloc does not see torch's allocations, so the pass runs
in a fresh subprocess (``python -m cnnlab.profile.memory_probe SPEC``) that reports its peak resident set
size (Linux: ``VmHWM``, the ``ru_maxrss`` figure of its own address space — see ``memory_probe``); the
peak of an idle subprocess that imports the same libraries and builds nothing is subtracted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
import torch


@dataclass(frozen=True)
class PassSpec:
    """One model pass to measure: model name and input, and whether to run the backward too."""

    model: str
    resolution: int
    batch_size: int = 1
    in_channels: int = 3
    num_classes: int = 10
    backward: bool = False
    threads: int = 1

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def run_pass(spec: PassSpec, device: torch.device | str = "cpu") -> None:
    """Build the model and run the pass once: eval + no_grad for inference, train mode + backward otherwise."""
    from cnnlab.models import create_model

    model = create_model(spec.model, num_classes=spec.num_classes, in_channels=spec.in_channels).to(device)
    x = torch.randn(spec.batch_size, spec.in_channels, spec.resolution, spec.resolution, device=device)
    if spec.backward:
        model.train()
        model(x).float().sum().backward()
    else:
        model.eval()
        with torch.no_grad():
            model(x)


def cuda_peak_memory(spec: PassSpec, device: torch.device | str = "cuda") -> dict[str, float | str]:
    """Peak CUDA memory (MiB) of building the model and running the pass, above what was allocated before."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_pass(spec, device)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    reserved = torch.cuda.max_memory_reserved(device)
    return {"peak_mib": peak / 2**20, "peak_reserved_mib": reserved / 2**20, "method": "torch.cuda.max_memory_allocated"}


def _probe(spec: PassSpec | None, timeout: float) -> int:
    """Peak RSS (KiB) of a fresh interpreter running ``spec`` (None: import only)."""
    arg = "idle" if spec is None else spec.to_json()
    proc = subprocess.run([sys.executable, "-m", "cnnlab.profile.memory_probe", arg], capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed for {arg}: {proc.stderr.strip()[-2000:]}")
    return int(json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_kib"])


_IDLE_KIB: list[int] = []


def idle_baseline_kib(timeout: float = 600.0) -> int:
    """ru_maxrss of an idle probe (imports only); measured once per process and reused."""
    if not _IDLE_KIB:
        _IDLE_KIB.append(_probe(None, timeout))
    return _IDLE_KIB[0]


def cpu_peak_memory(spec: PassSpec, timeout: float = 600.0) -> dict[str, float | str]:
    """Peak RSS (MiB) of the pass in a fresh subprocess minus that of an idle subprocess (measured once)."""
    idle = idle_baseline_kib(timeout)
    used = _probe(spec, timeout)
    return {"peak_mib": max(0, used - idle) / 1024.0, "process_peak_mib": used / 1024.0, "idle_mib": idle / 1024.0,
            "method": "peak RSS (VmHWM / ru_maxrss) of a fresh subprocess minus an idle one"}


__all__ = ["PassSpec", "cpu_peak_memory", "cuda_peak_memory", "run_pass"]
