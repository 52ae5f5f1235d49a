"""Attribution artifacts inside an analysis run directory.

::

    RUN_DIR/                       a training run (config.yaml, metrics.jsonl, checkpoints/, result.json)
      scores.pt  scores.npy        MAGIC scores N_train × K (+ index metadata in scores.pt)
      magic.json                   train/target indices, measurement, replay cost, warnings
      plots/                       proponent / opponent grids
      baselines/<method>.pt        baseline scores (tracin, trak) in the same layout
      lds/<regime>/                LDS subset models (masks.pt, models/*.json) and summary.json

Every file is written atomically; ``magic.json`` is written last, so its presence means the scores are complete.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cnnlab.attribution.magic import MagicResult
from cnnlab.attribution.replay import ReplayStats
from cnnlab.utils.io import atomic_path, ensure_contained, save_torch_atomic, write_json_atomic

SCORES_FORMAT = "cnnlab-attribution-scores-v1"


@dataclass
class Scores:
    """Attribution scores in the shared layout: rows = ``train_indices``, columns = ``target_indices``."""

    scores: Tensor
    train_indices: Tensor
    target_indices: Tensor
    measurement: str
    method: str
    higher_is_better: bool = False


def _save_scores(path: Path, s: Scores, extra: dict[str, Any] | None = None) -> None:
    save_torch_atomic(path, {"format": SCORES_FORMAT, "method": s.method, "scores": s.scores.contiguous(),
                             "train_indices": s.train_indices, "target_indices": s.target_indices,
                             "measurement": s.measurement, "higher_is_better": s.higher_is_better, **(extra or {})})
    with atomic_path(path.with_suffix(".npy")) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, s.scores.numpy())


def save_magic(run_dir: str | Path, result: MagicResult) -> Path:
    """scores.pt + scores.npy, then magic.json (the completion marker)."""
    run_dir = Path(run_dir)
    s = Scores(result.scores, result.train_indices, result.target_indices, result.measurement, "magic", result.higher_is_better)
    _save_scores(run_dir / "scores.pt", s, {"phi": result.phi})
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
    s = load_scores(run_dir / "scores.pt")
    blob = torch.load(run_dir / "scores.pt", map_location="cpu", weights_only=True)
    return MagicResult(s.scores, s.train_indices, s.target_indices, s.measurement, s.higher_is_better,
                       blob.get("phi", torch.zeros(0)), ReplayStats(**meta["stats"]), meta.get("warnings", []),
                       meta.get("settings", {}))


def load_scores(path: str | Path) -> Scores:
    """A cnnlab scores file (.pt); see :func:`load_external_scores` for plain arrays."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read scores file {path}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != SCORES_FORMAT:
        raise ValueError(f"{path} is not a {SCORES_FORMAT} file")
    return Scores(blob["scores"], blob["train_indices"], blob["target_indices"], blob["measurement"], blob["method"],
                  bool(blob.get("higher_is_better", False)))


def load_external_scores(path: str | Path, like: Scores, method: str | None = None) -> Scores:
    """Scores from another tool: .npy / .pt array N_train × N_targets (or a cnnlab scores file),
    rows and columns in ``like``'s order (the run's train indices and MAGIC's targets)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--scores: file {path} does not exist")
    if path.suffix == ".npy":
        try:
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        except Exception as e:
            raise ValueError(f"--scores: cannot read {path} as a .npy array: {e}") from None
    elif path.suffix == ".pt":
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--scores: cannot read {path} with torch.load: {e}") from None
        if isinstance(obj, dict) and obj.get("format") == SCORES_FORMAT:
            s = load_scores(path)
            if not (torch.equal(s.train_indices, like.train_indices) and torch.equal(s.target_indices, like.target_indices)):
                raise ValueError(f"--scores: {path} covers other train/target indices than this run's MAGIC scores")
            return Scores(s.scores, like.train_indices, like.target_indices, like.measurement, method or s.method, s.higher_is_better)
        if not isinstance(obj, Tensor):
            raise ValueError(f"--scores: {path} must hold a tensor N_train × N_targets, got {type(obj).__name__}")
        arr = obj
    else:
        raise ValueError(f"--scores: {path} must be a .npy or .pt file")
    expected = (like.train_indices.numel(), like.target_indices.numel())
    if arr.ndim == 1 and expected[1] == 1:
        arr = arr[:, None]
    if tuple(arr.shape) != expected:
        raise ValueError(f"--scores: {path} has shape {tuple(arr.shape)}, expected {expected} "
                         f"(N_train rows in the run's train order, one column per MAGIC target)")
    if not arr.is_floating_point() or not bool(torch.isfinite(arr).all()):
        raise ValueError(f"--scores: {path} must hold finite floating-point numbers")
    return Scores(arr.to(torch.float64), like.train_indices, like.target_indices, like.measurement,
                  method or f"external:{path.stem}", like.higher_is_better)


def save_baseline(run_dir: str | Path, s: Scores) -> Path:
    path = Path(run_dir) / "baselines" / f"{s.method}.pt"
    _save_scores(path, s)
    return path


def load_baseline(run_dir: str | Path, method: str) -> Scores | None:
    path = Path(run_dir) / "baselines" / f"{method}.pt"
    return load_scores(path) if path.is_file() else None


def magic_scores(result: MagicResult) -> Scores:
    return Scores(result.scores, result.train_indices, result.target_indices, result.measurement, "magic",
                  result.higher_is_better)


# ---------------------------------------------------------------------- managing analysis runs
def find_runs(root: str | Path) -> list[Path]:
    """Run directories (holding config.yaml) under ``root`` (itself included), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    found = {p.parent for p in root.rglob("config.yaml") if "lds" not in p.parent.parts[len(root.parts):]}
    return sorted(found)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """A summary of a run directory: training status and accuracy, MAGIC scores, LDS results, disk use."""
    from cnnlab.attribution.lds import lds_summaries
    from cnnlab.engine.run import read_result

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    result = read_result(run_dir)
    meta = read_magic_meta(run_dir)
    info: dict[str, Any] = {
        "run": str(run_dir),
        "status": result.get("status") if result else "incomplete",
        "test_acc": (result or {}).get("final", {}).get("test_acc"),
        "epochs": (result or {}).get("epochs_completed"),
        "magic": None,
        "baselines": sorted(p.stem for p in (run_dir / "baselines").glob("*.pt")),
        "lds": lds_summaries(run_dir),
        "plots": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.png")),
        "bytes": {"total": dir_size(run_dir), "checkpoints": dir_size(run_dir / "checkpoints"),
                  "lds": dir_size(run_dir / "lds")},
    }
    if meta:
        info["magic"] = {"measurement": meta["measurement"], "targets": len(meta["target_indices"]),
                         "num_train": meta["num_train"], "checkpointing": meta["stats"]["checkpointing"],
                         "time_s": meta["settings"].get("time_s"), "vjp_path": meta["stats"]["vjp_path"],
                         "warnings": meta.get("warnings", [])}
    return info


CLEAN_WHAT = {
    "scratch": "TRAK's working files and checkpoints other than last.pt and the best (the trained weights stay)",
    "checkpoints": "all of checkpoints/ and TRAK's working files (explain, mi and resuming then have no weights)",
    "all": "the whole run directory: weights, scores, LDS results, plots",
}


def clean_run(run_dir: str | Path, what: str = "scratch") -> list[str]:
    """Free disk space (see :data:`CLEAN_WHAT`): ``scratch`` keeps the final and best weights; scores, LDS
    results and plots stay unless ``what`` is ``all``. Returns what was removed."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
    removed = []
    if what == "all":
        if run_dir.is_symlink():  # remove the link, never what it points to
            run_dir.unlink()
            return [f"{run_dir} (a link; its target was left alone)"]
        shutil.rmtree(run_dir)  # rmtree unlinks links inside, it does not follow them
        return [str(run_dir)]
    if what not in CLEAN_WHAT:
        raise ValueError(f"--what must be one of {', '.join(CLEAN_WHAT)}, got {what!r}")
    ckpts = run_dir / "checkpoints"
    targets = [run_dir / "baselines" / "trak_work"]
    if what == "checkpoints":
        targets.append(ckpts)
    elif ckpts.is_dir() and not ckpts.is_symlink():  # never glob through a link out of the run directory
        from cnnlab.engine.run import read_result

        best = ((read_result(run_dir) or {}).get("best") or {}).get("checkpoint")
        keep = {ckpts / "last.pt", *([run_dir / best] if best else [])}
        targets += [p for p in sorted(ckpts.glob("*.pt")) if p not in keep]
    for p in targets:
        rel = str(p.relative_to(run_dir))
        if p.is_symlink():  # remove the link, never what it points to
            p.unlink()
            removed.append(f"{rel} (a link; its target was left alone)")
        elif p.is_file():
            p.unlink()
            removed.append(rel)
        elif p.exists():
            ensure_contained(run_dir, p.relative_to(run_dir).parent)
            shutil.rmtree(p)
            removed.append(rel)
    return removed
