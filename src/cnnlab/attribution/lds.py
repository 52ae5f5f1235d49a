"""Linear datamodeling score (LDS): do attribution scores predict what retraining on subsets does?

For M random subsets (keep masks M × N, a fixed fraction dropped), each subset model is trained with the
run's init and batch layout, dropped examples zero-weighted, and phi measured on the targets. A method's
prediction for subset k is -sum_{i dropped} tau_i (the change from the full run); LDS of a target is the
Spearman correlation over the M models of prediction and actual phi, averaged over targets (TRAK/dattri).

Subset models are trained once per regime (drop fraction, M, seed), stored one record per model as they
finish (a killed study resumes), optionally in parallel worker processes; any number of score sets
(MAGIC, baselines, external files) are then evaluated on the same models.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import numpy as np
import torch
from torch import Tensor

from cnnlab.attribution.magic import measure_state, prepare_config, target_data
from cnnlab.attribution.measures import Measurement, MeasureFn, get_measurement
from cnnlab.attribution.replay import Replay
from cnnlab.attribution.scores import Scores
from cnnlab.data import ImageDataset
from cnnlab.engine.config import RunConfig
from cnnlab.engine.setup import apply_malloc, build_run, resolve_device
from cnnlab.utils.io import save_torch_atomic, write_json_atomic
from cnnlab.utils.seeding import derive_seed, make_generator


@dataclass(frozen=True)
class Regime:
    """Which subsets: drop fraction, number of subset models, mask seed."""

    drop: float
    models: int
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.drop < 1:
            raise ValueError(f"drop must be a fraction in (0, 1), got {self.drop}")
        if self.models < 3:
            raise ValueError(f"models: Spearman correlation over subset models needs at least 3, got {self.models}")

    @property
    def tag(self) -> str:
        return f"drop{self.drop:g}-m{self.models}-s{self.seed}"


def make_masks(n: int, drop: float, models: int, seed: int = 0) -> Tensor:
    """Keep masks (models × n, bool): each drops exactly max(1, round(drop * n)) examples, drawn at random
    from the seed path ``(seed, "lds/masks/{drop}")``."""
    n_drop = max(1, int(round(drop * n)))
    if n_drop >= n:
        raise ValueError(f"drop {drop} of {n} training examples leaves none")
    gen = make_generator(seed, f"lds/masks/{drop:g}")
    keep = torch.ones(models, n, dtype=torch.bool)
    for k in range(models):
        keep[k, torch.randperm(n, generator=gen)[:n_drop]] = False
    return keep


def full_weights(keep: Tensor, train_indices: Tensor, num_train: int) -> Tensor:
    """Per-example weights over the whole train split: 1 kept, 0 dropped (examples outside the run's subset: 0)."""
    w = torch.zeros(num_train, dtype=torch.float32)
    w[train_indices] = keep.to(torch.float32)
    return w


def train_subset_phi(config: RunConfig, weights: Tensor, targets: Iterable[int],
                     measure: Union[str, Measurement, MeasureFn] = "loss", dataset: ImageDataset | None = None) -> Tensor:
    """Train ``config`` with per-example ``weights`` (same init, batches and augmentation as the full run;
    bitwise the Trainer's run with ``weights=``) and return phi on the targets (K,), float64."""
    parts = build_run(prepare_config(config), dataset=dataset)
    final = Replay(parts, weights=weights).forward()
    x, y = target_data(parts, list(targets))
    with torch.no_grad():
        return measure_state(parts, final, x, y, measure).to(torch.float64).cpu()


def population_available() -> bool:
    try:
        from cnnlab.population.train import train_population  # noqa: F401
    except ImportError:
        return False
    return True


def train_subsets_population(config: RunConfig, weights: Tensor, targets: Iterable[int],
                             measure: Union[str, Measurement, MeasureFn] = "loss", dataset: ImageDataset | None = None,
                             *, backend: str = "auto", workers: int | None = None) -> Tensor:
    """Train M subset models at once with the population engine (``weights``: M × N_train) -> phi (M, K)."""
    from cnnlab.population.train import train_population

    parts = build_run(prepare_config(config), dataset=dataset)
    res = train_population(parts.model, parts.train_loader, parts.settings, epochs=parts.config.train.epochs,
                           lr=parts.schedule.lr, member_weights=weights.to(parts.device), backend=backend,
                           workers=workers)
    x, y = target_data(parts, list(targets))
    with torch.no_grad():
        return torch.stack([measure_state(parts, res.state.member(i), x, y, measure).to(torch.float64).cpu()
                            for i in range(weights.shape[0])])


ENGINES = ("population", "step")


# ------------------------------------------------------------------------------ statistics
def predictions(scores: Tensor, keep: Tensor) -> Tensor:
    """Predicted change of phi for each subset model: -(dropped @ tau), (M, K)."""
    dropped = (~keep).to(torch.float64)
    return -(dropped @ scores.to(torch.float64))


def _rank_corr(a: np.ndarray, b: np.ndarray, kind: str) -> float:
    from scipy import stats

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    r = stats.spearmanr(a, b)[0] if kind == "spearman" else stats.pearsonr(a, b)[0]
    return float(r)


def lds_statistics(pred: Tensor, actual: Tensor, *, bootstrap: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Spearman (and Pearson) per target over models, their means, and a percentile bootstrap CI of the
    mean Spearman over targets."""
    p, a = pred.double().numpy(), actual.double().numpy()
    sp = np.array([_rank_corr(p[:, j], a[:, j], "spearman") for j in range(p.shape[1])])
    pe = np.array([_rank_corr(p[:, j], a[:, j], "pearson") for j in range(p.shape[1])])
    ok = sp[np.isfinite(sp)]
    ci: list[float] = [float("nan"), float("nan")]
    if ok.size >= 2 and bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = ok[rng.integers(0, ok.size, size=(bootstrap, ok.size))].mean(1)
        ci = [float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))]
    return {"lds": float(ok.mean()) if ok.size else float("nan"), "ci": ci, "ci_level": level,
            "pearson": float(np.nanmean(pe)) if np.isfinite(pe).any() else float("nan"),
            "spearman_per_target": sp.tolist(), "pearson_per_target": pe.tolist(),
            "targets_used": int(ok.size), "models": int(p.shape[0])}


# ------------------------------------------------------------------------------ the study
def _worker_init(config_dict: dict, dataset: ImageDataset | None, targets: list[int], measure: str, threads: int) -> None:
    torch.set_num_threads(threads)
    apply_malloc(torch.device("cpu"))
    global _W
    from cnnlab.engine.config import build_config

    _W = {"config": build_config(config_dict), "dataset": dataset, "targets": targets, "measure": measure}


_W: dict[str, Any] = {}


def _worker_train(k: int, weights: Tensor, out: str, provenance: dict[str, Any]) -> int:
    t0 = time.perf_counter()
    phi = train_subset_phi(_W["config"], weights, _W["targets"], _W["measure"], _W["dataset"])
    _write_record(Path(out), k, phi, time.perf_counter() - t0, provenance)
    return k


def _write_record(path: Path, k: int, phi: Tensor, seconds: float, provenance: dict[str, Any] | None = None) -> None:
    write_json_atomic(path, {"model": k, "phi": phi.tolist(), "time_s": seconds, "provenance": provenance or {}})


class LDSStudy:
    """The subset models of one regime for one analysis run, stored under ``RUN_DIR/lds/<regime>/``.

    ``num_train``: size of the dataset's train split (weights are indexed by dataset index);
    ``dataset``: pass it when it is not loadable by the config's name (it is then sent to workers).
    """

    def __init__(self, run_dir: str | Path, regime: Regime, *, config: RunConfig, train_indices: Tensor,
                 targets: list[int], measure: Union[str, Measurement, MeasureFn] = "loss",
                 num_train: int, dataset: ImageDataset | None = None):
        self.run_dir = Path(run_dir)
        self.regime = regime
        self.config = config
        self.train_indices = train_indices
        self.targets = list(targets)
        self.measure = measure
        self.measure_name = get_measurement(measure).name
        self.dataset = dataset
        self.num_train = num_train
        self.dir = self.run_dir / "lds" / regime.tag
        self.keep = self._masks()

    def _masks(self) -> Tensor:
        path = self.dir / "masks.pt"
        keep = make_masks(self.train_indices.numel(), self.regime.drop, self.regime.models, self.regime.seed)
        meta: dict[str, Any] = {"train_indices": self.train_indices, "targets": torch.as_tensor(self.targets), "measure": self.measure_name}
        if path.is_file():
            old = torch.load(path, map_location="cpu", weights_only=True)
            differ = [name for name, same in (
                ("masks", torch.equal(old["keep"], keep)),
                ("train indices", torch.equal(old["train_indices"], self.train_indices)),
                ("targets", torch.equal(old["targets"], meta["targets"])),
                ("measurement", old["measure"] == self.measure_name)) if not same]
            if differ:
                raise ValueError(f"{self.dir} holds subset models for other {', '.join(differ)}; "
                                 "rerun with --force to retrain them")
        else:
            save_torch_atomic(path, {"keep": keep, **meta})
        return keep

    @property
    def provenance(self) -> dict[str, Any]:
        """What every subset-model record must match to be merged: regime, masks, run config, targets, measurement."""
        if not hasattr(self, "_provenance"):
            from cnnlab.engine.rundir import config_digest

            self._provenance = {"regime": self.regime.tag, "config": config_digest(self.config.to_dict()),
                                "masks": hashlib.sha256(self.keep.numpy().tobytes()).hexdigest()[:16],
                                "targets": self.targets, "measurement": self.measure_name}
        return self._provenance

    def train_one(self, k: int) -> bool:
        """Train subset model ``k`` (0-based) unless its record exists: one resumable task of an array job.
        Bitwise the step engine's model of :meth:`train`. True if it trained."""
        if not 0 <= k < self.regime.models:
            raise ValueError(f"subset model {k} is out of range: this regime has models 0..{self.regime.models - 1}")
        if self.record_path(k).is_file():
            return False
        t0 = time.perf_counter()
        phi = train_subset_phi(self.config, self.weights(k), self.targets, self.measure, self.dataset)
        _write_record(self.record_path(k), k, phi, time.perf_counter() - t0, self.provenance)
        return True

    def record_path(self, k: int) -> Path:
        return self.dir / "models" / f"{k:05d}.json"

    def pending(self) -> list[int]:
        return [k for k in range(self.regime.models) if not self.record_path(k).is_file()]

    def weights(self, k: int) -> Tensor:
        return full_weights(self.keep[k], self.train_indices, self.num_train)

    def train(self, workers: int = 1, progress: Callable[[int, int], None] | None = None, *, engine: str = "step",
              backend: str = "auto", chunk: int | None = None) -> None:
        """Train every subset model not yet recorded.

        ``engine="step"``: one model after another with the engine's step (bitwise the Trainer's run with
        ``weights=``), in ``workers`` processes when > 1 (this one and ``workers - 1`` spawned). ``engine="population"``: ``chunk``
        models at a time with :func:`cnnlab.population.train.train_population` (``backend`` auto | vmap |
        loop | procs, ``workers`` processes for procs); records are written after each chunk.
        """
        todo = self.pending()
        done = self.regime.models - len(todo)
        if not todo:
            return
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        apply_malloc(resolve_device(self.config.train.device))
        if engine == "population":
            size = chunk or max(8, 4 * workers)
            for start in range(0, len(todo), size):
                ids = todo[start:start + size]
                t0 = time.perf_counter()
                w = torch.stack([self.weights(k) for k in ids])
                phis = train_subsets_population(self.config, w, self.targets, self.measure, self.dataset,
                                                backend=backend, workers=workers)
                per = (time.perf_counter() - t0) / len(ids)
                for k, phi in zip(ids, phis):
                    _write_record(self.record_path(k), k, phi, per, self.provenance)
                done += len(ids)
                if progress:
                    progress(done, self.regime.models)
            return
        if workers <= 1:
            for k in todo:
                t0 = time.perf_counter()
                phi = train_subset_phi(self.config, self.weights(k), self.targets, self.measure, self.dataset)
                _write_record(self.record_path(k), k, phi, time.perf_counter() - t0, self.provenance)
                done += 1
                if progress:
                    progress(done, self.regime.models)
            return
        if not isinstance(self.measure, str):
            raise ValueError("workers > 1 needs a registered measurement name (loss, margin); a custom callable "
                             "cannot be sent to worker processes: use workers=1")
        import concurrent.futures as cf
        import multiprocessing as mp

        # this process is one of the workers: it trains from the end of the list while the spawned ones
        # start up and take from the front, so the start-up of the others costs less than a model each
        threads = max(1, torch.get_num_threads() // workers)
        with cf.ProcessPoolExecutor(workers - 1, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                    initargs=(self.config.to_dict(), self.dataset, self.targets, self.measure, threads)) as pool:
            futures = [pool.submit(_worker_train, k, self.weights(k), str(self.record_path(k)), self.provenance) for k in todo]
            here = 0
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                for k, f in zip(reversed(todo), reversed(futures)):
                    if not f.cancel():  # a spawned worker has it already: so it has every earlier one too
                        break
                    t0 = time.perf_counter()
                    phi = train_subset_phi(self.config, self.weights(k), self.targets, self.measure, self.dataset)
                    _write_record(self.record_path(k), k, phi, time.perf_counter() - t0, self.provenance)
                    here += 1
                    if progress:
                        progress(done + here + sum(g.done() and not g.cancelled() for g in futures), self.regime.models)
            finally:
                torch.set_num_threads(before)
            done += here
            for f in cf.as_completed([g for g in futures if not g.cancelled()]):
                f.result()
                done += 1
                if progress:
                    progress(done, self.regime.models)

    def actual(self) -> Tensor:
        """phi of every subset model (M, K); all must be trained."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"{len(missing)} of {self.regime.models} subset models in {self.dir} are not trained yet")
        rows = [self._checked_record(k)["phi"] for k in range(self.regime.models)]
        return torch.tensor(rows, dtype=torch.float64)

    def _checked_record(self, k: int) -> dict[str, Any]:
        """A subset model's record, checked before it is merged: model index, shape, provenance."""
        path = self.record_path(k)
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable subset-model record ({e}); delete it to retrain that model") from None
        if rec.get("model") != k or not isinstance(rec.get("phi"), list) or len(rec["phi"]) != len(self.targets):
            raise ValueError(f"{path}: expected model {k} with {len(self.targets)} phi values, got model "
                             f"{rec.get('model')!r} with {len(rec.get('phi') or [])}; delete it to retrain that model")
        prov = rec.get("provenance")
        if prov:  # records written before provenance was kept carry none
            bad = [key for key, v in self.provenance.items() if prov.get(key) != v]
            if bad:
                raise ValueError(f"{path} was trained for another {', '.join(bad)} than this study; "
                                 "rerun with --force to retrain the subset models")
        return rec

    def evaluate(self, methods: dict[str, Scores], *, bootstrap: int = 2000) -> dict[str, Any]:
        """LDS of each score set on the trained subset models; written to summary.json (merged with earlier methods)."""
        actual = self.actual()
        summary = self.summary() or {"methods": {}}
        summary.update({"regime": {"drop": self.regime.drop, "models": self.regime.models, "seed": self.regime.seed},
                        "measurement": self.measure_name, "targets": self.targets,
                        "num_train": int(self.train_indices.numel()),
                        "dropped_per_model": int((~self.keep[0]).sum())})
        for name, s in methods.items():
            if s.scores.shape != (self.train_indices.numel(), len(self.targets)):
                raise ValueError(f"{name}: scores of shape {tuple(s.scores.shape)}, expected "
                                 f"({self.train_indices.numel()}, {len(self.targets)})")
            stats = lds_statistics(predictions(s.scores, self.keep), actual, bootstrap=bootstrap,
                                   seed=derive_seed(self.regime.seed, f"lds/bootstrap/{name}") % (2**32))
            summary["methods"][name] = stats
        write_json_atomic(self.dir / "summary.json", summary)
        return summary

    def summary(self) -> dict[str, Any] | None:
        p = self.dir / "summary.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def reset_study(run_dir: str | Path, regime: Regime) -> None:
    """Delete a regime's subset models and summary (``--force``)."""
    d = Path(run_dir) / "lds" / regime.tag
    if d.exists():
        shutil.rmtree(d)


def lds_summaries(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished LDS regime of a run: regime, models, and each method's LDS."""
    out = []
    for d in sorted((Path(run_dir) / "lds").glob("*/summary.json")):
        s = json.loads(d.read_text(encoding="utf-8"))
        out.append({"regime": d.parent.name, **s["regime"],
                    "methods": {m: {"lds": v["lds"], "ci": v["ci"], "pearson": v["pearson"]} for m, v in s["methods"].items()}})
    return out

