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
    ConfigError,
    DataConfig,
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
    population: PopulationSection = Field(default_factory=PopulationSection)

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
        if unsupported:
            raise ValueError("not supported for populations: " + ", ".join(unsupported))
        return self


class ESSection(_Strict):
    generations: int = Field(100, ge=1)
    population: int = Field(32, ge=2, description="candidates per generation (even with antithetic sampling)")
    sigma: float = Field(0.05, gt=0, description="noise standard deviation")
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    weight_decay: float = Field(0.0, ge=0)
    antithetic: bool = True
    shaping: Literal["centered_ranks", "none"] = "centered_ranks"
    fitness: Literal["accuracy", "neg_loss"] = "neg_loss"
    batch_size: int = Field(256, ge=1, description="training examples per fitness evaluation (one batch per generation)")
    eval_chunk: Optional[int] = Field(None, ge=1, description="candidates per vmapped forward (bounds memory)")
    eval_every: int = Field(10, ge=1, description="generations between test evaluations of the mean")
    eval_batch_size: int = Field(1000, ge=1)
    bn_calibration_batches: int = Field(10, ge=1, description="train batches to re-estimate BatchNorm statistics of the mean")
    checkpoint_every: int = Field(10, ge=1, description="generations between resume checkpoints")
    device: str = "auto"
    threads: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _even(self):
        if self.antithetic and self.population % 2:
            raise ValueError(f"population must be even with antithetic sampling (mirrored pairs), got {self.population}")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu") and not v.startswith(("cuda", "mps")):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return v


class ESRunConfig(_Strict):
    """An evolution-strategies run: model and data as in a run config, plus ``es``."""

    name: str = "es"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    es: ESSection = Field(default_factory=ESSection)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Keys a resumed ES run may change without changing the trajectory of the mean.
ES_RESUMABLE_CHANGES = ("es.generations", "es.checkpoint_every", "es.eval_every", "es.threads")


def build(cls: type[BaseModel], raw: dict[str, Any], overrides: list[str] | None = None):
    return validate_config(cls, raw, overrides)


def load(cls: type[BaseModel], path: str | Path, overrides: list[str] | None = None):
    """Validate YAML at ``path`` (plus ``key=value`` overrides) into ``cls``; ConfigError names bad keys."""
    return build(cls, load_yaml(path), overrides)
