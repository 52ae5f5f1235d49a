"""Typed run configuration: YAML in, ``key=value`` overrides, validated before any compute."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnnlab.utils.configdiff import config_diff  # noqa: F401 - re-exported
from cnnlab.utils.devices import check_device_name
from cnnlab.utils.io import load_yaml_text


ConfigT = TypeVar("ConfigT", bound=BaseModel)


DeviceName = Annotated[str, AfterValidator(check_device_name)]
"""A device a config may name: auto, cpu, cuda, cuda:N or mps (checked when the config is read)."""


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and what is allowed."""


class StrictModel(BaseModel):
    """Base of every cnnlab config: unknown keys are errors, no type is coerced (``true`` is not 1, ``"3"`` is
    not 3; an int is a valid float) and floats are finite (``.inf`` / ``.nan`` are refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


_Strict = StrictModel


class ModelConfig(_Strict):
    name: str = "tiny_cnn"
    options: dict[str, Any] = Field(default_factory=dict)
    init: Literal["default", "kaiming", "xavier"] = "default"
    in_channels: Optional[int] = Field(default=None, ge=1, description="default: the dataset's channel count")
    weights: Optional[str] = Field(default=None, description="a local state_dict file loaded strictly into the model before training")


class DataConfig(_Strict):
    name: str = "digits"
    root: Optional[str] = None
    options: dict[str, Any] = Field(default_factory=dict)
    resolution: Optional[int] = Field(default=None, ge=1, description="serve images at this size (resize on device)")
    crop_padding: int = Field(default=0, ge=0)
    crop_mode: Literal["reflect", "zeros"] = "reflect"
    flip: Literal["none", "random", "alternating"] = "none"
    cutout: int = Field(default=0, ge=0)
    subset: Optional[Union[int, float]] = Field(default=None, description="first N train examples (int) or a fraction (float)")
    subset_seed: Optional[int] = Field(default=None, description="draw the subset at random with this seed instead of taking the first")
    val_split: Optional[Union[int, float]] = Field(
        default=None, description="hold out N train examples (int) or a fraction (float), stratified by class, for validation")
    val_seed: int = Field(default=0, ge=0, description="seed of the validation draw (fixed across run seeds by default)")

    @field_validator("subset")
    @classmethod
    def _subset(cls, v):
        if v is None:
            return v
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError("a float subset is a fraction in (0, 1]")
        if isinstance(v, int) and v < 1:
            raise ValueError("an int subset is a count >= 1")
        return v

    @field_validator("val_split")
    @classmethod
    def _val_split(cls, v):
        if v is None:
            return v
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError("a float val_split is a fraction in (0, 1)")
        if isinstance(v, int) and v < 1:
            raise ValueError("an int val_split is a count >= 1")
        return v


class OptimConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas", mode="before")
    @classmethod
    def _betas(cls, v):  # YAML has lists, not tuples
        return tuple(v) if isinstance(v, list) else v
    eps: float = Field(default=1e-8, gt=0)
    no_decay_1d: bool = Field(default=True, description="no weight decay for biases, BN and other 1-D parameters")
    bias_lr_scale: float = Field(default=1.0, gt=0, description="learning-rate multiplier of the no-decay group")
    torch_class: Optional[str] = Field(
        default=None, description="import path of any torch.optim.Optimizer (e.g. torch.optim.RMSprop), built with lr, "
                          "weight_decay and optim.options; SGD/Adam/AdamW map onto the functional step, others run their own .step()")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments of optim.torch_class")

    @model_validator(mode="after")
    def _nesterov(self):
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs name: sgd and momentum > 0")
        return self


class ScheduleConfig(_Strict):
    name: Literal["constant", "onecycle", "cosine", "step", "multistep", "exponential", "plateau"] = "onecycle"
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warm-up, multiplied on top of the schedule")
    # onecycle (peak = max_lr, default optim.lr)
    max_lr: Optional[float] = Field(default=None, gt=0)
    pct_start: float = Field(default=0.25, gt=0, lt=1)
    anneal_strategy: Literal["cos", "linear"] = "linear"
    div_factor: float = Field(default=25.0, gt=0)
    final_div_factor: float = Field(default=1e4, gt=0)
    # cosine
    eta_min: float = Field(default=0.0, ge=0)
    interval: Literal["step", "epoch"] = "step"
    # step / multistep / exponential
    step_size: int = Field(default=30, ge=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(default=0.1, gt=0)
    # plateau
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    factor: float = Field(default=0.1, gt=0, lt=1)
    patience: int = Field(default=5, ge=0)
    threshold: float = Field(default=1e-4, ge=0)
    cooldown: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0)


class EmaConfig(_Strict):
    decay: float = Field(default=0.999, gt=0, lt=1)
    every: int = Field(default=1, ge=1, description="update the average every N steps")


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(default=5, ge=0)
    min_delta: float = Field(default=0.0, ge=0)
    warmup_epochs: int = Field(default=0, ge=0)


class CheckpointConfig(_Strict):
    monitor: str = "val_acc"
    mode: Literal["min", "max"] = "max"
    top_k: int = Field(default=1, ge=0)


class CallbackSpec(_Strict):
    """A callback from the user's code, as LightningCLI spells it: a class (or factory) and its arguments."""

    class_path: str = Field(..., description="import path of a Callback class or factory, 'package.module:Name'")
    init_args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments it is called with")


class CallbacksConfig(_Strict):
    early_stopping: Optional[EarlyStoppingConfig] = None
    checkpoint: Optional[CheckpointConfig] = None
    loggers: list[Literal["csv", "tensorboard"]] = Field(
        default_factory=list, description="metrics.csv (csv) and TensorBoard events in tb/ (tensorboard)")
    curves: bool = Field(default=True, description="write curves.png (loss/accuracy per epoch) at the end of training")
    custom: list[CallbackSpec] = Field(default_factory=list, description="callbacks by import path")


class TrainConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=128, ge=1)
    eval_batch_size: int = Field(default=1000, ge=1)
    drop_last: bool = False
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    accumulation: int = Field(default=1, ge=1, description="micro-batches per optimizer step")
    accumulate_batches: int = Field(default=1, ge=1, description="loader batches per optimizer step (effective batch N x batch_size)")
    grad_clip: Optional[float] = Field(default=None, gt=0, description="clip the global gradient norm to this")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = Field(
        default="auto", description="auto: bf16 autocast where the device has native bf16 (CUDA, or a CPU with AVX-512 BF16 / AMX), "
        "else fp32; result.json's precision says what was chosen and why")
    channels_last: Optional[bool] = Field(
        default=None, description="null (or auto): channels_last where bf16 autocast runs on a CPU (faster there for every model "
        "measured), else NCHW; true/false: as set")
    compile: bool = False
    cudnn_benchmark: bool = Field(default=False, description="let cuDNN pick the fastest convolution algorithms (CUDA; not bitwise reproducible)")
    ema: Optional[EmaConfig] = None
    tta_flip: bool = False
    device: DeviceName = "auto"
    threads: Optional[int] = Field(default=None, ge=1)
    deterministic: bool = False
    bn_stats: Literal["native", "explicit"] = Field(
        default="native", description="explicit: out-of-place, differentiable BN running stats (what MAGIC replays)")
    clean_train_eval: bool = Field(default=False, description="also evaluate eval-mode accuracy on the un-augmented train set")
    checkpoint_every: int = Field(default=1, ge=1, description="epochs between resume checkpoints")
    log_every: int = Field(default=10, ge=1, description="steps between progress/divergence checks")

    @field_validator("channels_last", mode="before")
    @classmethod
    def _channels_last_auto(cls, v: Any) -> Any:
        return None if v == "auto" else v


class RunConfig(_Strict):
    """One training run."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    callbacks: CallbacksConfig = Field(default_factory=CallbacksConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _format_errors(e: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in e.errors():
        loc = [p for p in err["loc"] if p not in ("int", "float", "str", "bool")]  # strict unions add the branch
        key = ".".join(str(p) for p in loc) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, [str(p) for p in err["loc"][:-1]])
            msg = f"unknown key; allowed here: {', '.join(allowed)}"
        elif "input" in err and err["type"] not in ("missing",):
            msg = f"{msg} (got {err['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    cur: Any = model
    for p in path:
        field = getattr(cur, "model_fields", {}).get(p)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                cur = cand
                break
        else:
            return []
    return sorted(getattr(cur, "model_fields", {}))


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "train.epochs=3"]`` -> nested dict; values parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=0.1)")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part")
        try:
            value = load_yaml_text(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        set_dotted(out, key, value)
    return out


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options":
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def validate_config(cls: type[ConfigT], raw: dict[str, Any], overrides: list[str] | None = None) -> ConfigT:
    """Merge dotted overrides into ``raw`` and validate into ``cls``; a ConfigError names every bad key."""
    data = deep_merge(raw or {}, parse_overrides(overrides or []))
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, cls)) from None


def build_config(raw: dict[str, Any], overrides: list[str] | None = None) -> RunConfig:
    return validate_config(RunConfig, raw, overrides)


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        raw = load_yaml_text(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a RunConfig from YAML (or defaults when ``path`` is None) plus dotted overrides."""
    return build_config(load_yaml(path) if path else {}, overrides)
