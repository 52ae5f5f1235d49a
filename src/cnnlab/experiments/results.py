"""One table of a sweep's runs (factor columns + final metrics + timings) and its mean ± std over seeds.

Plain lists of dicts (the CLI needs nothing else); ``to_frame`` gives a pandas DataFrame when pandas is
installed (imported lazily).
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from cnnlab.experiments.sweep import Sweep

_SKIP_FINAL = {"epoch", "step", "lr", "train_time_s", "eval_time_s"}
_CONTEXT = ("model", "family", "dataset", "resolution")


@dataclass
class ResultTable:
    """Rows (one per run), which columns are factors and which are metrics."""

    sweep: str
    rows: list[dict[str, Any]]
    factors: list[str]
    metrics: list[str]

    @property
    def columns(self) -> list[str]:
        cols: list[str] = []
        for r in self.rows:
            cols += [k for k in r if k not in cols]
        return cols

    def done(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "done"]

    def stale(self) -> list[dict[str, Any]]:
        """Runs whose directory holds a result of another config: their metrics are never reported."""
        return [r for r in self.rows if r["status"] == "stale"]

    def stale_note(self) -> str | None:
        """One line naming the stale runs and how they differ, or None when there are none."""
        stale = self.stale()
        if not stale:
            return None
        ids = ", ".join(str(r["index"]) for r in stale[:8]) + (" ..." if len(stale) > 8 else "")
        return (f"skipped {len(stale)} stale run(s) of {self.sweep!r} (runs {ids}): their stored results come from "
                f"another config ({stale[0].get('detail', '')}); `cnnlab sweep run ... --rerun-stale` retrains them")

    def grouped(self, by: Optional[Sequence[str]] = None, metrics: Optional[Sequence[str]] = None) -> list[dict[str, Any]]:
        """Mean and sample std (ddof=1) of each metric over the runs that differ only in seed (or share ``by``)."""
        by = list(self.factors if by is None else by)
        metrics = list(self.metrics if metrics is None else metrics)
        _check_columns(self, by + metrics)
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for r in self.rows:
            groups.setdefault(tuple(_hashable(r.get(k)) for k in by), []).append(r)
        out = []
        for members in groups.values():
            done = [r for r in members if r["status"] == "done"]
            g: dict[str, Any] = {k: members[0].get(k) for k in by}
            g["n"] = len(done)
            g["n_runs"] = len(members)
            for m in metrics:
                vals = [float(r[m]) for r in done if isinstance(r.get(m), (int, float)) and not isinstance(r.get(m), bool)]
                mean, std = mean_std(vals)
                g[f"{m}_mean"], g[f"{m}_std"] = mean, std
            out.append(g)
        return out

    def to_frame(self, grouped: bool = False):
        """A pandas DataFrame of the rows (or of ``grouped()``)."""
        pd = _pandas()
        return pd.DataFrame(self.grouped() if grouped else self.rows)

    def write_csv(self, path: str | os.PathLike, grouped: bool = False) -> None:
        from cnnlab.utils.io import atomic_path

        rows = self.grouped() if grouped else self.rows
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        with atomic_path(path) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=cols)
                w.writeheader()
                for r in rows:
                    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (ddof=1); None where undefined."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def collect(sweep: Sweep) -> ResultTable:
    """Read every run's state and result.json into one table."""
    factor_cols = [f.name for f in sweep.factors]
    metric_cols: list[str] = []
    rows = []
    for run, st in sweep.states():
        row: dict[str, Any] = {"index": run.index, "name": run.name, "seed": run.seed, "status": st.status}
        if st.status == "stale":
            row["detail"] = st.detail.replace("trained under another config: ", "")
        row.update(run.labels)
        for k in _CONTEXT:
            row.setdefault(k, run.fields.get(k))
        metrics = _metrics(st.result) if st.result is not None else {}
        for k, v in metrics.items():
            if k not in row:
                row[k] = v
                if k not in metric_cols:
                    metric_cols.append(k)
        row["run_dir"] = str(run.run_dir)
        rows.append(row)
    return ResultTable(sweep.name, rows, factor_cols, metric_cols)


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in (result.get("final") or {}).items():
        if k not in _SKIP_FINAL and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    if "best" in result:
        out[f"best_{result['best']['monitor']}"] = result["best"]["value"]
        out["best_epoch"] = result["best"]["epoch"]
        for k, v in (result["best"].get("test") or {}).items():  # the test metrics of the model chosen on validation
            out[f"best_{k}"] = v
    out["epochs"] = result.get("epochs_completed")
    out["stopped_early"] = result.get("stopped_early")
    for k, v in (result.get("timings") or {}).items():
        out[k] = v  # total_s, train_s, images_per_s (whole run; replaces the last epoch's rate)
    out["num_params"] = result.get("num_params")
    return out


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _check_columns(table: ResultTable, names: Iterable[str]) -> None:
    cols = table.columns
    for n in names:
        if n not in cols:
            raise KeyError(f"no column {n!r} in the results of {table.sweep!r}; available: {', '.join(cols)}")


def _pandas():
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("results as a DataFrame need pandas (pip install pandas, or the extra cnnlab[pandas]); "
                          "the plain table is ResultTable.rows, and `cnnlab results --csv` needs no pandas") from None
    return pd


def results_frame(sweep: Sweep | str | os.PathLike, grouped: bool = False, **load_kwargs: Any):
    """A pandas DataFrame of a sweep's results (``grouped=True``: mean/std over seeds)."""
    s = sweep if isinstance(sweep, Sweep) else Sweep.load(sweep, **load_kwargs)
    return collect(s).to_frame(grouped=grouped)


def format_mean_std(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    if mean is None:
        return "-"
    return f"{mean:.{digits}g}" if std is None else f"{mean:.{digits}g} ± {std:.2g}"
