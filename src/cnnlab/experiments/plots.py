"""PNG plots of a sweep's results: metric vs a key (mean ± std over seeds, one line per hue), and the
two ready-made seed-study plots: accuracy vs resolution per model family, and metric vs each ablation factor.

Every plot function returns the numbers it drew, so they can be checked without looking at pixels.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from cnnlab.experiments.results import ResultTable, _check_columns, _hashable, mean_std
from cnnlab.utils.plotting import pyplot, save_figure


def _order(values: list[Any]) -> list[Any]:
    """Numbers ascending; anything else in first-seen order (sweep order keeps e.g. wd before no_wd)."""
    uniq: list[Any] = []
    for v in values:
        if _hashable(v) not in [_hashable(u) for u in uniq]:
            uniq.append(v)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in uniq):
        return sorted(uniq)
    return uniq


def aggregate(table: ResultTable, x: str, y: str, hue: Optional[str] = None) -> dict[Any, list[dict[str, Any]]]:
    """``{hue value: [{x, mean, std, n, values}, ...]}`` over finished runs (hue None: one series)."""
    _check_columns(table, [x, y] + ([hue] if hue else []))
    rows = [r for r in table.done() if isinstance(r.get(y), (int, float))]
    out: dict[Any, list[dict[str, Any]]] = {}
    for h in _order([r.get(hue) for r in rows] if hue else [None]):
        series = [r for r in rows if hue is None or _hashable(r.get(hue)) == _hashable(h)]
        points = []
        for xv in _order([r.get(x) for r in series]):
            vals = [float(r[y]) for r in series if _hashable(r.get(x)) == _hashable(xv)]
            mean, std = mean_std(vals)
            points.append({"x": xv, "mean": mean, "std": std, "n": len(vals), "values": vals})
        out[h] = points
    return out


def _draw(ax, series: dict[Any, list[dict[str, Any]]], x: str, y: str, hue: Optional[str]) -> None:
    all_x = _order([p["x"] for pts in series.values() for p in pts])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in all_x)
    pos = {(_hashable(v)): (v if numeric else i) for i, v in enumerate(all_x)}
    for h, pts in series.items():
        xs = [pos[_hashable(p["x"])] for p in pts]
        ax.errorbar(xs, [p["mean"] for p in pts], yerr=[p["std"] or 0.0 for p in pts], marker="o", capsize=3,
                    label=None if hue is None else f"{h}")
    if not numeric:
        ax.set_xticks(range(len(all_x)))
        ax.set_xticklabels([str(v) for v in all_x])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    if hue is not None and series:
        ax.legend(title=hue, fontsize=8)


def plot_metric(table: ResultTable, x: str, y: str, out: str | os.PathLike, hue: Optional[str] = None) -> dict[Any, list[dict[str, Any]]]:
    """``y`` against ``x`` (mean ± std over seeds), one line per ``hue`` value; writes a PNG to ``out``."""
    series = aggregate(table, x, y, hue)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    _draw(ax, series, x, y, hue)
    ax.set_title(f"{table.sweep}: {y} vs {x}" + (f" by {hue}" if hue else ""))
    _save(fig, out)
    return series


def plot_resolution(table: ResultTable, out: str | os.PathLike, metric: str = "test_acc",
                    x: str = "resolution", by: str = "family", hue: str = "model") -> dict[Any, dict[Any, list[dict[str, Any]]]]:
    """Resolution study: ``metric`` vs resolution, one panel per model family, one line per model."""
    _check_columns(table, [x, by, hue, metric])
    families = _order([r.get(by) for r in table.done()])
    fig, panels = _panels(len(families), (5.0, 3.8))
    data = {}
    for ax, fam in zip(panels, families):
        sub = ResultTable(table.sweep, [r for r in table.rows if _hashable(r.get(by)) == _hashable(fam)], table.factors, table.metrics)
        series = aggregate(sub, x, metric, hue)
        _draw(ax, series, x, metric, hue)
        ax.set_title(f"{by} {fam}")
        data[fam] = series
    fig.suptitle(f"{table.sweep}: {metric} vs {x}")
    _save(fig, out)
    return data


def plot_ablation(table: ResultTable, out: str | os.PathLike, metric: str = "test_acc",
                  factors: Optional[list[str]] = None) -> dict[str, list[dict[str, Any]]]:
    """Ablation study: ``metric`` per level of each factor (mean ± std over all other factors and seeds),
    one panel per factor, with the individual runs as dots."""
    factors = list(table.factors if factors is None else factors)
    if not factors:
        raise ValueError(f"the sweep {table.sweep!r} has no factors to plot against")
    _check_columns(table, factors + [metric])
    fig, panels = _panels(len(factors), (4.2, 3.6))
    data = {}
    for ax, f in zip(panels, factors):
        series = aggregate(table, f, metric)[None]
        xs = range(len(series))
        ax.bar(xs, [p["mean"] for p in series], yerr=[p["std"] or 0.0 for p in series], capsize=4, alpha=0.6)
        for k, p in enumerate(series):
            ax.scatter([k] * len(p["values"]), p["values"], s=8, color="black", zorder=3)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([str(p["x"]) for p in series])
        ax.set_xlabel(f)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3, axis="y")
        data[f] = series
    fig.suptitle(f"{table.sweep}: {metric} per ablation factor")
    _save(fig, out)
    return data


def _panels(n: int, size: tuple[float, float], max_cols: int = 3) -> tuple[Any, list[Any]]:
    """A figure of ``n`` panels (at least one) in rows of ``max_cols``, each ``size`` inches; the unused cells of the
    last row are switched off. Returns (figure, the ``n`` axes in reading order)."""
    cols = min(max_cols, max(1, n))
    rows = max(1, (n + cols - 1) // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _save(fig: Any, out: str | os.PathLike) -> None:
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
