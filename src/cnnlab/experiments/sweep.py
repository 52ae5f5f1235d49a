"""A sweep expanded into runs: ``Sweep.load(path).runs()`` -> SweepRun (index, name, run_dir, factors, config, status).

Runs are ordered seed-major (all runs of the first seed, then the next), so adding a seed keeps the indices
of existing runs, and a half-finished sweep already covers every factor combination once. Indices are
1-based, like scheduler array task ids. Every expanded RunConfig is validated (keys, values, model and
dataset names, model options) when the sweep is loaded, before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from cnnlab.engine.config import ConfigError, RunConfig, build_config, deep_merge, load_yaml, parse_overrides, set_dotted
from cnnlab.engine.rundir import canonical, config_digest
from cnnlab.experiments import store
from cnnlab.experiments.spec import Factor, SweepSpec, parse_sweep
from cnnlab.experiments.templates import render, short_value


@dataclass
class SweepRun:
    """One run of a sweep. ``factors``: factor name -> raw value; ``labels``: factor name -> label/value."""

    index: int
    name: str
    run_dir: Path
    seed: int
    config: RunConfig
    overrides: dict[str, Any]
    factors: dict[str, Any]
    labels: dict[str, Any]
    fields: dict[str, Any] = field(repr=False)

    @property
    def expected(self) -> dict[str, Any]:
        """The resolved config as the run store compares it (canonical JSON types)."""
        if "_expected" not in self.__dict__:
            self.__dict__["_expected"] = canonical(self.config.to_dict())
        return self.__dict__["_expected"]

    @property
    def digest(self) -> str:
        return config_digest(self.expected)

    def state(self, *, ignore_lock: bool = False) -> store.RunState:
        return store.run_state(self.run_dir, ignore_lock=ignore_lock, expected=self.expected)

    @property
    def status(self) -> str:
        return self.state().status

    def result(self) -> Optional[dict[str, Any]]:
        """result.json of the run, or None if it has not finished."""
        return store.read_json(self.run_dir / store.RESULT_NAME)

    def load(self, **kwargs: Any):
        """The trained run (``cnnlab.engine.run.load_run``): model, dataset, config, result."""
        from cnnlab.engine.run import load_run

        return load_run(self.run_dir, **kwargs)

    def plan_row(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "run_dir": str(self.run_dir), "seed": self.seed,
                "factors": self.labels, "overrides": self.overrides}


class Sweep:
    """A sweep file expanded into validated runs under a run-store root."""

    def __init__(self, spec: SweepSpec, root: Path, runs: list[SweepRun], set_overrides: list[str]):
        self.spec = spec
        self.root = root
        self._runs = runs
        self.set_overrides = list(set_overrides)

    # ----------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike, *, overrides: Sequence[str] = (), root: str | os.PathLike | None = None,
             validate: bool = True) -> "Sweep":
        """Read, expand and validate a sweep file.

        ``overrides``: ``key=value`` settings applied to the base of every run (e.g. ``train.epochs=50``).
        ``root``: run-store directory (default: the file's ``root:``, else ``runs/<sweep name>``).
        ``validate=False`` skips the model/dataset name checks (the config schema is always checked).
        """
        path = Path(path)
        raw = load_yaml(path)
        spec = parse_sweep(raw, path)
        set_overrides = list(overrides)
        base = _apply_set(spec, set_overrides)
        root_path = Path(root if root is not None else (spec.root or Path("runs") / spec.name))
        runs = _expand(spec, base, root_path, validate)
        return cls(spec, root_path, runs, set_overrides)

    # ----------------------------------------------------------------- access
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def path(self) -> Path:
        return self.spec.path

    @property
    def factors(self) -> list[Factor]:
        return self.spec.factors

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[SweepRun]:
        return iter(self._runs)

    def runs(self, status: str | Iterable[str] | None = None) -> list[SweepRun]:
        """All runs, or those whose current status is ``status`` (one name or several)."""
        if status is None:
            return list(self._runs)
        wanted = {status} if isinstance(status, str) else set(status)
        bad = wanted - set(store.STATUSES)
        if bad:
            raise ValueError(f"unknown status {sorted(bad)}; choose from {', '.join(store.STATUSES)}")
        return [r for r in self._runs if r.status in wanted]

    def run(self, index: int) -> SweepRun:
        """Run ``index`` (1-based)."""
        if not 1 <= index <= len(self._runs):
            raise IndexError(f"run index {index} is out of range: the sweep {self.name!r} has runs 1..{len(self._runs)}")
        return self._runs[index - 1]

    def select(self, spec: str | None) -> list[SweepRun]:
        """Runs named by an index list such as ``"1-8,12"`` (all runs when ``spec`` is None)."""
        if not spec:
            return list(self._runs)
        out: list[SweepRun] = []
        for part in spec.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    lo, hi = (int(p) for p in part.split("-", 1))
                    idx = range(lo, hi + 1)
                else:
                    idx = range(int(part), int(part) + 1)
            except ValueError:
                raise ValueError(f"bad index list {spec!r}: expected e.g. 1-8,12") from None
            if not idx:
                raise ValueError(f"{part!r} is an empty range (from {idx.start} down to {idx.stop - 1}); write it low-high")
            if idx.start < 1 or idx.stop - 1 > len(self._runs):
                raise ValueError(f"{part!r} is out of range: the sweep {self.name!r} has runs 1..{len(self._runs)}")
            for i in idx:
                out.append(self.run(i))
        return out

    def states(self) -> list[tuple[SweepRun, store.RunState]]:
        """Every run with its current state (one pass over the run store)."""
        return [(r, r.state()) for r in self._runs]

    def status(self) -> dict[str, Any]:
        """Counts per status plus one record per run."""
        counts = {s: 0 for s in store.STATUSES}
        rows = []
        for run, st in self.states():
            counts[st.status] += 1
            rows.append({"index": run.index, "name": run.name, "status": st.status, "detail": st.detail,
                         "resumable": st.resumable, "run_dir": str(run.run_dir)})
        return {"sweep": self.name, "root": str(self.root), "total": len(self._runs), "counts": counts, "runs": rows}

    def plan(self) -> list[dict[str, Any]]:
        return [r.plan_row() for r in self._runs]


# --------------------------------------------------------------------- expansion
def _apply_set(spec: SweepSpec, overrides: list[str]) -> dict[str, Any]:
    parsed = parse_overrides(overrides)
    flat = dict(_flatten(parsed))
    for f in spec.factors:
        for key in flat:
            if key == f.key or key.startswith(f.key + ".") or f.key.startswith(key + "."):
                raise ConfigError(f"cannot set {key!r} for the whole sweep: it is the sweep factor {f.name!r}")
    if "seed" in flat and spec.seeds is not None:
        raise ConfigError("cannot set 'seed' for the whole sweep: the sweep lists its seeds")
    if "name" in flat:
        raise ConfigError("cannot set 'name': run names come from the sweep's run_name template")
    return deep_merge(spec.base, parsed)


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def default_run_name(spec: SweepSpec, n_seeds: int) -> str:
    parts = ["{" + f.name + "}" for f in spec.factors]
    if n_seeds > 1 or not parts:
        parts.append("seed{seed}")
    return "_".join(parts)


def _builtins(config: RunConfig, seed: int, index: int, sweep: str, validate: bool) -> dict[str, Any]:
    from cnnlab.models import model_family

    try:
        family = model_family(config.model.name)
    except KeyError:
        if validate:
            raise
        family = "unknown"
    d = config.data
    return {
        "sweep": sweep, "index": index, "seed": seed, "model": config.model.name, "family": family,
        "dataset": d.name, "resolution": d.resolution if d.resolution is not None else "native",
        "batch_size": config.train.batch_size, "epochs": config.train.epochs, "optimizer": config.optim.name,
        "lr": config.optim.lr, "weight_decay": config.optim.weight_decay,
    }


def _expand(spec: SweepSpec, base: dict[str, Any], root: Path, validate: bool) -> list[SweepRun]:
    from cnnlab.engine.setup import validate_names

    seeds = spec.seeds if spec.seeds is not None else [int(base.get("seed", 0))]
    name_tpl = spec.run_name or default_run_name(spec, len(seeds))
    where = f"sweep {spec.path}"
    checked: set[str] = set()
    runs: list[SweepRun] = []
    combos = list(itertools.product(*(range(len(a)) for a in spec.axes)))
    aliases = [f.alias for f in spec.factors if f.alias]
    index = 0
    for seed in seeds:
        for combo in combos:
            index += 1
            raw = copy.deepcopy(base)
            overrides: dict[str, Any] = {}
            factors: dict[str, Any] = {}
            labels: dict[str, Any] = {}
            for axis, level in zip(spec.axes, combo):
                for f in axis.factors:
                    value = copy.deepcopy(f.values[level])
                    set_dotted(raw, f.key, value)
                    overrides[f.key] = value
                    factors[f.name] = value
                    labels[f.name] = f.label(level)
            raw["seed"] = seed
            overrides["seed"] = seed
            desc = ", ".join(f"{k}={short_value(v)}" for k, v in labels.items()) or "base"
            try:
                config = build_config(raw)
            except ConfigError as e:
                raise ConfigError(f"{where}: run {index} ({desc}, seed {seed}): {e}") from None
            if validate:
                key = json.dumps([config.model.name, config.model.options, config.data.name], sort_keys=True, default=str)
                if key not in checked:
                    try:
                        validate_names(config)
                    except ConfigError as e:
                        raise ConfigError(f"{where}: run {index} ({desc}): {e}") from None
                    checked.add(key)
            fields = _builtins(config, seed, index, spec.name, validate)
            for f in spec.factors:
                if f.alias and f.alias not in factors and aliases.count(f.alias) == 1:
                    fields[f.alias] = labels[f.name]
            fields.update(labels)
            cfg_dict = config.to_dict()
            name = render(name_tpl, fields, cfg_dict, what=f"{where}: run_name")
            layout = render(spec.layout, fields, cfg_dict, what=f"{where}: layout") if spec.layout else ""
            _check_folder(name, f"{where}: run_name (run {index}: {desc})", single=True)
            if layout:
                _check_folder(layout, f"{where}: layout (run {index}: {desc})", single=False)
            config.name = name
            run_dir = root / layout / name if layout else root / name
            _check_inside(root, run_dir, f"{where}: run {index} ({desc})")
            runs.append(SweepRun(index, name, run_dir, seed, config, overrides, factors, labels, fields))
    _check_unique(runs, where)
    return runs


def _check_folder(text: str, where: str, *, single: bool) -> None:
    """A rendered run name (one folder) or layout (relative folders) must stay inside the run-store root."""
    parts = [text] if single else text.split("/")
    if text.startswith("/") or "\0" in text:
        raise ConfigError(f"{where}: renders to {text!r}, not a relative folder name")
    if single and "/" in text:
        raise ConfigError(f"{where}: renders to {text!r}, which contains '/' (from a factor label or value?); "
                          "a run name is one folder: put folders in layout")
    for part in parts:
        if part in ("", ".", ".."):
            raise ConfigError(f"{where}: renders to {text!r}, whose part {part!r} is not a folder inside the "
                              "run-store root (check the factor labels and values it uses)")


def _check_inside(root: Path, run_dir: Path, where: str) -> None:
    base = root.resolve()
    target = run_dir.resolve()
    if base not in target.parents:
        raise ConfigError(f"{where}: its run directory {run_dir} resolves to {target}, outside the run-store root "
                          f"{root} (a symbolic link in the layout?)")


def _check_unique(runs: list[SweepRun], where: str) -> None:
    seen: dict[Path, SweepRun] = {}
    for r in runs:
        other = seen.get(r.run_dir)
        if other is not None:
            diff = [k for k in r.labels if r.labels[k] != other.labels.get(k)] + (["seed"] if r.seed != other.seed else [])
            raise ConfigError(
                f"{where}: runs {other.index} and {r.index} both map to {r.run_dir}; "
                f"put the factors that differ ({', '.join(diff) or 'none'}) into run_name or layout")
        seen[r.run_dir] = r
