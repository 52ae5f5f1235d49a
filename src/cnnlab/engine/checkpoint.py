"""The Trainer's checkpoint format: what a checkpoint holds, writing and reading it, and putting its weights
back into a model.

A checkpoint is a dict tagged ``"format": CHECKPOINT_FORMAT`` holding only tensors and plain data, so it loads
with ``torch.load(weights_only=True)``: the train state (params, buffers, optimizer state, step), the EMA
weights, the schedule's and callbacks' states, the metrics history, the time spent and the resolved config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from cnnlab.utils.io import save_torch_atomic

if TYPE_CHECKING:
    from cnnlab.engine.callbacks import Callback

CHECKPOINT_FORMAT = "cnnlab-checkpoint-v1"


def save_checkpoint(path: str | Path, *, epoch: int, state: dict[str, Any], ema: dict[str, Tensor] | None,
                    schedule: dict[str, Any], callbacks: Sequence["Callback"], history: list[dict[str, Any]],
                    elapsed: float, config: dict[str, Any]) -> None:
    """Write everything needed to resume after ``epoch`` completed epochs (temp file, then rename)."""
    save_torch_atomic(Path(path), {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "state": state,
        "ema": ema,
        "schedule": schedule,
        "callbacks": [{"callback": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks],
        "history": history,
        "elapsed": elapsed,
        "config": config,
    })


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cnnlab checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} file")
    return ckpt


def checkpoint_weights(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(params, buffers) a checkpoint's model evaluates with, on ``device``: its EMA weights when the run kept
    an EMA, else the trained parameters."""
    params = ckpt["ema"] if ckpt.get("ema") is not None else ckpt["state"]["params"]
    return to_device(params, device), to_device(ckpt["state"]["buffers"], device)


def model_from_state(model: torch.nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> torch.nn.Module:
    """Copy ``params`` and ``buffers`` (by name) into ``model``; returns it in eval mode."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in params:
                p.copy_(params[n])
        for n, b in model.named_buffers():
            if n in buffers:
                b.copy_(buffers[n])
    return model.eval()


def restore_callbacks(callbacks: Sequence["Callback"], saved: list) -> None:
    """Give each callback the state saved by the callback of its class at the same rank among that class, so a
    resumed run whose callback list differs (one added or dropped) never hands a state to the wrong callback."""
    if not all(isinstance(s, dict) and set(s) == {"callback", "state"} for s in saved):
        for cb, s in zip(callbacks, saved):  # checkpoints written before callback states were named
            cb.load_state_dict(s)
        return
    pools: dict[str, list] = {}
    for s in saved:
        pools.setdefault(s["callback"], []).append(s["state"])
    for cb in callbacks:
        pool = pools.get(type(cb).__name__)
        if pool:
            cb.load_state_dict(pool.pop(0))


def to_device(obj: Any, device: torch.device | str) -> Any:
    """Tensors (also inside nested dicts) moved to ``device``; None and other values as they are."""
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj
