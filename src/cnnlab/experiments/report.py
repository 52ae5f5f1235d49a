"""One static HTML page per run or sweep that gathers what exists for it: no server, no CDN, files beside it.

A run's page: its config, result, metrics per epoch and every figure the run and its analyses wrote
(learning curves, explanations and resolution comparisons, MI plots, MAGIC proponents and LDS scatter,
profiles, population/ES fitness). A sweep's (or a folder of runs') page: the results table with a link to
each run's page, and the figures written at the sweep's root (factor plots, MI). Images are copied into
``assets/`` beside ``index.html`` so the folder can be zipped, mailed or served as it is.
"""

from __future__ import annotations

import html
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from cnnlab.utils.io import read_jsonl, write_text_atomic

REPORT_DIR = "report"
MAX_FIGURE_DEPTH = 3  # run/explain/compare/x.png at most: deeper folders are other runs' insides

# Captions for the figures cnnlab writes, by file name or folder; anything else is shown under its path.
CAPTIONS = {
    "curves.png": "Learning curves (loss and accuracy per epoch)",
    "accuracy.png": "Population: member accuracy",
    "fitness.png": "Evolution strategies: fitness per generation",
    "explanations.png": "Explanations per image (original, map, overlay)",
    "proponents.png": "MAGIC: strongest proponents and opponents of each target",
    "explain": "Explanations",
    "explain_compare": "Explanations compared across resolutions",
    "mi": "First-layer masking: MI drop vs generalisation gap",
    "plots": "Plots",
    "lds": "LDS: predicted vs actual subset-model outputs",
    "profiles": "Profiles",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#666} table{border-collapse:collapse;margin:.5rem 0;font-size:12.5px}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left} pre{background:#f7f7f7;padding:.7rem;overflow:auto;font-size:12px}
figure{display:inline-block;margin:.6rem 1rem .6rem 0;vertical-align:top} figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:12.5px} .wide{overflow-x:auto} .status-done,.status-completed{color:#17752a} .status-failed,.status-diverged{color:#b00020}
"""


def write_report(target: str | Path, out: str | Path | None = None, *, overrides: Sequence[str] = ()) -> Path:
    """Write the report of ``target`` (a run directory, a folder of runs, or a sweep file) and return its index.html.

    Args:
        target (path): A run directory (holds config.yaml), a folder with run directories below it, or a
            sweep YAML file (its run store is read).
        out (path, optional): Folder for index.html and assets/. Default: ``TARGET/report`` (for a sweep:
            ``<sweep root>/report``).
        overrides (list of str, optional): ``key=value`` settings of the sweep, as given to ``sweep run``.
    """
    target = Path(target)
    if target.is_file() and target.suffix in (".yaml", ".yml"):
        from cnnlab.experiments.sweep import Sweep

        sweep = Sweep.load(target, overrides=list(overrides))
        dest = Path(out) if out is not None else sweep.root / REPORT_DIR
        return _write_collection(sweep.name, [r.run_dir for r in sweep.runs()], sweep.root, dest, sweep=sweep)
    if not target.is_dir():
        raise FileNotFoundError(f"{str(target)!r} is neither a run directory, a folder of runs nor a sweep file")
    dest = Path(out) if out is not None else target / REPORT_DIR
    if (target / "config.yaml").is_file():
        return _write_run(target, dest, title=target.name)
    runs = sorted(p.parent for p in target.rglob("config.yaml") if REPORT_DIR not in p.relative_to(target).parts)
    if not runs:
        raise FileNotFoundError(f"{str(target)!r} holds no run directory (no config.yaml below it)")
    return _write_collection(target.name, runs, target, dest)


# ----------------------------------------------------------------------------- one run
def _check_dest(dest: Path) -> None:
    """Never write through a link: a linked report/ or assets/ could point out of the run directory."""
    for p in (dest, dest / "assets"):
        if p.is_symlink():
            raise ValueError(f"{p} is a symbolic link; the report is written only into a real folder (remove the link or give --out)")


def _write_run(run_dir: Path, dest: Path, *, title: str, back: str | None = None) -> Path:
    _check_dest(dest)
    assets = dest / "assets"
    parts = [_header(title, "run", run_dir, back)]
    result = _read_json(run_dir / "result.json")
    if result is not None:
        parts.append(_result_section(result))
    history = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").is_file() else []
    if history:
        parts.append(_section("Metrics per epoch", _table(*_records_table(history))))
    figures = _figures(run_dir, run_dir, assets, exclude=dest)
    if figures:
        parts.append(_section("Figures", figures))
    summaries = _analysis_summaries(run_dir)
    if summaries:
        parts.append(_section("Analyses", summaries))
    config = run_dir / "config.yaml"
    if config.is_file():
        parts.append(_section("Config", f"<pre>{html.escape(config.read_text(encoding='utf-8'))}</pre>"))
    return _write_page(dest, title, parts)


def _result_section(result: dict[str, Any]) -> str:
    rows = [("status", f'<span class="status-{html.escape(str(result.get("status")))}">{html.escape(str(result.get("status")))}</span>')]
    for key in ("epochs_completed", "steps", "num_params", "precision", "memory_format"):
        if key in result:
            rows.append((key, html.escape(_fmt(result[key]))))
    if isinstance(result.get("best"), dict):
        b = result["best"]
        rows.append(("best checkpoint", html.escape(f"{b.get('monitor')} = {_fmt(b.get('value'))} at epoch {b.get('epoch')}")))
    body = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
    finals = {k: v for k, v in result.items() if isinstance(v, dict) and k in ("final", "test", "val", "best_test", "summary")}
    for name, values in finals.items():
        scalars = [(k, v) for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
        if scalars:
            body += f"<h3>{html.escape(name)}</h3>" + _table(["metric", "value"], [[k, v] for k, v in scalars])
    return _section("Result", body)


def _analysis_summaries(run_dir: Path) -> str:
    """Small JSON summaries analyses leave in a run (explain, MI, MAGIC/LDS), shown as tables of scalars."""
    out = []
    for rel in ("explain/summary.json", "analysis/mi.json", "summary.json", "lds/summary.json"):
        data = _read_json(run_dir / rel)
        if isinstance(data, dict):
            scalars = [(k, v) for k, v in _flat(data).items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)][:40]
            if scalars:
                out.append(f"<h3>{html.escape(rel)}</h3>" + _table(["key", "value"], [list(s) for s in scalars]))
    return "".join(out)


# ----------------------------------------------------------------------------- many runs
def _write_collection(title: str, runs: Sequence[Path], root: Path, dest: Path, *, sweep: Any = None) -> Path:
    _check_dest(dest)
    assets = dest / "assets"
    parts = [_header(title, "sweep" if sweep is not None else "runs", root, None)]
    rows, links = _collection_rows(runs, root, sweep)
    header = ["run", *[k for k in rows[0] if k != "run"]] if rows else ["run"]
    table_rows = []
    for row, link in zip(rows, links):
        name = html.escape(str(row["run"]))
        cells = [f'<a href="{html.escape(link)}">{name}</a>' if link else name] + [row.get(k) for k in header[1:]]
        table_rows.append(cells)
    parts.append(_section(f"Runs ({len(rows)})", _table(header, table_rows, raw_first=True)))
    figures = _figures(root, root, assets, exclude=dest, skip=set(runs), depth=2)
    if figures:
        parts.append(_section("Figures", figures))
    for run, link in zip(runs, links):
        if link:
            _write_run(run, dest / Path(link).parent, title=f"{title}: {_rel(run, root)}", back="../" * len(Path(link).parent.parts) + "index.html")
    return _write_page(dest, title, parts)


def _collection_rows(runs: Sequence[Path], root: Path, sweep: Any) -> tuple[list[dict[str, Any]], list[str | None]]:
    if sweep is not None:
        from cnnlab.experiments.results import collect

        table = collect(sweep)
        keep = ["status", *table.factors, *[m for m in table.metrics if m.endswith("acc") or m.endswith("loss")][:8]]
        rows: list[dict[str, Any]] = [{"run": _rel(Path(r["run_dir"]), root), **{k: r.get(k) for k in keep}}
                                      for r in table.rows]
    else:
        rows = []
        for run in runs:
            result = _read_json(run / "result.json") or {}
            found = result.get("final")
            final: dict[str, Any] = found if isinstance(found, dict) else {}
            rows.append({"run": _rel(run, root), "status": result.get("status", "not finished"),
                         **{k: v for k, v in final.items() if k.endswith(("_acc", "_loss"))}})
    links = [f"runs/{_slug(r['run'])}/index.html" if (root / r["run"] / "config.yaml").is_file() else None for r in rows]
    return rows, links


# ----------------------------------------------------------------------------- figures
def _figures(folder: Path, root: Path, assets: Path, *, exclude: Path, skip: Iterable[Path] = (), depth: int = MAX_FIGURE_DEPTH) -> str:
    """Every PNG under ``folder`` (not in ``exclude`` or the ``skip`` run directories), copied into ``assets``."""
    skip = {p.resolve() for p in skip}
    exclude = exclude.resolve()
    groups: dict[str, list[str]] = {}
    for png in sorted(folder.rglob("*.png")):
        rel = png.relative_to(folder)
        resolved = png.resolve()
        if len(rel.parts) > depth or png.is_symlink() or exclude in resolved.parents:
            continue
        if any(s == resolved.parent or s in resolved.parents for s in skip):
            continue
        name = "__".join(rel.parts)
        assets.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, assets / name)
        group = rel.parts[0] if len(rel.parts) > 1 else ""
        caption = CAPTIONS.get(png.name, str(rel))
        groups.setdefault(group, []).append(
            f'<figure><img src="assets/{html.escape(name)}" alt="{html.escape(str(rel))}">'
            f"<figcaption>{html.escape(caption)} <code>{html.escape(str(rel))}</code></figcaption></figure>")
    out = []
    for group, figs in groups.items():
        if group:
            out.append(f"<h3>{html.escape(CAPTIONS.get(group, group))}</h3>")
        out.append("".join(figs))
    return "".join(out)


# ----------------------------------------------------------------------------- html helpers
def _header(title: str, kind: str, path: Path, back: str | None) -> str:
    from cnnlab import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    up = f' &middot; <a href="{html.escape(back)}">back to the overview</a>' if back else ""
    return (f"<h1>{html.escape(title)}</h1><p class=\"meta\">cnnlab {html.escape(__version__)} report of the {kind} "
            f"<code>{html.escape(str(path))}</code>, written {stamp}{up}</p>")


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{body}"


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]], raw_first: bool = False) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in rows:
        cells = [row[0] if raw_first else html.escape(_fmt(row[0]))] + [html.escape(_fmt(v)) for v in row[1:]]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f"<div class=\"wide\"><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _records_table(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    cols: list[str] = []
    for r in records:
        cols += [k for k, v in r.items() if k not in cols and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return cols, [[r.get(c, "") for c in cols] for r in records]


def _write_page(dest: Path, title: str, parts: Sequence[str]) -> Path:
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{_CSS}</style></head>"
            f"<body>{''.join(parts)}</body></html>\n")
    write_text_atomic(dest / "index.html", page)
    return dest / "index.html"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    return str(v)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _slug(rel: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in rel.replace("/", "__")) or "run"


__all__ = ["write_report"]
