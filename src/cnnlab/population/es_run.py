"""``cnnlab population es``: evolve a registry model's weights with evolution strategies.

``es.algorithm`` picks the strategy from the registry (:mod:`cnnlab.population.es`); its settings come
from the shared ``es`` keys it takes plus ``es.options``. The search distribution's mean starts at the
run's model (seed path ``model``, as ``cnnlab train``).
Generation g evaluates all candidates in one vmapped forward (in_dims (0, None): one shared batch, the
g-th batch of the seeded order) with BatchNorm on batch statistics (running statistics of perturbed
weights mean nothing); fitness is accuracy or negative cross-entropy on that batch. The mean itself is
evaluated alongside (its fitness curve) and, every ``eval_every`` generations, on the test split after
re-estimating its BatchNorm statistics from training batches. ``es.workers`` > 1 cuts the candidates
into shards scored by worker processes or Ray actors (:mod:`cnnlab.population.es_workers`), with the
same results as one process.

Run directory: config.yaml, checkpoints/last.pt (every ``checkpoint_every`` generations, atomic),
metrics.jsonl, fitness.png, model.pt (the final mean as a state_dict) and result.json (last, atomic).
``resume`` continues from the checkpoint bit for bit on the same machine; only ``es.generations``,
``es.checkpoint_every``, ``es.eval_every``, ``es.threads`` and the workers may change in between.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnlab.data import ImageDataset
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.setup import apply_malloc, build_run, resolve_device
from cnnlab.engine.trainer import versions
from cnnlab.population.bn import recalibrate_bn
from cnnlab.population.config import ES_RESUMABLE_CHANGES, ESRunConfig, ESSection
from cnnlab.population.es import get_es
from cnnlab.population.es_workers import BatchFitness, FitnessPool, make_pool
from cnnlab.population.plots import plot_es_fitness
from cnnlab.population.progress import ProgressBar
from cnnlab.population.stack import ParamLayout, meta_skeleton
from cnnlab.utils.configdiff import config_diff, mismatch_message
from cnnlab.utils.io import append_jsonl, save_torch_atomic, to_json, write_json_atomic, write_text_atomic, write_yaml_atomic
from cnnlab.utils.seeding import derive_seed
from cnnlab.utils.tagged import load_tagged

CHECKPOINT_FORMAT = "cnnlab-es-v1"


def _run_config(config: ESRunConfig) -> RunConfig:
    """The equivalent training-run config, so the model, data, augmentation and order are built as by ``cnnlab train``."""
    es = config.es
    return RunConfig.model_validate({
        "name": config.name, "seed": config.seed, "model": config.model.model_dump(), "data": config.data.model_dump(),
        "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": es.batch_size, "eval_batch_size": es.eval_batch_size, "drop_last": True,
                  "device": es.device, "threads": es.threads},
    })


class ESRun:
    """One ES run; ``run(resume=...)`` returns the result record."""

    def __init__(self, config: ESRunConfig, run_dir: str | Path | None = None, *, dataset: ImageDataset | None = None):
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        es = config.es
        if es.threads:
            torch.set_num_threads(es.threads)
        resolve_device(es.device)  # a clear error for an unavailable device
        try:
            self.parts = build_run(_run_config(config), dataset=dataset)
        except ConfigError as e:
            raise ConfigError(str(e).replace("train.batch_size", "es.batch_size").replace("train.device", "es.device")) from None
        model = self.parts.model
        self.device = self.parts.device
        self.malloc = apply_malloc(self.device)  # before any compute: a bad CNNLAB_MALLOC fails here
        self.skeleton = meta_skeleton(model).eval()
        trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        self.layout = ParamLayout.of(trainable)
        self.shared = {**{n: p.detach() for n, p in model.named_parameters() if not p.requires_grad},
                       **{n: b.detach() for n, b in model.named_buffers()}}
        self.loader = self.parts.train_loader
        if es.workers > 1 and self.device.type != "cpu":
            raise ConfigError(f"es.workers: fitness workers run on the CPU; es.device resolved to {self.device} "
                              "(use es.workers=1 there, or es.device=cpu)")
        if es.executor == "ray":
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise ConfigError("es.executor: ray needs Ray installed: pip install 'cnnlab[ray]' (or es.executor=local)")
        self.settings = es.algorithm_settings()
        self.strategy = get_es(es.algorithm)(self.layout.flatten(trainable), self.settings, derive_seed(config.seed, "es"))
        unused = es.unused_keys()
        self.warnings = [f"not used by {es.algorithm} (set for another algorithm?), ignored: {', '.join(unused)}"] if unused else []
        for w in self.warnings:
            warnings.warn(w, stacklevel=2)
        self.batch_fitness = BatchFitness(self.skeleton, self.layout, self.shared, self.loader, es.fitness, es.eval_chunk,
                                          es.backend)
        self.history: list[dict[str, Any]] = []
        self.elapsed = 0.0

    # ------------------------------------------------------------------ evaluation
    def batch(self, generation: int) -> tuple[Tensor, Tensor]:
        """The fitness batch of a generation: batch ``g mod L`` of epoch ``g div L`` of the seeded order."""
        return self.batch_fitness.batch(generation)

    def fitness(self, candidates: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Fitness (n,) of flat parameter vectors (n, P) on one batch, in vmapped forwards."""
        return self.batch_fitness.on_batch(candidates, x, y)

    def mean_state(self, vector: Tensor | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(params, buffers) of the mean (or ``vector``), with BatchNorm statistics re-estimated from training batches."""
        vector = self.strategy.center if vector is None else vector
        params = {**{n: t for n, t in self.shared.items() if n in dict(self.skeleton.named_parameters())},
                  **{n: t.clone() for n, t in self.layout.unflatten(vector).items()}}
        buffers = {n: b for n, b in self.shared.items() if n not in params}
        k = min(self.config.es.bn_calibration_batches, len(self.loader))
        buffers = recalibrate_bn(self.skeleton, params, buffers, (self.loader.batch(0, i).x for i in range(k)))
        self.skeleton.eval()
        return params, buffers

    @torch.no_grad()
    def evaluate_mean(self, vector: Tensor | None = None) -> dict[str, float]:
        """Test loss and accuracy of the mean, or of a flat ``vector`` (eval mode, recalibrated BatchNorm)."""
        params, buffers = self.mean_state(vector)
        from torch.func import functional_call

        data = self.parts.dataset.test
        loss, correct = 0.0, 0
        bs = self.config.es.eval_batch_size
        for s in range(0, len(data), bs):
            x = self.parts.eval_images(data.images, s, min(len(data), s + bs))
            y = data.labels[s:s + bs].to(self.device)
            logits = functional_call(self.skeleton, (params, buffers), (x,)).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
        return {"test_loss": loss / len(data), "test_acc": correct / len(data)}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.pt" if self.run_dir is not None else None

    def save_checkpoint(self) -> None:
        path = self._checkpoint_path()
        if path is not None:
            save_torch_atomic(path, {"format": CHECKPOINT_FORMAT, "es": self.strategy.state_dict(), "history": self.history,
                                     "elapsed": self.elapsed, "config": self.config.to_dict()})

    def restore(self) -> None:
        path = self._checkpoint_path()
        assert path is not None
        ckpt = load_tagged(path, CHECKPOINT_FORMAT, what="checkpoint", map_location=self.device)
        saved = ckpt["config"]
        defaults = ESSection.model_validate({}).model_dump(mode="json")  # keys added since the checkpoint: their defaults
        saved = {**saved, "es": {**{k: v for k, v in defaults.items() if k not in saved.get("es", {})}, **saved.get("es", {})}}
        diff = config_diff(saved, self.config.to_dict(), ignore=ES_RESUMABLE_CHANGES)
        if diff:
            raise ConfigError(mismatch_message("resume", self.run_dir, diff,
                                               hint=f"Only {', '.join(ES_RESUMABLE_CHANGES)} may change"))
        self.strategy.load_state_dict(ckpt["es"])
        self.history = ckpt["history"]
        self.elapsed = float(ckpt["elapsed"])

    # ------------------------------------------------------------------ the loop
    def run(self, *, resume: bool = False, progress: bool = True,
            on_generation: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        es = self.config.es
        if self.run_dir is not None:
            ckpt = self.run_dir / "checkpoints" / "last.pt"
            if not resume and (ckpt.exists() or (self.run_dir / "result.json").exists()):
                raise FileExistsError(f"run directory {self.run_dir} already holds an ES run; use --resume to continue it or pick another --out")
            if resume:
                if not ckpt.exists():
                    raise FileNotFoundError(f"nothing to resume: {ckpt} does not exist")
                self.restore()
            (self.run_dir / "result.json").unlink(missing_ok=True)
            write_yaml_atomic(self.run_dir / "config.yaml", self.config.to_dict())
            write_text_atomic(self.run_dir / "metrics.jsonl", "".join(to_json(h, indent=None) + "\n" for h in self.history))
        start = self.strategy.generation
        if start > es.generations:
            raise ConfigError(f"es.generations: the checkpoint is at generation {start}, beyond the {es.generations} asked for")
        with ProgressBar(progress, f"ES {self.config.model.name}", es.generations) as bar:
            bar.advance(start)
            if start < es.generations:
                with make_pool(self.batch_fitness, workers=es.workers, executor=es.executor, threads=es.threads or 1,
                               address=es.address) as pool:
                    for g in range(start, es.generations):
                        self._generation(g, pool, bar, on_generation)
        result = self._result()
        if self.run_dir is not None:
            params, buffers = self.mean_state()
            save_torch_atomic(self.run_dir / "model.pt", {"model": self.config.model.name, "state_dict": {**params, **buffers},
                                                          "num_classes": self.parts.dataset.num_classes,
                                                          "in_channels": self.parts.in_channels})
            plot_es_fitness(self.history, self.run_dir / "fitness.png",
                            f"{self.config.name}: ES on {self.config.model.name}, {self.config.data.name}",
                            "accuracy" if es.fitness == "accuracy" else "negative loss")
            write_json_atomic(self.run_dir / "result.json", result)
        return result

    def _generation(self, g: int, pool: FitnessPool, bar: ProgressBar,
                    on_generation: Callable[[dict[str, Any]], None] | None) -> None:
        """Generation ``g``: ask, score (every ``es.mean_fitness_every`` generations the mean alongside, on the
        same batch: its curve), tell, record."""
        es = self.config.es
        t0 = time.perf_counter()
        candidates = self.strategy.ask()
        with_mean = es.mean_fitness_every > 0 and (g % es.mean_fitness_every == 0 or g + 1 == es.generations)
        if with_mean:
            f = pool(torch.cat([candidates, self.strategy.center[None].to(candidates.dtype)]), g)
            record: dict[str, Any] = self.strategy.tell(f[:-1])
            record["mean_fitness"] = float(f[-1])
        else:
            record = self.strategy.tell(pool(candidates, g))
        if (g + 1) % es.eval_every == 0 or g + 1 == es.generations:
            record.update(self.evaluate_mean())
        record["time_s"] = time.perf_counter() - t0
        self.elapsed += record["time_s"]
        self.history.append(record)
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "metrics.jsonl", record)
            if (g + 1) % es.checkpoint_every == 0 or g + 1 == es.generations:
                self.save_checkpoint()
        mean = f", mean {record['mean_fitness']:.4f}" if with_mean else ""
        bar.advance(1, f"fitness {record['fitness_mean']:.4f} (best {record['fitness_max']:.4f}{mean})")
        if on_generation is not None:
            on_generation(record)

    def _result(self) -> dict[str, Any]:
        tested = [h for h in self.history if "test_acc" in h]
        last = self.history[-1] if self.history else {}
        return {
            "status": "completed",
            "name": self.config.name,
            "generations": self.strategy.generation,
            "algorithm": self.config.es.algorithm,
            "population": self.strategy.popsize,
            "settings": asdict(self.settings),
            "warnings": self.warnings,
            "final": {"fitness_mean": last.get("fitness_mean", math.nan), "mean_fitness": last.get("mean_fitness", math.nan),
                      "test_acc": tested[-1]["test_acc"] if tested else None,
                      "test_loss": tested[-1]["test_loss"] if tested else None},
            "first": {"mean_fitness": self.history[0]["mean_fitness"]} if self.history and "mean_fitness" in self.history[0] else {},
            "history": self.history,
            "num_params": self.layout.size,
            "evaluations": (self.strategy.generation * self.strategy.popsize
                            + sum("mean_fitness" in h for h in self.history)) * self.config.es.batch_size,
            "timings": {"total_s": self.elapsed,
                        "generations_per_s": self.strategy.generation / self.elapsed if self.elapsed > 0 else None},
            "seeds": {"master": self.config.seed, "model": derive_seed(self.config.seed, "model/model"),
                      "data": self.loader.seed, "es": self.strategy.seed},
            "device": str(self.device),
            "malloc": dict(zip(("allocator", "reason"), self.malloc)),
            "versions": versions(),
        }


def run_es(config: ESRunConfig, run_dir: str | Path | None, *, resume: bool = False, progress: bool = True,
           dataset: ImageDataset | None = None) -> dict[str, Any]:
    """Run (or resume) the ES config into ``run_dir`` and return the result record."""
    return ESRun(config, run_dir, dataset=dataset).run(resume=resume, progress=progress)
