"""Turn a validated RunConfig into the pieces of a run: dataset, model, loaders, step settings, schedule.

The Trainer and MAGIC's replay both build their run here, so a replay sees exactly the model, batches
and hyperparameters of the run it explains.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.data import ImageDataset, load_dataset
from cnnlab.data.augment import Augment, converted_stats
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.optim import build_param_groups, make_optimizer
from cnnlab.engine.schedules import Schedule
from cnnlab.engine.step import StepSettings, TrainState
from cnnlab.models import create_deterministic_model
from cnnlab.models.registry import get_entry
from cnnlab.utils.seeding import derive_seed

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} asked for, but CUDA is not available on this machine")
    return dev


def apply_runtime(config: RunConfig) -> None:
    """Threads and determinism flags (process-wide)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def seeds(config: RunConfig) -> dict[str, int]:
    """The seed path of every random stream of the run (recorded in result.json)."""
    return {
        "master": config.seed,
        "model": derive_seed(config.seed, "model/model"),
        "data": derive_seed(config.seed, "data"),
        "augment": derive_seed(config.seed, "augment"),
    }


def validate_names(config: RunConfig) -> None:
    """Fail before any compute on an unknown model/dataset name or a model option it does not take."""
    from cnnlab.data import list_datasets
    from cnnlab.models import create_model

    try:
        get_entry(config.model.name)
    except KeyError as e:
        raise ConfigError(f"model.name: {e}") from None
    if config.data.name not in list_datasets():
        raise ConfigError(f"data.name: unknown dataset {config.data.name!r}; available: {', '.join(list_datasets())}")
    with torch.device("meta"):
        try:
            create_model(config.model.name, init="default", **config.model.options)
        except (TypeError, ValueError) as e:
            opts = ", ".join(f"{k}={v!r}" for k, v in config.model.options.items())
            why = str(e) if isinstance(e, ValueError) or "keyword argument" in str(e) else "an option value has the wrong type"
            raise ConfigError(f"model.options: model {config.model.name!r} cannot be built with {opts}: {why}") from None


def subset_indices(config: RunConfig, n: int) -> Tensor | None:
    s = config.data.subset
    if s is None:
        return None
    count = s if isinstance(s, int) else max(1, int(round(s * n)))
    if count > n:
        raise ConfigError(f"data.subset: {count} examples asked for, the train split has {n}")
    if config.data.subset_seed is None:
        return torch.arange(count)
    gen = torch.Generator().manual_seed(derive_seed(config.data.subset_seed, "subset"))
    return torch.randperm(n, generator=gen)[:count].sort().values


@dataclass
class RunParts:
    """Everything a training run (or its replay) is made of."""

    config: RunConfig
    device: torch.device
    dataset: ImageDataset
    model: nn.Module
    augment: Augment
    train_loader: BatchLoader
    settings: StepSettings
    schedule: Schedule
    in_channels: int

    def initial_state(self) -> TrainState:
        return TrainState.from_model(self.model, self.settings.optimizer, fp16=self.config.train.precision == "fp16")

    def eval_images(self, images: Tensor, start: int, end: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Eval transform (resize, channels, normalise; no augmentation) of ``images[start:end]`` on device."""
        x = images[start:end].to(self.device, non_blocking=True)
        return self.augment.eval_transform(x, dtype=dtype, channels_last=self.config.train.channels_last)


def build_run(
    config: RunConfig,
    *,
    dataset: ImageDataset | None = None,
    weights: Tensor | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
) -> RunParts:
    """Build the run. ``weights``: per-example training weights (N_train), e.g. zeros for dropped examples."""
    validate_names(config)
    device = device or resolve_device(config.train.device)
    if dataset is None:
        dataset = load_dataset(config.data.name, root=config.data.root, **config.data.options)
    t = config.train
    in_channels = config.model.in_channels or dataset.in_channels
    entry = get_entry(config.model.name)
    resolution = config.data.resolution or dataset.resolution
    if resolution < entry.min_resolution:
        raise ConfigError(
            f"data.resolution: {config.model.name!r} needs inputs of at least {entry.min_resolution} px, "
            f"the data is served at {resolution} px (set data.resolution)")

    model = create_deterministic_model(
        config.seed, config.model.name, "model", num_classes=dataset.num_classes, in_channels=in_channels,
        init=config.model.init, **config.model.options)
    if hasattr(model, "init_whitening"):  # airbench: whitening conv from training patches
        model.init_whitening(_whitening_batch(dataset, in_channels, resolution))
    model = model.to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if t.compile:
        model.forward = torch.compile(model.forward)  # type: ignore[method-assign]

    if in_channels != dataset.in_channels or config.data.resolution:
        mean, std = converted_stats(dataset.train.images, channels=in_channels, resize=config.data.resolution)
    else:
        mean, std = dataset.mean, dataset.std
    augment = Augment(
        mean, std, crop_padding=config.data.crop_padding, crop_mode=config.data.crop_mode,
        flip=None if config.data.flip == "none" else config.data.flip, cutout=config.data.cutout,
        resize=config.data.resolution, channels=in_channels if in_channels != dataset.in_channels else None,
        seed=derive_seed(config.seed, "augment") % (2**31))
    augment.validate_shape(dataset.train.images.shape)

    if weights is not None and weights.shape != (len(dataset.train),):
        raise ValueError(f"weights must have shape ({len(dataset.train)},), got {tuple(weights.shape)}")
    if t.batch_size % world_size:
        raise ConfigError(f"train.batch_size: {t.batch_size} is not divisible by the {world_size} data-parallel ranks")
    loader = BatchLoader(
        dataset.train.images, dataset.train.labels, t.batch_size, seed=derive_seed(config.seed, "data"),
        shuffle=True, drop_last=t.drop_last, indices=subset_indices(config, len(dataset.train)), weights=weights,
        augment=augment, device=device, dtype=torch.float32, channels_last=t.channels_last,
        rank=rank, world_size=world_size)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size: {t.batch_size} leaves no batch (drop_last with {loader.num_examples} examples)")

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    o = config.optim
    groups = build_param_groups(named, o.weight_decay, no_decay_1d=o.no_decay_1d, bias_lr_scale=o.bias_lr_scale)
    optimizer = make_optimizer(o.name, groups, momentum=o.momentum, nesterov=o.nesterov, betas=o.betas, eps=o.eps)
    settings = StepSettings(
        optimizer=optimizer, label_smoothing=t.label_smoothing, grad_clip=t.grad_clip, accumulation=t.accumulation,
        autocast_dtype=_AMP[t.precision], bn_stats=t.bn_stats,
        frozen={n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    schedule = make_schedule(config, len(loader))
    return RunParts(config, device, dataset, model, augment, loader, settings, schedule, in_channels)


def make_schedule(config: RunConfig, steps_per_epoch: int) -> Schedule:
    s = config.schedule
    base = s.max_lr if (s.name == "onecycle" and s.max_lr) else config.optim.lr
    options = s.model_dump()
    return Schedule(s.name, base, steps_per_epoch, config.train.epochs,
                    warmup_steps=int(math.ceil(s.warmup_epochs * steps_per_epoch)), options=options)


def _whitening_batch(dataset: ImageDataset, in_channels: int, resolution: int, n: int = 5000) -> Tensor:
    """Normalised training images (no augmentation) to initialise a whitening layer from."""
    images = dataset.train.images[:n]
    aug = Augment(dataset.mean if in_channels == dataset.in_channels else converted_stats(images, channels=in_channels)[0],
                  dataset.std if in_channels == dataset.in_channels else converted_stats(images, channels=in_channels)[1],
                  resize=resolution if resolution != dataset.resolution else None,
                  channels=in_channels if in_channels != dataset.in_channels else None)
    return aug.eval_transform(images)
