"""The trained run behind an analysis: its dataset (from the local cache) and its final training state."""

from __future__ import annotations

from pathlib import Path

from cnnlab.attribution.magic import prepare_config
from cnnlab.attribution.replay import Replay, move_state
from cnnlab.data import ImageDataset, load_dataset
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.setup import RunParts, build_run
from cnnlab.engine.step import TrainState
from cnnlab.engine.trainer import load_checkpoint


def load_run_dataset(config: RunConfig) -> ImageDataset:
    """The dataset a run config names (from the local cache; never downloads)."""
    try:
        return load_dataset(config.data.name, root=config.data.root, **config.data.options)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise ConfigError(f"data.name: cannot load dataset {config.data.name!r}: {e}") from None


def final_state(run_dir: str | Path, config: RunConfig,
                dataset: ImageDataset | None = None) -> tuple[RunParts, TrainState]:
    """(RunParts, final TrainState) of the run: from checkpoints/last.pt when present, else replayed."""
    parts = build_run(prepare_config(config), dataset=dataset)
    path = Path(run_dir) / "checkpoints" / "last.pt"
    if path.is_file():
        return parts, move_state(TrainState.from_tensors(load_checkpoint(path)["state"]), parts.device)
    return parts, Replay(parts).forward()
