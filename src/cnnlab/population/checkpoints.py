"""Resume files of population training: one checkpoint per group of members trained together, and the
backend ``auto`` chose (so a resumed run splits the members into the same groups)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from cnnlab.population.plan import BACKENDS, TrainPlan
from cnnlab.population.state import PopulationState
from cnnlab.utils.io import save_torch_atomic, write_json_atomic
from cnnlab.utils.tagged import load_tagged

CHECKPOINT_FORMAT = "cnnlab-population-checkpoint-v1"


def checkpoint_path(plan: TrainPlan, ids: Sequence[int]) -> Path:
    """``members_{first}-{last}_of_{M}.pt`` in the plan's checkpoint directory."""
    assert plan.checkpoint_dir is not None
    return plan.checkpoint_dir / f"members_{ids[0]}-{ids[-1]}_of_{plan.size}.pt"


def save_checkpoint(plan: TrainPlan, ids: Sequence[int], epoch: int, state: PopulationState, history: list[dict]) -> None:
    """The state (on the CPU) and history of members ``ids`` after ``epoch`` epochs, written atomically."""
    save_torch_atomic(checkpoint_path(plan, ids), {"format": CHECKPOINT_FORMAT, "ids": list(ids), "epoch": epoch,
                                                   "state": state.to("cpu").tensors(), "history": history})


def load_checkpoint(plan: TrainPlan, ids: Sequence[int]) -> tuple[int, PopulationState, list[dict]]:
    """(first epoch to run, state, history so far) of the members ``ids``: from their checkpoint when one
    exists for exactly this group, else from the initial weights."""
    path = checkpoint_path(plan, ids) if plan.checkpoint_dir is not None else None
    if path is None or not path.is_file():
        return 0, plan.initial_state(ids), []
    ckpt = load_tagged(path, CHECKPOINT_FORMAT, what="population checkpoint")
    if ckpt.get("ids") != list(ids):
        raise ValueError(f"{path} is not a population checkpoint of members {ids[0]}..{ids[-1]}")
    if not 0 < int(ckpt["epoch"]) <= plan.epochs:
        raise ValueError(f"{path} holds epoch {ckpt['epoch']} of a longer run; this one has {plan.epochs} epochs")
    return int(ckpt["epoch"]), PopulationState.from_tensors(ckpt["state"]).to(plan.device), list(ckpt["history"])


def recorded_choice(plan: TrainPlan) -> dict[str, Any] | None:
    """The backend an interrupted run chose (so its checkpoints fit the resumed run's member groups)."""
    if plan.checkpoint_dir is None or not (plan.checkpoint_dir / "backend.json").is_file():
        return None
    path = plan.checkpoint_dir / "backend.json"
    try:
        choice = json.loads(path.read_text(encoding="utf-8"))
        if choice["backend"] not in BACKENDS or choice["backend"] == "auto":
            raise ValueError(f"unknown backend {choice['backend']!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {path} (the backend an interrupted run chose): {e}") from None
    return {**choice, "reason": f"resumed with the backend the run chose before: {choice.get('reason', '')}"}


def record_choice(plan: TrainPlan, choice: dict[str, Any], workers: int) -> None:
    """Save ``auto``'s choice beside the checkpoints."""
    if plan.checkpoint_dir is not None:
        write_json_atomic(plan.checkpoint_dir / "backend.json", {**choice, "workers": workers})
