"""MAGIC's files in an analysis run directory: ``scores.pt`` / ``scores.npy`` (the shared scores format, with
phi) and ``magic.json`` (indices, measurement, replay cost, warnings), written last as the completion marker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cnnlab.attribution.magic import MagicResult
from cnnlab.attribution.replay import ReplayStats
import torch

from cnnlab.attribution.scores import SCORES_FORMAT, Scores, save_scores, scores_from_blob
from cnnlab.utils.io import write_json_atomic
from cnnlab.utils.tagged import load_tagged


def save_magic(run_dir: str | Path, result: MagicResult) -> Path:
    """scores.pt + scores.npy, then magic.json (the completion marker)."""
    run_dir = Path(run_dir)
    save_scores(run_dir / "scores.pt", result.attribution, {"phi": result.phi})
    meta = {
        "method": "magic",
        "measurement": result.measurement,
        "higher_is_better": result.higher_is_better,
        "num_train": int(result.train_indices.numel()),
        "train_indices": result.train_indices.tolist(),
        "target_indices": result.target_indices.tolist(),
        "phi": result.phi.tolist(),
        "stats": result.stats.to_dict(),
        "warnings": result.warnings,
        "settings": result.settings,
        "files": {"scores": "scores.pt", "scores_npy": "scores.npy"},
    }
    write_json_atomic(run_dir / "magic.json", meta)
    return run_dir / "magic.json"


def read_magic_meta(run_dir: str | Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "magic.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def load_magic(run_dir: str | Path) -> MagicResult:
    """The MAGIC result saved in ``run_dir`` (without the final training state)."""
    run_dir = Path(run_dir)
    meta = read_magic_meta(run_dir)
    if meta is None:
        raise FileNotFoundError(f"{run_dir} holds no MAGIC scores (no magic.json); run `cnnlab magic` first")
    blob = load_tagged(run_dir / "scores.pt", SCORES_FORMAT, what="scores file")
    return MagicResult(scores_from_blob(blob), blob.get("phi", torch.zeros(0)), ReplayStats(**meta["stats"]),
                       meta.get("warnings", []), meta.get("settings", {}))


def magic_scores(result: MagicResult) -> Scores:
    """The result's scores in the shared layout (its ``attribution``)."""
    return result.attribution
