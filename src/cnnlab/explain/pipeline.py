"""End-to-end explanation jobs on trained runs: maps + grid PNG + faithfulness, and the resolution comparison."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from cnnlab.explain.compare import compare_maps, comparison_rows, plot_comparison, run_labels
from cnnlab.explain.core import (Explanations, Progress, build_methods, explain, faithfulness_table, predict_logits,
                                 resolve_targets)
from cnnlab.explain.methods import AttributionMethod
from cnnlab.explain.render import save_explanation_grid, save_resolution_grid
from cnnlab.engine.analysis_run import AnalysisRun
from cnnlab.utils.io import save_torch_atomic, write_json_atomic

DEFAULT_METHODS = ("gradcam", "ig", "saliency", "smoothgrad")
DEFAULT_IMAGES = 8


def _indices(run: AnalysisRun, split: str, indices: Sequence[int] | None) -> list[int]:
    n = len(run.split(split))
    idx = list(range(min(DEFAULT_IMAGES, n))) if indices is None else [int(i) for i in indices]
    if not idx:
        raise ValueError("no images selected")
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise ValueError(f"image index {bad} out of range: the {split} split has {n} images (0..{n - 1})")
    return idx


def _counter(progress: Callable[[int, int], None] | None, total: int) -> Progress:
    """Adapt a ``progress(done, total)`` hook to the per-chunk ``progress(n)`` of explain/faithfulness_table."""
    if progress is None:
        return None
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        progress(done[0], total)

    return step


@dataclass
class _Explained:
    """One run's explanations of the selected images, with its faithfulness table (empty without metrics)."""

    x: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    methods: dict[str, AttributionMethod]
    expl: Explanations
    faith: dict[str, dict[str, float]]

    def method_summary(self) -> dict[str, dict[str, Any]]:
        return {k: {"settings": self.expl.settings[k], **self.faith.get(k, {})} for k in self.methods}


def _explain_images(run: AnalysisRun, split: str, idx: list[int], methods: Sequence[str],
                    options: Mapping[str, Mapping[str, Any]] | None, target: str | int, metrics: bool,
                    metric_options: Mapping[str, Any] | None, batch_size: int, step: Progress) -> _Explained:
    x, y = run.inputs(split, idx)
    targets = resolve_targets(run.model, x, y, target)
    ms = build_methods(run.model, list(methods), options)
    expl = explain(run.model, x, targets, ms, batch_size=batch_size, progress=step)
    faith = (faithfulness_table(run.model, ms, x, targets, expl, batch_size=batch_size, progress=step,
                                **dict(metric_options or {})) if metrics else {})
    return _Explained(x, y, targets, ms, expl, faith)


def _units(n_images: int, methods: Sequence[str], metrics: bool) -> int:
    """Images x methods, twice with metrics: what one run's progress counts up to."""
    return n_images * len(methods) * (2 if metrics else 1)


def explain_run(
    run: AnalysisRun,
    out_dir: str | os.PathLike,
    *,
    indices: Sequence[int] | None = None,
    split: str = "test",
    methods: Sequence[str] = DEFAULT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | int = "pred",
    metrics: bool = True,
    metric_options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Explain images of one run with each method; write ``explanations.png``, ``attributions.pt`` and
    ``summary.json`` (settings, targets, mean infidelity / max-sensitivity per method) to ``out_dir``.

    ``progress(done, total)`` is called as chunks of images finish (e.g. ``ProgressLog.callback()``)."""
    out = Path(out_dir)
    idx = _indices(run, split, indices)
    step = _counter(progress, _units(len(idx), methods, metrics))
    e = _explain_images(run, split, idx, methods, options, target, metrics, metric_options, batch_size, step)
    y, targets, ms, expl = e.labels, e.targets, e.methods, e.expl
    preds = predict_logits(run.model, e.x).argmax(dim=1)
    grid_path = out / "explanations.png"
    save_explanation_grid(
        grid_path, run.split(split).images[torch.as_tensor(idx)], expl.maps, targets=targets.cpu(), labels=y.cpu(),
        preds=preds.cpu(), indices=idx, class_names=run.dataset.classes, method_labels={k: m.label for k, m in ms.items()},
        signed={k: m.signed for k, m in ms.items()},
        title=f"{run.name}: {run.dataset.name} {split} split at {run.resolution}px, target = {target}")
    save_torch_atomic(out / "attributions.pt", {
        "indices": idx, "split": split, "targets": expl.targets, "labels": y.cpu(), "preds": preds.cpu(),
        "attributions": expl.attributions, "settings": expl.settings})
    summary = {
        "run": run.name, "path": str(run.path) if run.path else None, "dataset": run.dataset.name, "split": split,
        "resolution": run.resolution, "indices": idx, "target_mode": target,
        "targets": [int(t) for t in targets], "labels": [int(t) for t in y], "preds": [int(t) for t in preds],
        "methods": e.method_summary(),
        "metrics": ({"infidelity": "captum.metrics.infidelity, Gaussian perturbations, normalize=True (lower is better)",
                     "sensitivity_max": "captum.metrics.sensitivity_max (lower is better)",
                     **dict(metric_options or {})} if metrics else None),
        "files": {"grid": str(grid_path), "attributions": str(out / "attributions.pt")},
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def compare_runs(
    runs: Sequence[AnalysisRun],
    out_dir: str | os.PathLike,
    *,
    indices: Sequence[int] | None = None,
    split: str = "test",
    methods: Sequence[str] = DEFAULT_METHODS,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    target: str | int = "true",
    grid: int | None = None,
    topk: float = 0.1,
    metrics: bool = True,
    metric_options: Mapping[str, Any] | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Explain the same images with runs at different resolutions and compare the maps pairwise.

    Each run sees the images through its own eval transform (so resized to its resolution). Maps are
    compared on a common ``grid`` (default: the smallest resolution) after area resampling of
    |attribution|. Writes ``compare.json``, ``compare_{method}.png`` (heatmaps) and ``maps_{method}.png``.
    ``progress(done, total)`` as in :func:`explain_run`, over all runs.
    """
    if len(runs) < 2:
        raise ValueError(f"the resolution comparison needs at least two runs, got {len(runs)}")
    ref = runs[0]
    for r in runs[1:]:
        if r.dataset.name != ref.dataset.name or len(r.split(split)) != len(ref.split(split)) or r.dataset.classes != ref.dataset.classes:
            raise ValueError(f"runs {ref.name!r} and {r.name!r} use different datasets "
                             f"({ref.dataset.name}, {len(ref.split(split))} vs {r.dataset.name}, {len(r.split(split))} {split} images)")
    runs = sorted(runs, key=lambda r: r.resolution)
    labels = run_labels([r.resolution for r in runs], [r.name for r in runs])
    idx = _indices(ref, split, indices)
    step = _counter(progress, _units(len(idx), methods, metrics) * len(runs))
    out = Path(out_dir)
    maps: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
    signed: dict[str, bool] = {}
    per_run: dict[str, dict[str, Any]] = {}
    first_targets: torch.Tensor | None = None
    for label, run in zip(labels, runs):
        e = _explain_images(run, split, idx, methods, options, target, metrics, metric_options, batch_size, step)
        first_targets = e.targets.cpu() if first_targets is None else first_targets
        for m, v in e.expl.maps.items():
            maps[m][label] = v
            signed[m] = e.methods[m].signed
        per_run[label] = {"run": run.name, "path": str(run.path) if run.path else None, "resolution": run.resolution,
                          "targets": [int(t) for t in e.targets],
                          "accuracy_on_images": float((predict_logits(run.model, e.x).argmax(1) == e.labels).float().mean()),
                          "methods": e.method_summary()}
    assert first_targets is not None  # two or more runs were explained
    resolutions = {label: r.resolution for label, r in zip(labels, runs)}
    results = {m: compare_maps(maps[m], grid=grid, topk=topk, resolutions=resolutions) for m in methods}
    files: dict[str, str] = {}
    originals = ref.split(split).images[torch.as_tensor(idx)]
    for m in methods:
        heat = out / f"compare_{m}.png"
        plot_comparison(results[m], heat, title=f"{m}: {ref.dataset.name} {split}, {len(idx)} images, target = {target}")
        grid_png = out / f"maps_{m}.png"
        save_resolution_grid(grid_png, originals, maps[m], targets=first_targets, indices=idx,
                             class_names=ref.dataset.classes, signed=signed[m], title=f"{m} across resolutions")
        files[m] = str(heat)
        files[f"{m}_maps"] = str(grid_png)
    report = {"dataset": ref.dataset.name, "split": split, "indices": idx, "target_mode": target, "topk": topk,
              "grid": next(iter(results.values()))["grid"], "interpolation": "area of |attribution|",
              "runs": per_run, "methods": results, "rows": comparison_rows(results), "files": files}
    write_json_atomic(out / "compare.json", report)
    return report


__all__ = ["DEFAULT_METHODS", "compare_runs", "explain_run"]
