"""``cnnlab explain RUN_DIR`` (maps, grid PNG, faithfulness) and ``cnnlab explain compare RUN_DIR...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import click
import typer
from typer.core import TyperGroup

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


class _DefaultToMaps(TyperGroup):
    """``cnnlab explain RUN_DIR ...`` means ``cnnlab explain maps RUN_DIR ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["maps", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultToMaps, no_args_is_help=True,
                  help="Explain a trained run: Grad-CAM, Integrated Gradients, saliency, SmoothGrad. "
                       "`cnnlab explain RUN_DIR` = `cnnlab explain maps RUN_DIR`.")


def parse_indices(text: str, size: int | None = None) -> list[int]:
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7]; with ``size``, ranges are checked against [0, size) before expanding."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                if size is not None and (lo < 0 or hi >= size):
                    raise IndexError(f"--images: {part!r} is outside the split's indices [0, {size})")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"--images: {part!r} is not an index or a range like 5-9") from None
    if not out:
        raise ValueError("--images: no index given")
    return out


def parse_names(text: str, option: str) -> list[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if not names:
        raise ValueError(f"{option}: no name given")
    return names


def parse_method_options(items: list[str] | None) -> dict[str, dict[str, Any]]:
    """``["ig.n_steps=64", "gradcam.relu=false"]`` -> ``{"ig": {"n_steps": 64}, "gradcam": {"relu": False}}``."""
    from cnnlab.utils.io import load_yaml_text

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        method, dot, opt = key.partition(".")
        if not sep or not dot or not method or not opt:
            raise ValueError(f"--set {item!r} must look like method.option=value (e.g. ig.n_steps=64)")
        out.setdefault(method, {})[opt] = load_yaml_text(raw) if raw else ""
    return out


def _target(text: str) -> str | int:
    if text in ("pred", "true"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--target must be pred, true or a class index, got {text!r}") from None


def _check_methods(methods: list[str], options: dict[str, dict[str, Any]]) -> None:
    from cnnlab.explain.methods import method_class, method_options

    for m in methods:
        method_class(m)
    for m, opts in options.items():
        if m not in methods:
            raise ValueError(f"--set given for method {m!r}, which is not in --methods ({', '.join(methods)})")
        bad = [k for k in opts if k not in method_options(m)]
        if bad:
            raise ValueError(f"--set: method {m!r} has no option(s) {', '.join(bad)}; accepted: {', '.join(method_options(m))}")


def _metric_options(samples: int, std: float, radius: float) -> dict[str, Any]:
    return {"n_perturb_samples": samples, "infidelity_std": std, "sensitivity_radius": radius}


def _beside(folder: Path, what: str) -> Path:
    """``FOLDER-what`` next to ``folder``: an analysis of several runs is kept out of the folder that holds them."""
    return folder.parent / f"{folder.name}-{what}"


def _err(e: BaseException) -> str:
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


@app.command("maps")
def maps_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory."),
    images: Optional[str] = typer.Option(None, "--images", help="Image indices, e.g. '0,3,5-9' (default: first 8)."),
    methods: str = typer.Option("gradcam,ig,saliency,smoothgrad", "--methods", help="Comma-separated method names."),
    target: str = typer.Option("pred", "--target", help="pred | true | a class index."),
    split: str = typer.Option("test", "--split", help="test | train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/explain)."),
    opt: Optional[List[str]] = typer.Option(None, "--set", help="Method option method.key=value, e.g. --set ig.n_steps=64 (repeatable)."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="captum infidelity and max-sensitivity."),
    perturb_samples: int = typer.Option(10, "--perturb-samples", min=1, help="Perturbations per image for the metrics."),
    infidelity_std: float = typer.Option(0.1, "--infidelity-std", help="Std of infidelity's Gaussian perturbations."),
    sensitivity_radius: float = typer.Option(0.02, "--sensitivity-radius", help="Radius of max-sensitivity's perturbations."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per attribution call."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Explain images of one run: an image grid (original, map, overlay per method) plus faithfulness metrics."""
    from cnnlab.explain.pipeline import explain_run
    from cnnlab.explain.runs import open_run

    try:
        names = parse_names(methods, "--methods")
        options = parse_method_options(opt)
        _check_methods(names, options)
        tgt = _target(target)
        if split not in ("test", "train"):
            raise ValueError(f"--split must be test or train, got {split!r}")
        run = open_run(run_dir, device=device)
        idx = parse_indices(images, len(run.split(split))) if images else None
        summary = explain_run(run, out or Path(run_dir) / "explain", indices=idx, split=split, methods=names,
                              options=options, target=tgt, metrics=metrics, batch_size=batch_size,
                              metric_options=_metric_options(perturb_samples, infidelity_std, sensitivity_radius))
    except (FileNotFoundError, ValueError, KeyError, IndexError) as e:
        fail(_err(e))
    if json_out:
        print_json(summary)
        return
    rows = [(m, d.get("infidelity_mean", "-"), d.get("infidelity_std", "-"), d.get("sensitivity_max_mean", "-"),
             d.get("sensitivity_max_std", "-")) for m, d in summary["methods"].items()]
    print_table(f"{summary['run']}: {len(summary['indices'])} {split} images at {summary['resolution']}px, target={target}",
                ["method", "infidelity", "± std", "max-sensitivity", "± std"], rows)
    console.print(f"grid: {summary['files']['grid']}  (settings and per-image targets: summary.json beside it)")


@app.command("compare")
def compare_cmd(
    run_dirs: List[Path] = typer.Argument(..., help="Run directories (one architecture at several resolutions), "
                                                    "or a folder holding them."),
    images: Optional[str] = typer.Option(None, "--images", help="Test image indices (default: first 8)."),
    methods: str = typer.Option("gradcam,ig,saliency,smoothgrad", "--methods", help="Comma-separated method names."),
    target: str = typer.Option("true", "--target", help="true (same class in every run) | pred | a class index."),
    grid: Optional[int] = typer.Option(None, "--grid", min=1, help="Common grid size (default: the smallest resolution)."),
    topk: float = typer.Option(0.1, "--topk", help="Fraction of cells in the top-k IoU."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: FOLDER-explain_compare beside the runs' common folder, not inside it)."),
    opt: Optional[List[str]] = typer.Option(None, "--set", help="Method option method.key=value, e.g. --set ig.n_steps=64 (repeatable)."),
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="captum infidelity and max-sensitivity per run."),
    perturb_samples: int = typer.Option(10, "--perturb-samples", min=1, help="Perturbations per image for the metrics."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per attribution call."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: each run's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare maps of the same test images across runs at different resolutions (Spearman, top-k IoU)."""
    import os

    from cnnlab.explain.pipeline import compare_runs
    from cnnlab.explain.runs import find_run_dirs, open_run

    try:
        names = parse_names(methods, "--methods")
        options = parse_method_options(opt)
        _check_methods(names, options)
        tgt = _target(target)
        if not 0 < topk <= 1:
            raise ValueError(f"--topk must be in (0, 1], got {topk}")
        dirs = find_run_dirs(run_dirs)
        if len(dirs) < 2:
            raise ValueError(f"explain compare needs at least two runs, found {len(dirs)}: {', '.join(map(str, dirs))}")
        runs = [open_run(d, device=device) for d in dirs]
        idx = parse_indices(images, min(len(r.split("test")) for r in runs)) if images else None
        dest = out or _beside(Path(os.path.commonpath([str(d.resolve()) for d in dirs])), "explain_compare")
        report = compare_runs(runs, dest, indices=idx, methods=names, options=options, target=tgt, grid=grid, topk=topk,
                              metrics=metrics, batch_size=batch_size,
                              metric_options={"n_perturb_samples": perturb_samples})
    except (FileNotFoundError, ValueError, KeyError, IndexError) as e:
        fail(_err(e))
    if json_out:
        print_json(report)
        return
    print_table(f"maps across resolutions on a common {report['grid']}×{report['grid']} grid "
                f"({len(report['indices'])} images, target={target})",
                ["method", "a", "b", "Spearman |attr|", f"top-{topk * 100:g}% IoU"],
                [(r["method"], r["a"], r["b"], r["spearman"], r["iou"]) for r in report["rows"]])
    if metrics:
        print_table("faithfulness per run (lower is better)", ["run", "method", "infidelity", "max-sensitivity"],
                    [(label, m, d.get("infidelity_mean"), d.get("sensitivity_max_mean"))
                     for label, r in report["runs"].items() for m, d in r["methods"].items()])
    console.print(f"written to {Path(report['files'][names[0]]).parent}")


@app.command("methods")
def methods_cmd(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the attribution methods and their options."""
    import inspect

    from cnnlab.explain.methods import list_methods, method_class, method_options

    rows = []
    for name in list_methods():
        cls = method_class(name)
        params = inspect.signature(cls.__init__).parameters
        opts = {k: (None if params[k].default is inspect.Parameter.empty else params[k].default)
                for k in method_options(name)}
        rows.append({"name": name, "label": cls.label, "options": opts,
                     "description": (cls.__doc__ or "").strip().splitlines()[0]})
    if json_out:
        print_json(rows)
    else:
        print_table("attribution methods", ["name", "options (defaults)", "description"],
                    [(r["name"], ", ".join(f"{k}={v}" for k, v in r["options"].items()), r["description"]) for r in rows])
