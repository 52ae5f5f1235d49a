"""The attribution workflow on an analysis run directory: train (or reuse) the deterministic run,
compute and save MAGIC scores with plots, compute baselines, and validate any of them by LDS.

The CLI commands ``cnnlab magic`` and ``cnnlab lds`` are thin wrappers around these functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import torch

from cnnlab.attribution.chunks import MagicChunks, matches_checkpoint
from cnnlab.attribution.lds import LDSStudy, Regime, population_available, predictions, reset_study
from cnnlab.attribution.magic import MagicResult, compute_magic, prepare_config
from cnnlab.attribution.magic_files import load_magic, read_magic_meta, save_magic
from cnnlab.attribution.measures import Measurement, MeasureFn, get_measurement
from cnnlab.attribution.methods import AttributionMethod, AttributionRun, ExternalScores, Magic, attribution_method
from cnnlab.attribution.plots import plot_lds_scatter, plot_proponents
from cnnlab.attribution.replay import RecordReplayStates
from cnnlab.attribution.scores import Scores
from cnnlab.attribution.trained import final_state, load_run_dataset
from cnnlab.data import ImageDataset
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.run import read_result, read_run_config
from cnnlab.engine.step import TrainState
from cnnlab.engine.trainer import Trainer
from cnnlab.utils.configdiff import config_diff, mismatch_message

__all__ = ["CutBufferHistory", "baseline_scores", "ensure_trained_run", "final_state", "lds_analysis", "lds_study",
           "load_run_dataset", "magic_analysis", "magic_chunks", "merge_magic_chunks", "reusable_magic"]

log = logging.getLogger("cnnlab.attribution")


class CutBufferHistory(Callback):
    """Detach the trainer's buffers at each logged step.

    With ``train.bn_stats: explicit`` the engine's no-graph step returns running statistics that still
    carry autograd history (they are computed from parameters that required grad), so each step's BN
    inputs stay alive through the chain (~20 MB per step for the MNIST config). Cutting the chain at
    every logged step (``train.log_every``) bounds that; a no-op once the step detaches them itself.
    """

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        trainer.state.buffers = {k: v.detach() for k, v in trainer.state.buffers.items()}


def ensure_trained_run(config: RunConfig, run_dir: str | Path, *, dataset: ImageDataset | None = None,
                       progress: bool = False, record: RecordReplayStates | None = None) -> tuple[dict[str, Any], bool]:
    """Train ``config`` (prepared for MAGIC) into ``run_dir``, or reuse the finished run already there.

    ``record``: a callback that keeps the states a replay needs while the run trains (pass its
    ``states`` to :func:`magic_analysis`). Returns (result.json record, reused). A run dir holding a
    different config is an error.
    """
    config = prepare_config(config)
    run_dir = Path(run_dir)
    if (run_dir / "config.yaml").is_file():
        existing = read_run_config(run_dir).to_dict()
        if existing != config.to_dict():
            raise ConfigError(mismatch_message("reuse the run in", run_dir, config_diff(existing, config.to_dict()),
                                               hint="pick another --out"))
        result = read_result(run_dir)
        if result is not None and result.get("status") == "completed":
            return result, True
        resume = (run_dir / "checkpoints" / "last.pt").is_file()
        return _trainer(config, run_dir, dataset, progress, record).fit(resume=resume), False
    return _trainer(config, run_dir, dataset, progress, record).fit(), False


def _trainer(config: RunConfig, run_dir: Path, dataset: ImageDataset | None, progress: bool,
             record: RecordReplayStates | None) -> Trainer:
    callbacks: list[Callback] = [CutBufferHistory()] + ([record] if record is not None else [])
    return Trainer(config, run_dir, dataset=dataset, progress=progress, callbacks=callbacks)


def _same_request(meta: dict[str, Any], targets: Sequence[int], measurement: str, dtype: torch.dtype) -> bool:
    return (meta["target_indices"] == list(targets) and meta["measurement"] == measurement
            and meta["settings"].get("dtype") == str(dtype).replace("torch.", ""))


def magic_analysis(
    run_dir: str | Path,
    *,
    targets: Sequence[int] | None = None,
    measure: Union[str, Measurement, MeasureFn] = "loss",
    checkpointing: str = "log",
    tree_k: int = 4,
    dtype: torch.dtype = torch.float32,
    vjp: str = "auto",
    offload: bool = False,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
    plot_columns: Sequence[int] | None = (0, 1, 2, 3),
    plot_k: int = 6,
    dataset: ImageDataset | None = None,
    states: Mapping[int, TrainState] | None = None,
    compile: bool = False,
    compile_chunk: int = 4,
) -> tuple[MagicResult, bool]:
    """MAGIC scores for the finished run in ``run_dir`` (reused when already computed for the same targets,
    measurement and dtype, unless ``force``), saved with index metadata and proponent plots.
    ``states``: the run's states recorded while it trained (spare the replay's first pass).
    ``compile``/``compile_chunk``: see :func:`~cnnlab.attribution.magic.compute_magic`.
    Returns (result, reused)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    m = get_measurement(measure)
    ds = dataset or load_run_dataset(config)
    targets = list(targets) if targets is not None else list(range(min(50, len(ds.test))))
    meta = read_magic_meta(run_dir)
    if meta is not None and not force and _same_request(meta, targets, m.name, dtype):
        return load_magic(run_dir), True
    result = compute_magic(config, targets=targets, measure=m, checkpointing=checkpointing, tree_k=tree_k,
                           dtype=dtype, dataset=ds, vjp=vjp, offload=offload, progress=progress, states=states,
                           compile=compile, compile_chunk=compile_chunk)
    # a replay seeded with the training run's own states explains that run by construction: nothing to compare
    result.settings["matches_trained_run"] = (None if result.stats.reused_states
                                              else matches_checkpoint(run_dir, result.final_state, dtype))
    if result.settings["matches_trained_run"] is False:
        log.warning("MAGIC: the replay's final weights differ from %s/checkpoints/last.pt (another machine, library "
                    "version or torch thread count?); the scores explain the replayed run", run_dir)
    _save_and_plot(run_dir, result, ds, plot_columns, plot_k)
    return result, False


def _save_and_plot(run_dir: Path, result: MagicResult, ds: ImageDataset, plot_columns: Sequence[int] | None,
                   plot_k: int) -> None:
    save_magic(run_dir, result)
    if plot_columns:
        cols = [c for c in plot_columns if c < result.target_indices.numel()]
        plot_proponents(result.scores, result.train_indices, result.target_indices, ds, cols,
                        run_dir / "plots" / "proponents.png", k=plot_k, higher_is_better=result.higher_is_better,
                        measurement=result.measurement)


def reusable_magic(run_dir: str | Path, targets: Sequence[int], measure: Union[str, Measurement, MeasureFn] = "loss",
                   dtype: torch.dtype = torch.float32) -> MagicResult | None:
    """The MAGIC result saved in ``run_dir`` if it was computed for these targets, measurement and dtype."""
    meta = read_magic_meta(run_dir)
    if meta is not None and _same_request(meta, list(targets), get_measurement(measure).name, dtype):
        return load_magic(run_dir)
    return None


def magic_chunks(run_dir: str | Path, targets: Sequence[int], chunk: int, *, force: bool = False,
                 dataset: ImageDataset | None = None, **kw: Any) -> MagicChunks:
    """The chunks of a MAGIC request on the run in ``run_dir`` (see :class:`~cnnlab.attribution.chunks.MagicChunks`,
    which takes ``kw``: measure, checkpointing, tree_k, dtype, vjp, offload, compile, compile_chunk).
    ``force``: delete chunks computed earlier. Nothing is computed here."""
    config = read_run_config(run_dir)
    return MagicChunks(run_dir, config, targets, chunk, dataset=dataset or load_run_dataset(config), force=force, **kw)


def merge_magic_chunks(chunks: MagicChunks, *, plot_columns: Sequence[int] | None = (0, 1, 2, 3),
                       plot_k: int = 6) -> MagicResult:
    """Merge every chunk (shape, index metadata and provenance checked) into the run's one scores file
    (scores.pt, scores.npy, magic.json), with the proponent plots of :func:`magic_analysis`."""
    result = chunks.merge()
    ds = chunks.dataset or load_run_dataset(chunks.config)
    _save_and_plot(chunks.run_dir, result, ds, plot_columns, plot_k)
    return result


def baseline_scores(run_dir: str | Path, method: str, *, force: bool = False, dataset: ImageDataset | None = None,
                    proj_dim: int = 512) -> Scores:
    """Scores of the registered attribution method ``method`` (e.g. ``tracin``, ``trak``) for MAGIC's targets
    and measurement, cached in baselines/ by the methods that keep a cache.

    Args:
        run_dir (str | Path): The analysis run directory (after ``cnnlab magic``).
        method (str): A registered attribution method (:data:`~cnnlab.attribution.methods.ATTRIBUTION_METHODS`).
        force (bool, optional): Recompute even if cached scores match. Default: False.
        dataset (ImageDataset, optional): The run's dataset (loaded by name when None). Default: None.
        proj_dim (int, optional): TRAK's projection dimension (methods without one ignore it). Default: 512.
    """
    return attribution_method(method, proj_dim=proj_dim).scores(AttributionRun(Path(run_dir), dataset), force=force)


def lds_study(run_dir: str | Path, regime: Regime, *, dataset: ImageDataset | None = None) -> LDSStudy:
    """The LDS study of one regime on the MAGIC run in ``run_dir`` (its masks saved; nothing trained)."""
    run_dir = Path(run_dir)
    magic = load_magic(run_dir)
    config = read_run_config(run_dir)
    ds = dataset or load_run_dataset(config)
    return LDSStudy(run_dir, regime, config=config, train_indices=magic.train_indices,
                    targets=magic.target_indices.tolist(), measure=magic.measurement,
                    num_train=len(ds.train), dataset=ds)


def lds_analysis(
    run_dir: str | Path,
    regime: Regime,
    *,
    workers: int = 1,
    scores_files: Sequence[str | Path] = (),
    baselines: Sequence[str] = ("tracin",),
    force: bool = False,
    dataset: ImageDataset | None = None,
    progress: Callable[[int, int], None] | None = None,
    bootstrap: int = 2000,
    engine: str | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Validate MAGIC (and baselines, and external score files) by LDS on one regime's subset models.

    Subset models are trained only when missing (``force`` retrains them); a finished study with no new
    score sets is returned as stored. ``engine``: "population" (default when cnnlab.population is
    installed) or "step" (see :meth:`LDSStudy.train`).
    """
    run_dir = Path(run_dir)
    if force:
        reset_study(run_dir, regime)
    study = lds_study(run_dir, regime, dataset=dataset)
    ds = study.dataset
    existing = study.summary()
    wanted = ["magic", *baselines, *(f"external:{Path(f).stem}" for f in scores_files)]
    if existing is not None and not force and all(w in existing["methods"] for w in wanted) and not study.pending():
        return existing
    engine = engine or ("population" if population_available() else "step")
    study.train(workers=workers, progress=progress, engine=engine, backend=backend)
    run = AttributionRun(run_dir, ds)
    chosen: list[AttributionMethod] = [Magic(), *(attribution_method(b) for b in baselines),
                                       *(ExternalScores(f) for f in scores_files)]
    methods: dict[str, Scores] = {}
    for method in chosen:
        if not method.available():
            log.warning("LDS: skipping %s (an optional package it needs is not installed)", method.key)
            continue
        methods[method.key] = method.scores(run)
    ms = methods["magic"]
    summary = study.evaluate(methods, bootstrap=bootstrap)
    actual = study.actual()
    stats = summary["methods"]["magic"]
    plot_lds_scatter(predictions(ms.scores, study.keep), actual, stats["spearman_per_target"], study.targets,
                     study.dir / "scatter_magic.png", method="magic",
                     title=f"MAGIC LDS {stats['lds']:.3f} (drop {regime.drop:g}, {regime.models} models)")
    return summary
