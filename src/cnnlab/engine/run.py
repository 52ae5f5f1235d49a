"""Run directories: train a config into one, and load a finished one back for analysis."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data import ImageDataset
from cnnlab.engine.config import ConfigError, RunConfig, build_config
from cnnlab.engine.setup import RunParts, build_run
from cnnlab.engine.checkpoint import checkpoint_weights, load_checkpoint, model_from_state
from cnnlab.engine.trainer import Trainer
from cnnlab.utils.io import load_yaml_text


@dataclass
class LoadedRun:
    """A finished run: the trained model (eval mode), its dataset, config and result record."""

    run_dir: Path
    model: nn.Module
    dataset: ImageDataset
    config: RunConfig
    result: dict[str, Any]
    parts: RunParts

    def eval_inputs(self, split: str = "test", start: int = 0, end: int | None = None) -> torch.Tensor:
        """Clean (eval-transform) inputs of a split, as the model saw them in evaluation."""
        data = self.dataset.test if split == "test" else self.dataset.train
        return self.parts.eval_images(data.images, start, len(data) if end is None else end)


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    return build_config(load_yaml_text(path.read_text(encoding="utf-8")) or {})


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a readable result record ({e}); rerun or resume the run to rewrite it") from None


def load_run(run_dir: str | Path, *, checkpoint: str = "last", device: str | None = None, dataset: ImageDataset | None = None) -> LoadedRun:
    """Rebuild a finished run's model with its trained weights (EMA weights when the run kept an EMA).

    ``checkpoint``: "last" or "best" (the ModelCheckpoint callback's best) or a file name in checkpoints/.
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    result = read_result(run_dir)
    if result is None or result.get("status") != "completed":
        state = "no result.json" if result is None else f"status {result.get('status')!r}"
        raise ConfigError(f"{run_dir} is not a finished run ({state}); train or resume it first")
    if device is not None:
        config = config.model_copy(update={"train": config.train.model_copy(update={"device": device, "compile": False})})
    parts = build_run(config, dataset=dataset)
    if checkpoint == "best":
        if "best" not in result:
            raise ConfigError(f"{run_dir} kept no best checkpoint (no callbacks.checkpoint in its config)")
        path = run_dir / result["best"]["checkpoint"]
    else:
        path = run_dir / "checkpoints" / ("last.pt" if checkpoint == "last" else checkpoint)
    params, buffers = checkpoint_weights(load_checkpoint(path), parts.device)
    model = model_from_state(parts.model, params, buffers)
    return LoadedRun(run_dir, model, parts.dataset, config, result, parts)


def train(config: RunConfig, run_dir: str | Path | None, *, resume: bool = False, progress: bool = True, **kwargs: Any) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` (resume from its last checkpoint if asked) and return result.json's record."""
    return Trainer(config, run_dir, progress=progress, **kwargs).fit(resume=resume)


def fit(model: nn.Module, train_data: Any, val_data: Any = None, *, optimizer: torch.optim.Optimizer | None = None,
        lr: float = 1e-3, epochs: int = 10, test_data: Any = None, **kwargs: Any) -> dict[str, Any]:
    """Train your own ``model`` in one line and return the result record; the model keeps the trained weights.

    ``train_data`` / ``val_data`` / ``test_data``: a DataLoader, a torch Dataset or ``(images, labels)``
    tensors. ``optimizer``: any torch.optim.Optimizer (default AdamW at ``lr``). Other keyword arguments
    go to :class:`Trainer` (criterion, device, use_amp, gradient_accumulation_steps, gradient_clip_norm,
    scheduler, callbacks, batch_size, seed, channels_last, run_dir).
    """
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    run_dir = kwargs.pop("run_dir", None)
    return Trainer(None, run_dir, model=model, optimizer=optimizer, train_loader=train_data, val_loader=val_data,
                   test_loader=test_data, epochs=epochs, **kwargs).fit()
