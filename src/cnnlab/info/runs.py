"""Masking-MI over run directories: a resumable per-run result, and the table + plots across runs.

``compute_run_mi(run_dir)`` stores ``RUN_DIR/analysis/mi.json`` (atomic) and returns it; a later call
returns the stored result unless ``force`` is set or the stored settings differ from the requested
ones. ``summarize(entries, factors, out_dir)`` turns several runs' results plus their config factors
into one table (CSV, JSON) and one plot of MI drop vs generalisation gap per factor.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cnnlab.info.analysis import MIConfig, masks_per_split, mi_report
from cnnlab.utils.io import write_json_atomic, write_text_atomic

RESULT_FILE = Path("analysis") / "mi.json"


def run_units(cfg: MIConfig) -> int:
    """Masked evaluations of one run (what ``compute_run_mi``'s progress counts to)."""
    return len(cfg.splits) * masks_per_split(cfg)


def result_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RESULT_FILE


def load_run_mi(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The stored masking-MI result of a run, or None."""
    p = result_path(run_dir)
    if not p.is_file():
        return None
    return json.loads(p.read_text(encoding="utf-8"))


def compute_run_mi(run_dir: str | os.PathLike, cfg: MIConfig | None = None, *, force: bool = False,
                   device: str | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Masking-MI of a finished run, stored in ``RUN_DIR/analysis/mi.json``; cached unless ``force``.

    A stored result computed with different settings is recomputed (and replaced). ``progress(n)`` counts
    masked evaluations (``run_units(cfg)`` per run; a stored result counts them all at once).
    """
    from cnnlab.engine.analysis_run import open_run

    cfg = cfg or MIConfig()
    stored = None if force else load_run_mi(run_dir)
    if stored is not None and stored.get("config") == cfg.to_dict():
        stored["cached"] = True
        if progress is not None:
            progress(run_units(cfg))
        return stored
    run = open_run(run_dir, device=device)
    report = mi_report(run, cfg, progress)
    report["run"] = run.name
    write_json_atomic(result_path(run_dir), report)
    report["cached"] = False
    return report


# --- across runs ----------------------------------------------------------------------------------------

def summary_rows(entries: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (run, split, keep) from ``[(run label, factors, mi report)]``; factors become columns."""
    rows = []
    for label, factors, rep in entries:
        acc = rep.get("accuracy", {})
        for split, res in rep["splits"].items():
            for k in res["keeps"]:
                row: dict[str, Any] = {
                    "run": label, "split": split, "keep": k["keep"],
                    "mi_unmasked": k["mi_unmasked"]["value"], "mi_masked": k["mi_masked"]["value"],
                    "mi_diff": k["mi_diff"]["value"], "mi_diff_low": k["mi_diff"]["ci_low"],
                    "mi_diff_high": k["mi_diff"]["ci_high"],
                    "acc_unmasked": k["acc_unmasked"]["value"], "acc_masked": k["acc_masked"]["value"],
                    "acc_drop": k["acc_drop"]["value"],
                    "train_acc": acc.get("train_clean"), "test_acc": acc.get("test"), "gen_gap": acc.get("gen_gap"),
                    "n_examples": res["n_examples"],
                }
                row.update({f: _scalar(v) for f, v in factors.items()})
                rows.append(row)
    return rows


def _scalar(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v)


def rows_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    cols: list[str] = []
    for r in rows:
        cols.extend(c for c in r if c not in cols)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def plot_mi_vs_gap(rows: Sequence[Mapping[str, Any]], factor: str, path: str | os.PathLike) -> None:
    """MI drop (with bootstrap interval) vs generalisation gap, coloured by ``factor``; one panel per
    (split, keep fraction). Numeric factors with many values get a colour bar, others a legend."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    from cnnlab.utils.plotting import pyplot, save_figure

    plt = pyplot()
    rows = [r for r in rows if r.get("gen_gap") is not None]
    if not rows:
        raise ValueError("no rows with a generalisation gap (the analysis needs both the train and the test split)")
    splits = sorted({r["split"] for r in rows}, key=lambda s: (s != "train", s))
    keeps = sorted({r["keep"] for r in rows})
    values: list[Any] = [r.get(factor) for r in rows]
    distinct = sorted({repr(v) for v in values})
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(distinct) > 6
    nums = [float(v) for v in values] if numeric else []
    fig, axes = plt.subplots(len(splits), len(keeps), figsize=(4.2 * len(keeps) + 1.5, 3.6 * len(splits) + 0.6),
                             squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis" if numeric else "tab10")
    norm = Normalize(min(nums), max(nums)) if numeric else None
    order = {d: i for i, d in enumerate(distinct)}
    for i, split in enumerate(splits):
        for j, keep in enumerate(keeps):
            ax = axes[i, j]
            sel = [r for r in rows if r["split"] == split and r["keep"] == keep]
            for r in sel:
                v: Any = r.get(factor)
                color = cmap(norm(float(v))) if norm is not None else cmap(order[repr(v)] % 10)
                y, lo, hi = r["mi_diff"], r["mi_diff_low"], r["mi_diff_high"]
                ax.errorbar(r["gen_gap"], y, yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="o", color=color,
                            ecolor=color, alpha=0.85, capsize=2, markersize=5)
            ax.axhline(0.0, color="0.7", lw=0.8)
            ax.set_title(f"{split} split, keep {keep:g}", fontsize=10)
            ax.set_xlabel("generalisation gap (clean train acc - test acc)")
            ax.set_ylabel("MI drop (bits)")
    if numeric:
        sm = ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=axes, label=factor, shrink=0.8)
    else:
        handles = [Line2D([], [], marker="o", ls="", color=cmap(order[d] % 10), label=_short(d))
                   for d in distinct]
        fig.legend(handles=handles, title=factor, loc="outside right upper", fontsize=8)
    fig.suptitle(f"MI(Y;Ŷ) drop under first-layer masking vs generalisation gap, by {factor}\n"
                 "MI drop = MI unmasked - mean MI masked (Miller-Madow, bits; bars: paired bootstrap CI)", fontsize=10)
    save_figure(fig, path)


def _short(r: str, n: int = 28) -> str:
    s = r.strip("'")
    return s if len(s) <= n else s[:n - 1] + "…"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def summarize(entries: Sequence[tuple[str, Mapping[str, Any], Mapping[str, Any]]], factors: Sequence[str],
              out_dir: str | os.PathLike) -> dict[str, Any]:
    """Write ``mi_summary.csv``, ``mi_summary.json`` and ``mi_diff_vs_gen_gap_{factor}.png`` per factor."""
    out = Path(out_dir)
    rows = summary_rows(entries)
    write_text_atomic(out / "mi_summary.csv", rows_to_csv(rows))
    write_json_atomic(out / "mi_summary.json", rows)
    plots: dict[str, str] = {}
    have_gap = any(r.get("gen_gap") is not None and not (isinstance(r["gen_gap"], float) and math.isnan(r["gen_gap"]))
                   for r in rows)
    runs = {r["run"] for r in rows}
    note = None
    if not have_gap:
        note = "no generalisation gap (the analysis needs both the train and the test split): no scatter drawn"
    elif len(runs) < 2:
        note = f"{len(runs)} run: a scatter against the generalisation gap needs two or more runs, so none is drawn (see the table)"
    else:
        for f in factors:
            p = out / f"mi_diff_vs_gen_gap_{_safe(f)}.png"
            plot_mi_vs_gap(rows, f, p)
            plots[f] = str(p)
    return {"rows": rows, "factors": list(factors), "plot_note": note,
            "files": {"csv": str(out / "mi_summary.csv"), "json": str(out / "mi_summary.json"), "plots": plots}}


__all__ = ["RESULT_FILE", "compute_run_mi", "load_run_mi", "plot_mi_vs_gap", "result_path", "rows_to_csv", "run_units",
           "summarize", "summary_rows"]
