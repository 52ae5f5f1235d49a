"""A timm-style model registry: ``create_model``, ``list_models``, ``model_info``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.utils.seeding import derive_seed, fork_rng_seeded


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    family: str
    defaults: dict[str, Any] = field(default_factory=dict)
    min_resolution: int = 8
    description: str = ""
    in_channels: int = 3  # input channels when the caller does not say (e.g. 1 for an EMNIST model)


_REGISTRY: dict[str, ModelEntry] = {}


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


def register_model(
    name: str,
    *,
    family: str,
    min_resolution: int = 8,
    description: str = "",
    in_channels: int = 3,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(num_classes, in_channels, **options)`` under ``name``.

    ``defaults`` are options baked into this named variant (e.g. ``resnet9_paper`` = ``resnet9``
    with ``width=2.5``); a caller may still override them. ``in_channels`` is the variant's default
    input channels, used when ``create_model`` is not given any.
    """

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        accepted = _accepted_options(factory)
        unknown = [k for k in defaults if accepted is not None and k not in accepted]
        if unknown:
            raise ValueError(f"model {name!r}: default option(s) {unknown} are not parameters of {factory.__name__}")
        _REGISTRY[name] = ModelEntry(name, factory, family, dict(defaults), min_resolution, description, in_channels)
        return factory

    return deco


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Run `cnnlab models list` to see all {len(_REGISTRY)} models."
        ) from None


def list_models(pattern: str = "*", family: str | None = None) -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (and optionally a family)."""
    return sorted(
        n for n, e in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)
    )


def _accepted_options(factory: Callable[..., nn.Module]) -> list[str] | None:
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name not in ("num_classes", "in_channels")]


def create_model(
    name: str, num_classes: int = 10, in_channels: int | None = None, init: str = "default", **options: Any
) -> nn.Module:
    """Build a registered model. ``init``: default | kaiming | xavier. Bad options raise ValueError.

    ``in_channels=None`` means the model's registered default (3 unless the variant says otherwise).
    """
    entry = get_entry(name)
    if in_channels is None:
        in_channels = entry.in_channels
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    accepted = _accepted_options(entry.factory)
    if accepted is not None:
        bad = [k for k in options if k not in accepted]
        if bad:
            raise ValueError(
                f"model {name!r} does not accept option(s) {', '.join(map(repr, bad))}; "
                f"accepted: {', '.join(accepted) or '(none)'}, plus init"
            )
    kwargs = {**entry.defaults, **options}
    model = entry.factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    apply_init(model, init)
    model.cnnlab_name = name  # type: ignore[attr-defined]
    return model


def create_deterministic_model(
    master_seed: int, name_or_factory: str | Callable[..., nn.Module], instance_id: str | int, **kwargs: Any
) -> nn.Module:
    """Build a model whose weights are a pure function of (master_seed, instance_id, kwargs).

    The init seed is derived from SHA-256 of the master seed and instance id; the global RNG is
    restored afterwards, so building models never perturbs other random streams.
    """
    with fork_rng_seeded(derive_seed(master_seed, f"model/{instance_id}")):
        if callable(name_or_factory):
            return name_or_factory(**kwargs)
        return create_model(name_or_factory, **kwargs)


def apply_init(model: nn.Module, init: str) -> None:
    """Re-initialise conv and linear weights: default (PyTorch's), kaiming (fan_out, relu) or xavier."""
    if init == "default":
        return
    if init not in ("kaiming", "xavier"):
        raise ValueError(f"init must be one of default, kaiming, xavier; got {init!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad:
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class ModelInfo:
    total_params: int
    trainable_params: int
    size_mb: float  # parameters + buffers, in MiB


def model_info(model: nn.Module) -> ModelInfo:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
    return ModelInfo(total, trainable, nbytes / 2**20)


def model_family(name: str) -> str:
    return get_entry(name).family


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The layer Grad-CAM should attribute to (the model's last conv block)."""
    layer = getattr(model, "gradcam_layer", None)
    if layer is None:
        raise AttributeError(f"{type(model).__name__} does not define a gradcam_layer")
    return layer() if callable(layer) and not isinstance(layer, nn.Module) else layer


def masking_layer(model: nn.Module) -> nn.Module:
    """The first conv-BN-activation block, whose output masking analyses hook.

    Small/CIFAR models hold it as ``model.features``; torchvision-style models keep torchvision's own
    ``features`` naming (the whole trunk) for checkpoint compatibility and expose ``first_block()``.
    """
    first = getattr(model, "first_block", None)
    if callable(first):
        return first()
    features = getattr(model, "features", None)
    if isinstance(features, nn.Module):
        return features
    raise AttributeError(f"{type(model).__name__} defines neither first_block() nor features")


@torch.no_grad()
def output_shape(model: nn.Module, in_channels: int, resolution: int) -> tuple[int, ...]:
    """Output shape for one ``in_channels x resolution x resolution`` input (on the model's device; meta works)."""
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    out = model(torch.zeros(1, in_channels, resolution, resolution, device=device))
    model.train(was_training)
    return tuple(out.shape)


_RANDOM_FILLS = frozenset(
    [
        getattr(torch.Tensor, n)
        for n in ("normal_", "uniform_", "bernoulli_", "cauchy_", "exponential_", "geometric_", "log_normal_", "random_")
    ]
    + [
        getattr(nn.init, n)  # these dispatch as a whole when a mode is active, so are caught before their fills
        for n in ("normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
                  "xavier_uniform_", "orthogonal_", "sparse_")
    ]
)


class _SkipRandomFillsOnMeta(TorchFunctionMode):
    """Meta tensors hold no values, so random init on them is a no-op we may skip; torch's meta
    ``normal_`` would otherwise import torch._dynamo (about 1.5 s) on first use."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RANDOM_FILLS:
            tensor = args[0] if args else kwargs.get("tensor")  # nn.init passes the tensor by keyword
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                return tensor
        return func(*args, **kwargs)


@contextmanager
def meta_device() -> Iterator[None]:
    """Build models on the meta device: exact shapes and parameter counts, no memory, no init cost.

    A forward pass on meta inputs checks every shape without computing anything.
    """
    with torch.device("meta"), _SkipRandomFillsOnMeta():
        yield
