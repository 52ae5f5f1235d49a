"""Turn a validated RunConfig into the pieces of a run: dataset, model, loaders, step settings, schedule.

The Trainer and MAGIC's replay both build their run here, so a replay sees exactly the model, batches
and hyperparameters of the run it explains.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cnnlab.data import ImageDataset, load_dataset
from cnnlab.data.augment import Augment, converted_stats
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.optim import (FunctionalOptimizer, TorchOptimizerStep, build_param_groups, from_torch_optimizer, make_optimizer,
                                 require_functional)
from cnnlab.engine.schedules import Schedule
from cnnlab.engine.step import StepSettings, TrainState
from cnnlab.models import InitFromData, create_deterministic_model
from cnnlab.models.registry import get_entry
from cnnlab.utils.devices import resolve_device as _resolve_device
from cnnlab.utils.memory import retain_freed_memory
from cnnlab.utils.seeding import derive_seed

_AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU executes bf16 matmuls/convolutions natively (AVX-512 BF16 or AMX), not emulated."""
    try:
        flags = next((line for line in open("/proc/cpuinfo", encoding="ascii", errors="replace") if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(precision actually used, why) for ``train.precision``; "auto" picks bf16 only where it is native."""
    if precision != "auto":
        return precision, "set by train.precision"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this CUDA device supports bf16"
        return "fp16", "auto: this CUDA device has no bf16; fp16 with dynamic loss scaling"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: the CPU has native bf16 instructions (AVX-512 BF16 / AMX)"
    return "fp32", f"auto: no native bf16 on this {device.type} (bf16 would be emulated, slower)"


def resolve_channels_last(setting: bool | None, precision: str, device: torch.device) -> tuple[bool, str]:
    """(memory format is channels_last, why) for ``train.channels_last``; None ("auto") picks channels_last where
    bf16 autocast runs on a CPU: oneDNN's bf16 convolutions run in that layout, and a bare ResNet/CNN step
    measured 1.8-2.5x the fp32 NCHW step there (benchmarks/profile_trainer.py, BENCHMARKS.md)."""
    if setting is not None:
        return setting, "set by train.channels_last"
    if precision == "bf16" and device.type == "cpu":
        return True, "auto: bf16 autocast on a CPU runs fastest in channels_last"
    return False, f"auto: NCHW with {precision} on {device.type} (channels_last is chosen only with bf16 on a CPU)"


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``train.device`` as a torch.device (``auto``: CUDA when there is one); a device this machine lacks is a
    ConfigError naming ``key``. The toolkit's :func:`cnnlab.utils.devices.resolve_device`, kept here for importers."""
    return _resolve_device(name, key=key, error=ConfigError)


MALLOC_ENV = "CNNLAB_MALLOC"


def apply_malloc(device: torch.device) -> tuple[str, str]:
    """The C allocator for a run on ``device``: (``retain`` | ``system``, why). CPU runs retain freed memory
    (:func:`cnnlab.utils.memory.retain_freed_memory`: fewer page faults, faster steps) unless the environment
    says ``CNNLAB_MALLOC=system``; ``CNNLAB_MALLOC=retain`` asks for it on any device. A runtime choice like the
    thread count, so not part of a run's config."""
    setting = os.environ.get(MALLOC_ENV, "auto").strip().lower() or "auto"
    if setting not in ("auto", "retain", "system"):
        raise ConfigError(f"{MALLOC_ENV}={setting!r}: expected retain, system or auto")
    if setting == "system" or (setting == "auto" and device.type != "cpu"):
        return "system", f"set by {MALLOC_ENV}=system" if setting == "system" else f"auto: left as it is for a {device.type} run"
    applied, why = retain_freed_memory()
    return ("retain" if applied else "system"), (f"set by {MALLOC_ENV}=retain: " if setting == "retain" else "auto: ") + why


def apply_runtime(config: RunConfig) -> None:
    """Threads and determinism flags (process-wide)."""
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    if config.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif config.train.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True


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
    if config.model.weights is not None and not os.path.isfile(config.model.weights):
        raise ConfigError(f"model.weights: no file {config.model.weights!r} (a local state_dict file is expected)")


def val_indices(config: RunConfig, labels: Tensor) -> Tensor | None:
    """Train-split indices held out for validation (``data.val_split``): stratified by class, drawn with
    ``data.val_seed``, sorted; None without a validation split."""
    v = config.data.val_split
    if v is None:
        return None
    n = int(labels.shape[0])
    count = v if isinstance(v, int) else int(round(v * n))
    if not 1 <= count < n:
        raise ConfigError(f"data.val_split: {v!r} holds out {count} of the {n} train examples; "
                          f"it must leave at least one example on each side")
    from sklearn.model_selection import train_test_split

    y = labels.cpu().numpy()
    counts = torch.bincount(labels.cpu())
    stratify = y if count >= int((counts > 0).sum()) and int(counts[counts > 0].min()) >= 2 else None
    _, held = train_test_split(range(n), test_size=count, random_state=derive_seed(config.data.val_seed, "val") % (2**32),
                               stratify=stratify)
    return torch.as_tensor(sorted(held), dtype=torch.int64)


def subset_indices(config: RunConfig, n: int, held_out: Tensor | None = None) -> Tensor | None:
    """Train indices of the run: ``data.subset`` taken from the examples not held out for validation."""
    pool = None
    if held_out is not None:
        keep = torch.ones(n, dtype=torch.bool)
        keep[held_out] = False
        pool = torch.nonzero(keep).flatten()
    s = config.data.subset
    if s is None:
        return pool
    m = n if pool is None else int(pool.numel())
    count = s if isinstance(s, int) else max(1, int(round(s * m)))
    if count > m:
        raise ConfigError(f"data.subset: {count} examples asked for, the train split has {m}"
                          + (" after the validation split" if pool is not None else ""))
    if config.data.subset_seed is None:
        chosen = torch.arange(count)
    else:
        gen = torch.Generator().manual_seed(derive_seed(config.data.subset_seed, "subset"))
        chosen = torch.randperm(m, generator=gen)[:count].sort().values
    return chosen if pool is None else pool[chosen]


def check_monitors(config: RunConfig) -> None:
    """A ``val_*`` monitor needs ``data.val_split``; fail before compute rather than at the first epoch end."""
    watched = []
    if config.schedule.name == "plateau":
        watched.append(("schedule.monitor", config.schedule.monitor))
    if config.callbacks.early_stopping is not None:
        watched.append(("callbacks.early_stopping.monitor", config.callbacks.early_stopping.monitor))
    if config.callbacks.checkpoint is not None:
        watched.append(("callbacks.checkpoint.monitor", config.callbacks.checkpoint.monitor))
    for key, monitor in watched:
        if monitor.startswith("test_"):
            warnings.warn(f"{key}: {monitor!r} selects on the test split, so the test accuracy is no longer an unbiased "
                          f"estimate; set data.val_split and monitor val_* instead", UserWarning, stacklevel=3)
        if monitor.startswith("val_") and config.data.val_split is None:
            raise ConfigError(f"{key}: {monitor!r} is measured on the validation split; set data.val_split "
                              f"(e.g. data.val_split=0.1) or monitor a train_* metric")


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
    val_indices: Tensor | None = None  # train-split indices held out for validation (data.val_split)
    channels_last: bool = False  # the memory format in use (train.channels_last resolved)

    def initial_state(self) -> TrainState:
        return TrainState.from_model(self.model, self.settings.optimizer, fp16=self.settings.autocast_dtype == torch.float16)

    def eval_images(self, images: Tensor, start: int, end: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Eval transform (resize, channels, normalise; no augmentation) of ``images[start:end]`` on device."""
        x = images[start:end].to(self.device, non_blocking=True)
        return self.augment.eval_transform(x, dtype=dtype, channels_last=self.channels_last)


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
    check_monitors(config)
    device = device or resolve_device(config.train.device)
    if dataset is None:
        dataset = load_dataset(config.data.name, root=config.data.root, **config.data.options)
    t = config.train
    in_channels = config.model.in_channels or dataset.in_channels
    entry = get_entry(config.model.name)
    serve = config.data.resolution or entry.resolution  # a name such as resnet18_224 implies its input size
    resolution = serve or dataset.resolution
    if resolution < entry.min_resolution or (entry.max_resolution and resolution > entry.max_resolution):
        limits = f"{entry.min_resolution}..{entry.max_resolution}" if entry.max_resolution else f"at least {entry.min_resolution}"
        raise ConfigError(
            f"data.resolution: {config.model.name!r} needs inputs of {limits} px, "
            f"the data is served at {resolution} px (set data.resolution)")

    try:
        model = create_deterministic_model(
            config.seed, config.model.name, "model", num_classes=dataset.num_classes, in_channels=in_channels,
            init=config.model.init, weights=config.model.weights, **config.model.options)
    except (FileNotFoundError, ValueError) as e:
        if config.model.weights is None:
            raise
        raise ConfigError(f"model.weights: {e}") from None
    if isinstance(model, InitFromData) and config.model.weights is None:  # the model's own data-dependent init
        model.init_from_data(_init_batch(dataset, in_channels, resolution))
    model = model.to(device)
    precision, _ = resolve_precision(t.precision, device)
    channels_last, _ = resolve_channels_last(t.channels_last, precision, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch's stub omits memory_format
    if t.compile:
        model.forward = torch.compile(model.forward)

    if in_channels != dataset.in_channels or serve:
        mean, std = converted_stats(dataset.train.images, channels=in_channels, resize=serve)
    else:
        mean, std = dataset.mean, dataset.std
    augment = Augment(
        mean, std, crop_padding=config.data.crop_padding, crop_mode=config.data.crop_mode,
        flip=None if config.data.flip == "none" else config.data.flip, cutout=config.data.cutout,
        resize=serve, channels=in_channels if in_channels != dataset.in_channels else None,
        seed=derive_seed(config.seed, "augment") % (2**31))
    augment.validate_shape(dataset.train.images.shape)

    if weights is not None and weights.shape != (len(dataset.train),):
        raise ValueError(f"weights must have shape ({len(dataset.train)},), got {tuple(weights.shape)}")
    if t.batch_size % world_size:
        raise ConfigError(f"train.batch_size: {t.batch_size} is not divisible by the {world_size} data-parallel ranks")
    held_out = val_indices(config, dataset.train.labels)
    loader = BatchLoader(
        dataset.train.images, dataset.train.labels, t.batch_size, seed=derive_seed(config.seed, "data"),
        shuffle=True, drop_last=t.drop_last, indices=subset_indices(config, len(dataset.train), held_out), weights=weights,
        augment=augment, device=device, dtype=torch.float32, channels_last=channels_last,
        rank=rank, world_size=world_size)
    if len(loader) == 0:
        raise ConfigError(f"train.batch_size: {t.batch_size} leaves no batch (drop_last with {loader.num_examples} examples)")

    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    o = config.optim
    groups = build_param_groups(named, o.weight_decay, no_decay_1d=o.no_decay_1d, bias_lr_scale=o.bias_lr_scale)
    if o.torch_class:
        optimizer = torch_class_optimizer(config, model, groups)
    else:
        optimizer = make_optimizer(o.name, groups, momentum=o.momentum, nesterov=o.nesterov, betas=o.betas, eps=o.eps)
    if t.accumulate_batches > 1 and t.accumulation > 1:
        raise ConfigError("train.accumulate_batches and train.accumulation both split the step; set one of them to 1")
    settings = StepSettings(
        optimizer=optimizer, label_smoothing=t.label_smoothing, grad_clip=t.grad_clip, accumulation=t.accumulation,
        autocast_dtype=_AMP[precision], bn_stats=t.bn_stats,
        frozen={n: p.detach() for n, p in model.named_parameters() if not p.requires_grad})
    schedule = make_schedule(config, math.ceil(len(loader) / t.accumulate_batches))
    return RunParts(config, device, dataset, model, augment, loader, settings, schedule, in_channels, held_out, channels_last)


def torch_class_optimizer(config: RunConfig, model: nn.Module, groups) -> FunctionalOptimizer:
    """``optim.torch_class``: the named torch optimizer over the run's parameter groups, as the step's optimizer."""
    import importlib

    o = config.optim
    module, _, attr = (o.torch_class or "").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr) if module else None
    except (ImportError, AttributeError):
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optim.torch_class: {o.torch_class!r} is not an importable torch.optim.Optimizer class "
                          "(e.g. torch.optim.RMSprop)")
    named = dict(model.named_parameters())
    torch_groups = [{"params": [named[n] for n in g.params], "weight_decay": g.weight_decay, "lr": o.lr * g.lr_scale}
                    for g in groups if g.params]
    try:
        opt = cls(torch_groups, **o.options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"optim.options: {o.torch_class}: {e}") from None
    functional, _ = from_torch_optimizer(opt, {n: p for n, p in named.items() if p.requires_grad})
    if isinstance(functional, TorchOptimizerStep):
        functional.drive_lr = True  # the run's schedule sets the rate
    return functional


def nonfunctional_optimizer(config: RunConfig) -> str | None:
    """Why ``optim.torch_class`` cannot run as the functional (differentiable, vmappable) update, or None if it can."""
    if not config.optim.torch_class:
        return None
    probe = nn.Linear(2, 2)
    optimizer = torch_class_optimizer(config, probe, build_param_groups(dict(probe.named_parameters()), config.optim.weight_decay))
    try:
        require_functional(optimizer, "this analysis")
    except ValueError as e:
        return f"optim.torch_class: {e}"
    return None


def make_schedule(config: RunConfig, steps_per_epoch: int) -> Schedule:
    s = config.schedule
    base = s.max_lr if (s.name == "onecycle" and s.max_lr) else config.optim.lr
    options = s.model_dump()
    return Schedule(s.name, base, steps_per_epoch, config.train.epochs,
                    warmup_steps=int(math.ceil(s.warmup_epochs * steps_per_epoch)), options=options)


def _init_batch(dataset: ImageDataset, in_channels: int, resolution: int, n: int = 5000) -> Tensor:
    """The first ``n`` training images, normalised, at the served channels and size, not augmented: the
    batch a model's ``init_from_data`` hook gets (airbench whitens its first layer from it)."""
    images = dataset.train.images[:n]
    aug = Augment(dataset.mean if in_channels == dataset.in_channels else converted_stats(images, channels=in_channels)[0],
                  dataset.std if in_channels == dataset.in_channels else converted_stats(images, channels=in_channels)[1],
                  resize=resolution if resolution != dataset.resolution else None,
                  channels=in_channels if in_channels != dataset.in_channels else None)
    return aug.eval_transform(images)
