"""``cnnlab explain RUN_DIR`` (maps, grid PNG, faithfulness) and ``cnnlab explain compare RUN_DIR...``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import typer
from typer.core import TyperGroup

from cnnlab.cli.common import fail
from cnnlab.utils.console import console, print_json, print_table


class _DefaultToMaps(TyperGroup):
    """``cnnlab explain RUN_DIR ...`` means ``cnnlab explain maps RUN_DIR ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # ctx: typer's (vendored) click Context
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["maps", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_DefaultToMaps, no_args_is_help=True,
                  help="Explain a trained run: Grad-CAM, Integrated Gradients, saliency, SmoothGrad. "
                       "`cnnlab explain RUN_DIR` = `cnnlab explain maps RUN_DIR`.")


MethodsOpt = typer.Option("gradcam,ig,saliency,smoothgrad", "--methods",  # = explain.pipeline.DEFAULT_METHODS
                         help="Comma-separated method names (`cnnlab explain methods` lists them).")
MethodSetOpt = typer.Option(None, "--set", help="Method option method.key=value, e.g. --set ig.n_steps=64 (repeatable).")
PerturbOpt = typer.Option(10, "--perturb-samples", min=1, help="Perturbations per image for the metrics.")
BatchOpt = typer.Option(16, "--batch-size", min=1, help="Images per attribution call.")


def parse_indices(text: str, size: int | None = None) -> list[int]:
    """``"0,3,5-7"`` -> [0, 3, 5, 6, 7] (sorted, duplicates dropped); with ``size``, every index must lie in
    [0, size), checked before a range is expanded. Errors name ``--images``."""
    from cnnlab.utils.indices import parse_index_list

    return parse_index_list(text, size, what="--images")


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


def _method_request(methods: str, opt: list[str] | None, target: str) -> tuple[list[str], dict[str, dict[str, Any]], str | int]:
    """(method names, per-method options, target) from --methods, --set and --target, checked."""
    names = parse_names(methods, "--methods")
    options = parse_method_options(opt)
    _check_methods(names, options)
    return names, options, _target(target)


@contextmanager
def _progress(what: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` hook: a bar on a terminal, periodic plain lines on stderr otherwise (none with --json)."""
    from cnnlab.utils.progress import ProgressLog

    with ProgressLog(what, mode="off" if quiet else "auto") as log:
        yield log.callback()


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
    images: Optional[str] = typer.Option(None, "--images", help="Image indices, e.g. '0,3,5-9' (sorted, each once; default: first 8)."),
    methods: str = MethodsOpt,
    target: str = typer.Option("pred", "--target", help="pred | true | a class index."),
    split: str = typer.Option("test", "--split", help="test | train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN_DIR/explain)."),
    opt: Optional[List[str]] = MethodSetOpt,
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="captum infidelity and max-sensitivity."),
    perturb_samples: int = PerturbOpt,
    infidelity_std: float = typer.Option(0.1, "--infidelity-std", help="Std of infidelity's Gaussian perturbations."),
    sensitivity_radius: float = typer.Option(0.02, "--sensitivity-radius", help="Radius of max-sensitivity's perturbations."),
    batch_size: int = BatchOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: the run's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Explain images of one run: an image grid (original, map, overlay per method) plus faithfulness metrics."""
    from cnnlab.explain.pipeline import explain_run
    from cnnlab.engine.analysis_run import open_run

    try:
        names, options, tgt = _method_request(methods, opt, target)
        if split not in ("test", "train"):
            raise ValueError(f"--split must be test or train, got {split!r}")
        run = open_run(run_dir, device=device)
        idx = parse_indices(images, len(run.split(split))) if images else None
        with _progress("explain: images x methods", json_out) as progress:
            summary = explain_run(run, out or Path(run_dir) / "explain", indices=idx, split=split, methods=names,
                                  options=options, target=tgt, metrics=metrics, batch_size=batch_size,
                                  metric_options=_metric_options(perturb_samples, infidelity_std, sensitivity_radius),
                                  progress=progress)
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
    images: Optional[str] = typer.Option(None, "--images", help="Test image indices, e.g. '0,3,5-9' (sorted, each once; default: first 8)."),
    methods: str = MethodsOpt,
    target: str = typer.Option("true", "--target", help="true (same class in every run) | pred | a class index."),
    grid: Optional[int] = typer.Option(None, "--grid", min=1, help="Common grid size (default: the smallest resolution)."),
    topk: float = typer.Option(0.1, "--topk", help="Fraction of cells in the top-k IoU."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: FOLDER-explain_compare beside the runs' common folder, not inside it)."),
    opt: Optional[List[str]] = MethodSetOpt,
    metrics: bool = typer.Option(True, "--metrics/--no-metrics", help="captum infidelity and max-sensitivity per run."),
    perturb_samples: int = PerturbOpt,
    batch_size: int = BatchOpt,
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda | auto (default: each run's)."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Compare maps of the same test images across runs at different resolutions (Spearman, top-k IoU)."""
    import os

    from cnnlab.explain.pipeline import compare_runs
    from cnnlab.engine.analysis_run import find_run_dirs, open_run

    try:
        names, options, tgt = _method_request(methods, opt, target)
        if not 0 < topk <= 1:
            raise ValueError(f"--topk must be in (0, 1], got {topk}")
        dirs = find_run_dirs(run_dirs)
        if len(dirs) < 2:
            raise ValueError(f"explain compare needs at least two runs, found {len(dirs)}: {', '.join(map(str, dirs))}")
        runs = [open_run(d, device=device) for d in dirs]
        idx = parse_indices(images, min(len(r.split("test")) for r in runs)) if images else None
        dest = out or _beside(Path(os.path.commonpath([str(d.resolve()) for d in dirs])), "explain_compare")
        with _progress("explain compare: images x methods x runs", json_out) as progress:
            report = compare_runs(runs, dest, indices=idx, methods=names, options=options, target=tgt, grid=grid,
                                  topk=topk, metrics=metrics, batch_size=batch_size,
                                  metric_options={"n_perturb_samples": perturb_samples}, progress=progress)
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

    rows: list[dict[str, Any]] = []
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
