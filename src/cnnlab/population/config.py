"""Typed configs for ``cnnlab population train`` and ``cnnlab population es`` (YAML in, validated before compute).

A population-training config is a run config (:class:`cnnlab.engine.config.RunConfig`: model, data,
optim, schedule, train) plus a ``population`` section; an ES config shares the model and data sections
and adds ``es``. Unknown keys are errors that list the allowed ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

from cnnlab.engine.config import (
    DataConfig,
    DeviceName,
    ModelConfig,
    RunConfig,
    StrictModel,
    load_yaml,
    validate_config,
)


_Strict = StrictModel


class PopulationSection(_Strict):
    size: int = Field(4, ge=1, description="members M")
    init: Literal["per_member", "shared"] = Field(
        "per_member", description="per_member: member i from seed path member/{i}; shared: the run's model for all")
    order: Literal["per_member", "shared"] = Field(
        "per_member", description="data order and augmentation: per member, or the run's for all (one shared batch)")
    lr: Optional[list[float]] = Field(None, description="per-member base learning rate (replaces optim.lr / schedule.max_lr)")
    keep_fraction: Optional[float] = Field(None, gt=0, le=1, description="each member trains on a random fraction (others weighted 0)")
    backend: Literal["auto", "vmap", "loop", "procs"] = "auto"
    workers: Optional[int] = Field(None, ge=1, description="processes for backend procs (default: CPU cores)")
    eval_every: int = Field(1, ge=1, description="epochs between test evaluations of every member")

    @field_validator("lr")
    @classmethod
    def _positive(cls, v):
        if v is not None and any(x <= 0 for x in v):
            raise ValueError("every learning rate must be > 0")
        return v

    @model_validator(mode="after")
    def _lengths(self):
        if self.lr is not None and len(self.lr) != self.size:
            raise ValueError(f"lr has {len(self.lr)} values; it needs one per member (size = {self.size})")
        return self


class PopulationRunConfig(RunConfig):
    """A run config plus the ``population`` section."""

    name: str = "population"
    population: PopulationSection = Field(default_factory=lambda: PopulationSection.model_validate({}))

    @model_validator(mode="after")
    def _supported(self):
        t, unsupported = self.train, []
        if t.ema is not None:
            unsupported.append("train.ema")
        if t.compile:
            unsupported.append("train.compile")
        if t.precision == "fp16":
            unsupported.append("train.precision: fp16 (use bf16)")
        if t.tta_flip:
            unsupported.append("train.tta_flip")
        if t.clean_train_eval:
            unsupported.append("train.clean_train_eval")
        if self.schedule.name == "plateau":
            unsupported.append("schedule.name: plateau (it needs one metric per member)")
        if self.callbacks.early_stopping is not None or self.callbacks.checkpoint is not None:
            unsupported.append("callbacks")
        if t.accumulate_batches > 1:
            unsupported.append("train.accumulate_batches (use train.accumulation)")
        if self.optim.torch_class:
            from cnnlab.engine.setup import nonfunctional_optimizer

            problem = nonfunctional_optimizer(self)
            if problem:
                unsupported.append(problem.replace("this analysis", "a population (vmapped)"))
        if unsupported:
            raise ValueError("not supported for populations: " + ", ".join(unsupported))
        return self


ES_ALGORITHM_NAMES = ("openai", "pgpe", "snes", "sep_cmaes")
# es keys handed to the algorithm's settings when it has a field of that name (None: the algorithm's default)
ES_SHARED_SETTINGS = ("population", "sigma", "lr", "optimizer", "momentum", "max_speed", "weight_decay", "antithetic",
                      "shaping")


def _check_option_type(algorithm: str, key: str, value: Any, settings_cls: type) -> None:
    """es.options values keep their type: a number where a number is expected, never a bool for one (or back)."""
    from dataclasses import fields

    declared = next(f.type for f in fields(settings_cls) if f.name == key)
    declared = str(declared)
    if value is None and "Optional" in declared:
        return
    if "bool" in declared:
        ok = isinstance(value, bool)
    elif "float" in declared:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif "int" in declared:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"es.options.{key}: {algorithm} expects {declared}, got {value!r} ({type(value).__name__})")


class ESSection(_Strict):
    algorithm: Literal["openai", "pgpe", "snes", "sep_cmaes"] = Field(
        "openai", description="openai (OpenAI-ES) | pgpe (PGPE, adaptive stdev) | snes (separable NES) | "
                              "sep_cmaes (separable CMA-ES)")
    generations: int = Field(100, ge=1)
    population: Optional[int] = Field(None, ge=2, description="candidates per generation (even with antithetic sampling); "
                                                              "default: the algorithm's (32, or 4 + floor(3 ln n) for snes and sep_cmaes)")
    sigma: float = Field(0.05, gt=0, description="(initial) noise standard deviation")
    lr: Optional[float] = Field(None, gt=0, description="optimizer learning rate on the mean (openai, pgpe; default 0.01)")
    optimizer: Optional[Literal["adam", "sgd", "clipup"]] = Field(None, description="openai, pgpe (default: adam, clipup)")
    momentum: Optional[float] = Field(None, ge=0, lt=1, description="sgd and clipup (default 0.9)")
    max_speed: Optional[float] = Field(None, gt=0, description="clipup's velocity bound (default 2 * lr)")
    weight_decay: Optional[float] = Field(None, ge=0, description="openai, pgpe (default 0)")
    antithetic: Optional[bool] = Field(None, description="mirrored pairs (openai, pgpe; default true)")
    shaping: Optional[Literal["centered_ranks", "none"]] = Field(None, description="openai, pgpe (default centered_ranks)")
    options: dict[str, Any] = Field(default_factory=dict, description="the algorithm's own settings, e.g. "
                                                                      "pgpe: stdev_lr, stdev_max_change; snes: center_lr, stdev_lr")
    fitness: Literal["accuracy", "neg_loss"] = "neg_loss"
    batch_size: int = Field(256, ge=1, description="training examples per fitness evaluation (one batch per generation)")
    eval_chunk: Optional[int] = Field(None, ge=1, description="candidates per vmapped forward (bounds memory)")
    backend: Literal["vmap", "loop"] = Field("vmap", description="fitness forward: vmapped over candidates, or a loop "
                                                                 "(plain convolutions: faster on a CPU for larger images)")
    workers: int = Field(1, ge=1, description="fitness evaluated in this many shards: worker processes (executor local) "
                                              "or Ray actors (executor ray); 1 = in this process")
    executor: Literal["local", "ray"] = Field("local", description="where the fitness workers run")
    address: Optional[str] = Field(None, description="Ray cluster address (executor ray; default: a local Ray)")
    eval_every: int = Field(10, ge=1, description="generations between test evaluations of the mean")
    mean_fitness_every: int = Field(1, ge=0, description="generations between fitness evaluations of the mean on the "
                                    "generation's batch (its curve; one candidate's forward each; 0: never)")
    eval_batch_size: int = Field(1000, ge=1)
    bn_calibration_batches: int = Field(10, ge=1, description="train batches to re-estimate BatchNorm statistics of the mean")
    checkpoint_every: int = Field(10, ge=1, description="generations between resume checkpoints")
    device: DeviceName = "auto"
    threads: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _settings(self):
        self.algorithm_settings()  # a ValueError naming the bad setting, before any compute
        return self

    def algorithm_settings(self):
        """The algorithm's Settings from the shared keys it takes and ``options``."""
        from cnnlab.population.es import get_es, settings_fields

        cls = get_es(self.algorithm)
        names = settings_fields(cls)
        bad = sorted(k for k in self.options if k not in names or k in ES_SHARED_SETTINGS)
        if bad:
            own = [n for n in names if n not in ES_SHARED_SETTINGS]
            raise ValueError(f"es.options: {self.algorithm} has no option(s) {', '.join(bad)}; its options: "
                             f"{', '.join(own) or 'none'} (shared settings are es.<key>, not es.options.<key>)")
        kw = {k: getattr(self, k) for k in ES_SHARED_SETTINGS if k in names and getattr(self, k) is not None}
        for k, v in self.options.items():
            _check_option_type(self.algorithm, k, v, cls.Settings)
        try:
            return cls.Settings(**kw, **self.options)
        except TypeError as e:
            raise ValueError(f"es.options: {e}") from None

    def unused_keys(self) -> list[str]:
        """Shared keys set in the config that the chosen algorithm does not use (warned about, not applied)."""
        from cnnlab.population.es import get_es, settings_fields

        names = settings_fields(get_es(self.algorithm))
        return [f"es.{k}" for k in ES_SHARED_SETTINGS
                if k not in names and k in self.model_fields_set and getattr(self, k) is not None]



class ESRunConfig(_Strict):
    """An evolution-strategies run: model and data as in a run config, plus ``es``."""

    name: str = "es"
    seed: int = 0
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.model_validate({}))
    data: DataConfig = Field(default_factory=lambda: DataConfig.model_validate({}))
    es: ESSection = Field(default_factory=lambda: ESSection.model_validate({}))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys a resumed ES run may change without changing the trajectory of the mean.
ES_RESUMABLE_CHANGES = ("es.generations", "es.checkpoint_every", "es.eval_every", "es.mean_fitness_every",
                        "es.threads", "es.workers", "es.executor", "es.address")  # the fitness of each candidate does not depend on them


def build(cls: type[BaseModel], raw: dict[str, Any], overrides: list[str] | None = None):
    return validate_config(cls, raw, overrides)


def load(cls: type[BaseModel], path: str | Path, overrides: list[str] | None = None):
    """Validate YAML at ``path`` (plus ``key=value`` overrides) into ``cls``; ConfigError names bad keys."""
    return build(cls, load_yaml(path), overrides)
