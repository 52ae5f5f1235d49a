"""A timm-style model registry: ``create_model``, ``list_models``, ``model_info``.

Besides registered names, a model name may be a factory in the user's code, ``"pkg.module:factory"``,
or a name a package registers in the ``cnnlab.models`` entry-point group. Such a factory may take only
``num_classes`` (as the seeds' creators do); ``in_channels`` and options are passed when it accepts them.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import os
import typing
from collections.abc import Sequence
from importlib import metadata
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnlab.utils.registry import Registry
from cnnlab.utils.seeding import derive_seed, fork_rng_seeded


@dataclass(frozen=True)
class ModelEntry:
    """One registered name: the builder it calls and what the name fixes.

    ``model_args`` are the architecture the name stands for (``depth=20``, ``block=BasicBlock``): passed to
    ``factory`` on every build and not options a caller may set. ``defaults`` are options baked into the
    variant (a caller may override them).
    """

    name: str
    factory: Callable[..., nn.Module]
    family: str
    defaults: dict[str, Any] = field(default_factory=dict)
    min_resolution: int = 8
    description: str = ""
    in_channels: int | None = 3  # input channels when the caller does not say (e.g. 1 for an EMNIST model)
    max_resolution: int | None = None  # largest input size the model takes (None: any)
    resolution: int | None = None  # the input size a name implies (seed 003's ``*_224`` names), if any
    alias_of: str | None = None  # the registered name an alias stands for
    model_args: dict[str, Any] = field(default_factory=dict)


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message lists close matches."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


# Registered names and aliases; get_entry also resolves import paths and entry points, with its own message.
_REGISTRY: Registry[ModelEntry] = Registry("model", error=UnknownModelError)
ENTRY_POINT_GROUP = "cnnlab.models"


def register_model(
    name: str,
    *,
    family: str,
    min_resolution: int = 8,
    description: str = "",
    in_channels: int = 3,
    max_resolution: int | None = None,
    model_args: dict[str, Any] | None = None,
    **defaults: Any,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``factory(num_classes, in_channels, **model_args, **options)`` under ``name``.

    Args:
        name (str): The model name ``create_model`` takes.
        family (str): The family it belongs to (``cnnlab models list`` groups by it).
        min_resolution (int, optional): Smallest input side the model takes. Default: 8.
        description (str, optional): One line for ``cnnlab models list``. Default: "".
        in_channels (int, optional): Input channels used when ``create_model`` is not given any. Default: 3.
        max_resolution (int, optional): Largest input side, None for any. Default: None.
        model_args (dict, optional): Arguments of ``factory`` this name fixes, as timm's
            ``model_args = dict(block=BasicBlock, layers=[2, 2, 2, 2])``; they are not options. Default: none.
        **defaults: Options baked into this named variant (``resnet9_paper`` = ``resnet9`` with
            ``width=2.5``, ...); a caller may still override them.

    The factory (a function or an ``nn.Module`` class) is returned unchanged, so one builder may be
    registered under several names.
    """
    fixed = dict(model_args or {})

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = _parameter_names(factory)
        missing = [k for k in fixed if params is not None and k not in params]
        if missing:
            raise ValueError(f"model {name!r}: model_args {missing} are not parameters of {_factory_name(factory)}")
        accepted = _accepted_options(factory, fixed)
        unknown = [k for k in defaults if accepted is not None and k not in accepted]
        if unknown:
            raise ValueError(f"model {name!r}: default option(s) {unknown} are not parameters of {_factory_name(factory)}")
        _REGISTRY.register(name, ModelEntry(name, factory, family, dict(defaults), min_resolution, description,
                                            in_channels, max_resolution, model_args=fixed))
        return factory

    return deco


def register_alias(alias: str, target: str, *, resolution: int | None = None, description: str = "", **defaults: Any) -> None:
    """Register ``alias`` as another name of ``target`` (its options plus ``defaults``).

    ``resolution``: the input size the alias implies (a run serves its data at that size unless
    ``data.resolution`` says otherwise).
    """
    if alias in _REGISTRY:
        raise ValueError(f"model {alias!r} is registered twice")
    base = get_entry(target)
    accepted = _accepted_options(base.factory, base.model_args)
    unknown = [k for k in defaults if accepted is not None and k not in accepted]
    if unknown:
        raise ValueError(f"alias {alias!r}: option(s) {unknown} are not options of {target!r}")
    _REGISTRY.register(alias, ModelEntry(
        alias, base.factory, base.family, {**base.defaults, **defaults}, base.min_resolution,
        description or f"alias of {target}" + (f" at {resolution} px" if resolution else ""), base.in_channels,
        base.max_resolution, resolution, base.alias_of or target, base.model_args))


def _factory_name(factory: Callable[..., Any]) -> str:
    return getattr(factory, "__name__", type(factory).__name__)


def _import_factory(name: str) -> ModelEntry:
    """``"pkg.module:attr"`` -> an entry for that callable (imported from the user's code)."""
    from cnnlab.utils.imports import import_object

    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UnknownModelError(f"model {name!r}: an import path is written 'package.module:factory'")
    try:
        obj = import_object(name)
    except ValueError as e:
        raise UnknownModelError(f"model {name!r}: {e}; is it on PYTHONPATH?") from None
    return _user_entry(name, obj)


def _user_entry(name: str, factory: Any) -> ModelEntry:
    if not callable(factory):
        raise UnknownModelError(f"model {name!r} is not callable (a model factory or nn.Module class is expected)")
    accepts_in = _accepts(factory, "in_channels")
    return ModelEntry(name, factory, "user", {}, 1, f"user model {name}", 3 if accepts_in else None)


def _entry_point(name: str) -> ModelEntry | None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return _user_entry(name, ep.load())
            except Exception as e:  # a broken plug-in package must name itself
                raise UnknownModelError(f"model {name!r}: entry point {ep.value!r} ({ENTRY_POINT_GROUP}) failed to load: {e}") from None
    return None


def entry_point_names() -> list[str]:
    """Model names that installed packages register in the ``cnnlab.models`` entry-point group."""
    return sorted({ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})


def get_entry(name: str) -> ModelEntry:
    """The entry of a registered name or alias, an import path ``pkg.mod:factory``, or an entry point."""
    if name in _REGISTRY:
        return _REGISTRY.get(name)
    if ":" in name:
        return _import_factory(name)
    found = _entry_point(name)
    if found is not None:
        return found
    close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}.{hint} Run `cnnlab models list` to see all {len(_REGISTRY)} models, "
        "or name your own factory as 'package.module:factory'."
    )


def list_models(pattern: str = "*", family: str | None = None, aliases: bool = False) -> list[str]:
    """Sorted registered names matching a shell-style ``pattern`` (and optionally a family).

    ``aliases=True`` also lists the seeds' names for registered models (``construct_rn9``, ``resnet18_224``...).
    """
    return sorted(
        n for n, e in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family) and (aliases or e.alias_of is None)
    )


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have none
        return None


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    sig = _signature(factory)
    if sig is None:
        return True
    params = sig.parameters.values()
    return name in sig.parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _parameter_names(factory: Callable[..., Any]) -> list[str] | None:
    """Names ``factory`` takes by keyword; None when it takes ``**kwargs`` (or has no signature)."""
    sig = _signature(factory)
    if sig is None:
        return None
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY)]


def _accepted_options(factory: Callable[..., nn.Module], model_args: dict[str, Any] | None = None) -> list[str] | None:
    """The options a caller may set: the factory's keyword parameters less num_classes, in_channels and
    the ``model_args`` a registered name fixes."""
    names = _parameter_names(factory)
    if names is None:
        return None
    fixed = model_args or {}
    return [n for n in names if n not in ("num_classes", "in_channels") and n not in fixed]


def model_options(name: str) -> dict[str, tuple[str, Any]]:
    """``{option: (type as written, default)}`` of a model (its variant's baked-in values as defaults)."""
    entry = get_entry(name)
    sig = _signature(entry.factory)
    if sig is None:
        return {}
    hints = _type_hints(entry.factory)
    out = {}
    for p in sig.parameters.values():
        if p.name in ("num_classes", "in_channels") or p.name in entry.model_args \
                or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL, p.POSITIONAL_ONLY):
            continue
        default = entry.defaults.get(p.name, None if p.default is p.empty else p.default)
        hint = hints.get(p.name)
        out[p.name] = (_type_name(hint) if hint is not None else "any", default)
    return out


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations in a user's factory: no type checks
        return {}


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _check_value(key: str, value: Any, hint: Any) -> None:
    """Refuse a value that does not match the factory's annotation: never coerce (``True`` is no int, 'maybe' no bool)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is None:
        return
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        errors = []
        for a in args:
            try:
                return _check_value(key, value, a)
            except ValueError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"option {key!r} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return
    if hint is type(None):
        if value is not None:
            raise ValueError(f"option {key!r} must be None, got {value!r}")
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"option {key!r} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"option {key!r} must be an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"option {key!r} must be a finite number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"option {key!r} must be a string, got {value!r}")
    elif origin in (tuple, list, Sequence) or hint in (tuple, list):
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise ValueError(f"option {key!r} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:  # fixed length, e.g. tuple[int, int, int]
            if len(value) != len(args):
                raise ValueError(f"option {key!r} must be a list of {len(args)} values, got {value!r}")
            for i, (v, a) in enumerate(zip(value, args)):
                _check_value(f"{key}[{i}]", v, a)
        elif args:  # tuple[int, ...], list[int], Sequence[int]
            for i, v in enumerate(value):
                _check_value(f"{key}[{i}]", v, args[0])


def check_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Translate the seeds' option names and check names and types against the factory's signature.

    Returns the options to pass; a bad one raises ValueError naming the key and what was expected.
    """
    from cnnlab.models.compat import translate_options

    entry = get_entry(name)
    accepted = _accepted_options(entry.factory, entry.model_args)
    options = translate_options(options, accepted)
    if accepted is not None:
        bad = [k for k in options if k not in accepted]
        if bad:
            raise ValueError(
                f"model {name!r} does not accept option(s) {', '.join(map(repr, bad))}; "
                f"accepted: {', '.join(accepted) or '(none)'}, plus init"
            )
    hints = _type_hints(entry.factory)
    for key, value in options.items():
        if key in hints:
            _check_value(key, value, hints[key])
    return options


def create_model(
    name: str,
    num_classes: int = 10,
    in_channels: int | None = None,
    init: str = "default",
    weights: str | os.PathLike | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by registered name, alias, import path ``pkg.mod:factory`` or entry-point name.

    ``init``: default | kaiming | xavier. ``in_channels=None``: the model's default. ``weights``: a local
    state_dict file (e.g. torchvision's format) loaded strictly after init. Bad options raise ValueError.
    """
    entry = get_entry(name)
    if in_channels is None:
        in_channels = entry.in_channels
    for key, v in (("num_classes", num_classes), ("in_channels", in_channels)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{key} must be an integer >= 1, got {v!r}")
    options = check_options(name, options)
    kwargs = {**entry.model_args, **entry.defaults, **options}
    if in_channels is not None and _accepts(entry.factory, "in_channels"):
        kwargs["in_channels"] = in_channels
    model = entry.factory(num_classes=num_classes, **kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r}: the factory returned {type(model).__name__}, not an nn.Module")
    apply_init(model, init)
    if weights is not None:
        load_weights(model, weights)
    model.cnnlab_name = name  # type: ignore[assignment]  # nn.Module types attributes as tensors/modules
    return model


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a state_dict file into ``model`` strictly; a mismatch names the missing/unexpected keys."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"weights file {path!r} is not a readable torch state_dict: {e}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):  # common wrappers (a cnnlab checkpoint keeps it under "model")
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path!r} does not hold a state_dict (a mapping of names to tensors)")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"missing keys: {few(missing)}" if missing else "", f"unexpected keys: {few(unexpected)}" if unexpected else "",
                 f"shape mismatches: {few(shapes)}" if shapes else ""]
        raise ValueError(f"weights file {path!r} does not match the model; " + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)


def create_deterministic_model(
    master_seed: int, creator_func: str | Callable[..., nn.Module], instance_id: str | int, **kwargs: Any
) -> nn.Module:
    """Build a model whose weights are a pure function of (master_seed, instance_id, kwargs).

    ``creator_func``: a model name (any that ``create_model`` takes) or a callable such as the seed's
    ``construct_resnet9_paper``, called with ``kwargs``; the keywords are seed 000's. The init seed is
    derived from SHA-256 of the master seed and instance id; the global RNG is restored afterwards, so
    building models never perturbs other random streams.
    """
    with fork_rng_seeded(derive_seed(master_seed, f"model/{instance_id}")):
        if callable(creator_func):
            return creator_func(**kwargs)
        return create_model(creator_func, **kwargs)


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
