"""The sweep file: a base RunConfig, ``grid:`` factors, ``zip:`` groups, ``seeds:``, templates, executor options
(checked against the executor registry).

Parsing only; expanding a sweep into runs is ``cnnlab.experiments.sweep``. Every mistake is a ConfigError
that names the sweep file and the bad key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from cnnlab.engine.config import ConfigError

TOP_LEVEL_KEYS = ("name", "description", "root", "config", "base", "grid", "zip", "seeds", "run_name", "layout", "executors")


@dataclass(frozen=True)
class Factor:
    """One swept config key: its values and (optionally) a short label per value."""

    name: str  # template field and results column
    key: str  # dotted RunConfig key it sets
    values: tuple[Any, ...]
    labels: Optional[tuple[str, ...]] = None  # one label per value, or None
    alias: Optional[str] = None  # last part of a dotted key, also usable as a field

    def label(self, i: int) -> Any:
        """The label of level ``i`` if the factor has labels, else its raw value."""
        return self.labels[i] if self.labels is not None else self.values[i]


@dataclass(frozen=True)
class Axis:
    """One dimension of the cartesian product: a grid factor (one factor) or a zip group (parallel factors)."""

    factors: tuple[Factor, ...]

    def __len__(self) -> int:
        return len(self.factors[0].values)


class ExecutorOptions:
    """The sweep file's ``executors:`` section: per executor name, its options model (``Executor.options_model``).

    ``executors.get("sge")`` (or ``executors.sge``) is the section as given, or the model's defaults where the
    file has none. Which names exist, and which options each takes, is the executor registry's business.
    """

    def __init__(self, given: Optional[dict[str, BaseModel]] = None) -> None:
        self.given = dict(given or {})

    def get(self, name: str) -> Any:
        if name in self.given:
            return self.given[name]
        from cnnlab.experiments.executors import EXECUTORS  # importing the package registers the built-in executors

        return EXECUTORS.get(name).options_model()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name == "given":
            raise AttributeError(name)
        try:
            return self.get(name)
        except ValueError as e:
            raise AttributeError(str(e)) from None

    def __repr__(self) -> str:
        return f"ExecutorOptions({self.given!r})"


def parse_executor_options(raw: Any, where: str) -> ExecutorOptions:
    """Validate an ``executors:`` mapping against the executor registry: each key an executor's name, each value
    that executor's options. Errors are ConfigErrors naming ``executors.NAME.KEY``."""
    from cnnlab.experiments.executors import EXECUTORS

    if raw is None:
        return ExecutorOptions()
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: executors must map executor names ({', '.join(EXECUTORS.names())}) to their options, "
                          f"got {type(raw).__name__}")
    given: dict[str, BaseModel] = {}
    for name, section in raw.items():
        try:
            model = EXECUTORS.get(str(name)).options_model
        except ValueError as e:
            raise ConfigError(f"{where}: executors.{name}: {e}") from None
        try:
            given[str(name)] = model.model_validate(section if section is not None else {})
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise ConfigError(f"{where}: executors.{name}{'.' + loc if loc else ''}: {msg}") from None
    return ExecutorOptions(given)


@dataclass
class SweepSpec:
    """A parsed (not yet expanded) sweep file."""

    path: Path
    name: str
    description: str
    root: Optional[str]
    base: dict[str, Any]
    axes: list[Axis]
    seeds: Optional[list[int]]
    run_name: Optional[str]
    layout: str
    executors: ExecutorOptions

    @property
    def factors(self) -> list[Factor]:
        return [f for axis in self.axes for f in axis.factors]


def parse_sweep(raw: Any, path: Path) -> SweepSpec:
    """Check and parse the mapping loaded from a sweep file."""
    where = f"sweep {path}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: must hold a mapping at the top level, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    name = raw.get("name") or path.stem
    if not isinstance(name, str):
        raise ConfigError(f"{where}: name must be a string, got {name!r}")

    base: dict[str, Any] = {}
    if raw.get("config") is not None:
        from cnnlab.engine.config import load_yaml

        cfg_path = Path(raw["config"])
        if not cfg_path.is_absolute():
            cfg_path = path.parent / cfg_path
        base = load_yaml(cfg_path)
    inline = raw.get("base") or {}
    if not isinstance(inline, dict):
        raise ConfigError(f"{where}: base must be a mapping (a RunConfig), got {type(inline).__name__}")
    from cnnlab.engine.config import deep_merge

    base = deep_merge(base, inline)

    axes: list[Axis] = []
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid must map dotted keys (or factor names) to value lists")
    for key, value in grid.items():
        axes.append(Axis((_parse_factor(str(key), value, f"{where}: grid.{key}"),)))
    zips = raw.get("zip") or []
    if isinstance(zips, dict):
        zips = [zips]
    if not isinstance(zips, list):
        raise ConfigError(f"{where}: zip must be a mapping of parallel lists or a list of such mappings")
    for gi, group in enumerate(zips):
        if not isinstance(group, dict) or not group:
            raise ConfigError(f"{where}: zip[{gi}] must be a non-empty mapping of dotted keys to equal-length lists")
        factors = tuple(_parse_factor(str(k), v, f"{where}: zip[{gi}].{k}") for k, v in group.items())
        lengths = {f.name: len(f.values) for f in factors}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"{where}: zip[{gi}] lists must have equal lengths, got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        axes.append(Axis(factors))
    _check_factor_names([f for a in axes for f in a.factors], where)

    seeds = raw.get("seeds")
    if seeds is not None:
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            if seeds < 1:
                raise ConfigError(f"{where}: seeds as a count must be >= 1, got {seeds}")
            seeds = list(range(seeds))
        elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
            raise ConfigError(f"{where}: seeds must be a count or a non-empty list of integers, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"{where}: seeds has duplicates: {seeds}")

    for key in ("run_name", "layout"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ConfigError(f"{where}: {key} must be a template string, got {raw[key]!r}")
    layout = raw.get("layout") or ""
    if layout.startswith("/") or ".." in layout.split("/"):
        raise ConfigError(f"{where}: layout must be a relative path template without '..', got {layout!r}")
    if raw.get("run_name") and "/" in raw["run_name"]:
        raise ConfigError(f"{where}: run_name must not contain '/'; put folders in layout")
    executors = parse_executor_options(raw.get("executors"), where)
    root = raw.get("root")
    if root is not None and not isinstance(root, str):
        raise ConfigError(f"{where}: root must be a path string, got {root!r}")
    return SweepSpec(path, name, str(raw.get("description") or ""), root, base, axes, seeds,
                     raw.get("run_name"), layout, executors)


def _parse_factor(key: str, value: Any, where: str) -> Factor:
    """``dotted.key: [values]``, ``dotted.key: {label: value}`` or ``name: {key: dotted.key, values: ...}``."""
    if isinstance(value, dict) and set(value) == {"key", "values"}:
        name, dotted, values = key, value["key"], value["values"]
        if not isinstance(dotted, str) or not dotted:
            raise ConfigError(f"{where}.key must be a dotted config key such as optim.lr, got {dotted!r}")
    elif isinstance(value, dict) and "key" in value:
        extra = sorted(set(value) - {"key", "values"})
        raise ConfigError(f"{where}: a named factor takes exactly 'key' and 'values', got extra {extra or ['(no values)']}")
    else:
        name, dotted, values = key, key, value
    if name == "seed" or dotted == "seed":
        raise ConfigError(f"{where}: list seeds under the top-level 'seeds:' key, not as a factor")
    if dotted == "name":
        raise ConfigError(f"{where}: the run name comes from run_name, it cannot be a factor")
    labels = None
    if isinstance(values, dict):
        if not values:
            raise ConfigError(f"{where}: needs at least one value")
        labels = tuple(str(k) for k in values)
        values = list(values.values())
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: expected a non-empty list of values or a mapping label -> value, got {values!r}")
    if labels is not None and any(not lbl.strip() for lbl in labels):
        raise ConfigError(f"{where}: labels must be non-empty names (they become parts of run names), got {list(labels)}")
    if labels is not None and len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: labels must be unique, got {list(labels)}")
    alias = dotted.rsplit(".", 1)[-1] if "." in dotted and name == dotted else None
    return Factor(name, dotted, tuple(values), labels, alias)


def _check_factor_names(factors: list[Factor], where: str) -> None:
    seen_names: dict[str, str] = {}
    seen_keys: dict[str, str] = {}
    for f in factors:
        if f.name in seen_names:
            raise ConfigError(f"{where}: factor {f.name!r} is defined twice")
        seen_names[f.name] = f.key
        for other, other_name in seen_keys.items():
            if f.key == other or f.key.startswith(other + ".") or other.startswith(f.key + "."):
                raise ConfigError(f"{where}: factors {other_name!r} ({other}) and {f.name!r} ({f.key}) set the same config key")
        seen_keys[f.key] = f.name


def __getattr__(name: str) -> Any:
    """The executors' options models, once defined here, now live in their executor modules."""
    moved = {"ClusterOptions": "array", "LocalOptions": "local", "RayOptions": "ray_exec"}
    if name in moved:
        import importlib

        return getattr(importlib.import_module(f"cnnlab.experiments.executors.{moved[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
