"""Data-attribution methods, one class per method behind one registry: MAGIC, TracIn, TRAK and an external
scores file. Every method answers in the shared :class:`~cnnlab.attribution.scores.Scores` layout for the
MAGIC run of an analysis run directory (its train indices, targets and measurement), so LDS can score them
side by side. A new method is one subclass registered with :func:`register_attribution_method`.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from cnnlab.attribution import baselines as bl
from cnnlab.attribution.magic_files import load_magic
from cnnlab.attribution.scores import Scores, load_baseline, load_external_scores, save_baseline
from cnnlab.attribution.trained import final_state, load_run_dataset
from cnnlab.data import ImageDataset
from cnnlab.engine.run import read_run_config
from cnnlab.engine.setup import RunParts
from cnnlab.engine.step import TrainState
from cnnlab.utils.registry import Registry


@dataclass
class AttributionRun:
    """What a method is asked about: the analysis run in ``run_dir``, whose MAGIC scores fix the rows (train
    indices), columns (targets) and measurement every method answers in.

    Args:
        run_dir (Path): The analysis run directory (after ``cnnlab magic``).
        dataset (ImageDataset, optional): The run's dataset; loaded by the config's name when None. Default: None.
    """

    run_dir: Path
    dataset: ImageDataset | None = None
    _like: Scores | None = field(default=None, repr=False)
    _final: tuple[RunParts, TrainState] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)

    @property
    def like(self) -> Scores:
        """MAGIC's scores of this run: the layout (rows, columns, measurement) every method answers in."""
        if self._like is None:
            self._like = load_magic(self.run_dir).attribution
        return self._like

    def final_state(self) -> tuple[RunParts, TrainState]:
        """(RunParts, final TrainState) of the trained run (built once, shared by the methods that need it)."""
        if self._final is None:
            config = read_run_config(self.run_dir)
            self.dataset = self.dataset or load_run_dataset(config)
            self._final = final_state(self.run_dir, config, self.dataset)
        return self._final


class AttributionMethod(ABC):
    """Base class of data-attribution methods: scores for every training example of a run on its targets.

    Subclasses must implement:

    - a ``compute(run)`` method: the scores (:class:`~cnnlab.attribution.scores.Scores`) for ``run.like``'s
      train indices, targets and measurement (tau_i approximating d phi / d w_i, MAGIC's sign convention).

    and may override ``available()`` (a classmethod: False when an optional dependency is missing), ``key``
    (the method's name in LDS summaries) and ``cached`` (True: scores are kept in ``baselines/<key>.pt`` and
    reused while targets and measurement match). Register with ``@register_attribution_method("name")``.
    """

    name: ClassVar[str] = ""
    cached: ClassVar[bool] = False
    baseline: ClassVar[bool] = False  # offered by `cnnlab lds --baselines`

    @classmethod
    def available(cls) -> bool:
        """Whether the method can run in this installation."""
        return True

    @property
    def key(self) -> str:
        """The method's name in LDS summaries and cache files."""
        return self.name

    @abstractmethod
    def compute(self, run: AttributionRun) -> Scores:
        """The scores for ``run`` (``run.like``'s rows, columns and measurement)."""

    def scores(self, run: AttributionRun, *, force: bool = False) -> Scores:
        """:meth:`compute`'s scores, from the cache when the method keeps one and it matches (unless ``force``).

        Args:
            run (AttributionRun): The run asked about.
            force (bool, optional): Recompute even if cached scores match. Default: False.
        """
        like = run.like
        if self.cached and not force:
            hit = load_baseline(run.run_dir, self.key)
            if (hit is not None and torch.equal(hit.target_indices, like.target_indices)
                    and hit.measurement == like.measurement):
                return hit
        s = self.compute(run)
        if self.cached:
            save_baseline(run.run_dir, s)
        return s

    def settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"


ATTRIBUTION_METHODS: Registry[type[AttributionMethod]] = Registry(
    "attribution method", error=ValueError, hint="Data-attribution methods: magic, tracin, trak, external.")


def register_attribution_method(name: str) -> Callable[[type[AttributionMethod]], type[AttributionMethod]]:
    """Class decorator: register an :class:`AttributionMethod` subclass under ``name``."""

    def deco(cls: type[AttributionMethod]) -> type[AttributionMethod]:
        ATTRIBUTION_METHODS.register(name, cls)  # a taken name is refused
        cls.name = name
        return cls

    return deco


def attribution_method(name: str, **options: Any) -> AttributionMethod:
    """An instance of the method registered as ``name``; ``options`` it does not accept are left out
    (so one call can pass e.g. ``proj_dim`` to whichever baseline is asked for)."""
    cls = ATTRIBUTION_METHODS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})


def baseline_names() -> list[str]:
    """The methods ``cnnlab lds --baselines`` offers."""
    return [n for n, cls in ATTRIBUTION_METHODS.items() if cls.baseline]


@register_attribution_method("magic")
class Magic(AttributionMethod):
    """Exact MAGIC metagradients, as saved by :func:`~cnnlab.attribution.pipeline.magic_analysis` (or the merge
    of ``cnnlab magic --executor``) in the run directory; computing them takes options of its own
    (checkpointing, dtype, VJP path), so this method reads the saved result."""

    def compute(self, run: AttributionRun) -> Scores:
        return run.like


@register_attribution_method("tracin")
class TracIn(AttributionMethod):
    """TracIn at the final checkpoint: tau_i = -grad l_i . grad phi (eval mode).

    Args:
        chunk (int, optional): Training examples per batch of per-example gradients. Default: 256.
    """

    cached = True
    baseline = True

    def __init__(self, chunk: int = 256) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = chunk

    def compute(self, run: AttributionRun) -> Scores:
        like = run.like
        parts, state = run.final_state()
        return bl.tracin_scores(parts, state, like.train_indices, like.target_indices, like.measurement, chunk=self.chunk)

    def settings(self) -> dict[str, Any]:
        return {"chunk": self.chunk}


@register_attribution_method("trak")
class Trak(AttributionMethod):
    """TRAK (Park et al. 2023) from the final checkpoint, through the optional ``traker`` package.

    Args:
        proj_dim (int, optional): Dimension of the random projection of the gradients (kept within
            [128, N_train / 2]). Default: 512.
        seed (int, optional): Seed of the projection. Default: 0.
    """

    cached = True
    baseline = True

    def __init__(self, proj_dim: int = 512, seed: int = 0) -> None:
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.proj_dim, self.seed = proj_dim, seed

    @classmethod
    def available(cls) -> bool:
        return bl.trak_available()

    def compute(self, run: AttributionRun) -> Scores:
        like = run.like
        parts, state = run.final_state()
        return bl.trak_scores(parts, state, like.train_indices, like.target_indices, like.measurement,
                              work_dir=run.run_dir / "baselines" / "trak_work", proj_dim=self.proj_dim, seed=self.seed)

    def settings(self) -> dict[str, Any]:
        return {"proj_dim": self.proj_dim, "seed": self.seed}


@register_attribution_method("external")
class ExternalScores(AttributionMethod):
    """Scores another tool computed: a .npy / .pt array N_train × N_targets (or a cnnlab scores file), rows in
    the run's train order and one column per MAGIC target (checked).

    Args:
        path (str | Path): The scores file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def key(self) -> str:
        return f"external:{self.path.stem}"

    def compute(self, run: AttributionRun) -> Scores:
        return load_external_scores(self.path, run.like)

    def settings(self) -> dict[str, Any]:
        return {"path": str(self.path)}
