"""Managing analysis run directories: list them, summarise one (training, MAGIC, LDS, disk use), free disk space."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from cnnlab.attribution.lds import lds_summaries
from cnnlab.attribution.magic_files import read_magic_meta
from cnnlab.engine.run import read_result
from cnnlab.utils.io import ensure_contained


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
