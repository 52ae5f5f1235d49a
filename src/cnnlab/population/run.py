"""``cnnlab population train``: a population-training config into a run directory.

The run directory holds config.yaml, metrics.jsonl (one line per epoch, per-member lists), members.pt
(the stacked final state), accuracy.png and result.json (written last, atomically). Seed paths: the
shared model / order are exactly those of ``cnnlab train`` with the same config (``model``, ``data``);
per-member ones are ``member/{i}`` (init), ``member/{i}/data`` (order and augmentation) and
``member/{i}/subset`` (the kept examples).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cnnlab.data import ImageDataset
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.setup import RunParts, apply_runtime, build_run
from cnnlab.engine.trainer import versions
from cnnlab.models import create_deterministic_model
from cnnlab.population.config import PopulationRunConfig, build
from cnnlab.population.plots import plot_member_accuracy
from cnnlab.population.progress import ProgressBar
from cnnlab.population.stack import Population
from cnnlab.population.state import PopulationState
from cnnlab.population.train import EvalSet, PopulationResult, train_population
from cnnlab.utils.configdiff import config_diff, mismatch_message
from cnnlab.utils.io import (load_yaml_text, save_torch_atomic, to_json, write_json_atomic, write_text_atomic,
                             write_yaml_atomic)
from cnnlab.utils.seeding import derive_seed, make_generator
from cnnlab.utils.tagged import load_tagged

STATE_FORMAT = "cnnlab-population-v1"


def member_models(config: PopulationRunConfig, parts: RunParts) -> list[nn.Module]:
    """Initial members: the run's model (shared) or ``create_deterministic_model(seed, name, f"member/{i}")``.

    Frozen parameters (e.g. airbench's data-derived whitening) are copied from the run's model.
    """
    if config.population.init == "shared":
        return [parts.model]
    frozen = {n: p.detach() for n, p in parts.model.named_parameters() if not p.requires_grad}
    out = []
    for i in range(config.population.size):
        m = create_deterministic_model(config.seed, config.model.name, f"member/{i}", num_classes=parts.dataset.num_classes,
                                       in_channels=parts.in_channels, init=config.model.init, **config.model.options)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if n in frozen:
                    p.copy_(frozen[n])
        m = m.to(parts.device)
        if parts.channels_last:  # train.channels_last as build_run resolved it
            m = m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # nn.Module.to's stubs lack memory_format
        out.append(m)
    return out


def member_loaders(config: PopulationRunConfig, parts: RunParts) -> list[BatchLoader]:
    """The run's loader (shared order) or one per member with seed ``derive_seed(seed, f"member/{i}/data")``."""
    base = parts.train_loader
    if config.population.order == "shared":
        return [base]
    return [BatchLoader(base.images, base.labels, base.batch_size, seed=derive_seed(config.seed, f"member/{i}/data"),
                        shuffle=base.shuffle, drop_last=base.drop_last, indices=base.indices, weights=base.weights,
                        augment=base.augment, device=base.device, dtype=base.dtype, channels_last=base.channels_last)
            for i in range(config.population.size)]


def member_weights(config: PopulationRunConfig, n: int, indices: Tensor) -> Tensor | None:
    """(M, n) 0/1 weights: each member keeps ``keep_fraction`` of the training examples ``indices``, or None."""
    f = config.population.keep_fraction
    if f is None or f == 1.0:
        return None
    keep = max(1, int(round(f * len(indices))))
    w = torch.zeros(config.population.size, n)
    for i in range(config.population.size):
        perm = torch.randperm(len(indices), generator=make_generator(config.seed, f"member/{i}/subset"))
        w[i, indices[perm[:keep]]] = 1.0
    return w


def run_population(config: PopulationRunConfig, run_dir: str | Path | None, *, dataset: ImageDataset | None = None,
                   progress: bool = True, resume: bool = False) -> dict[str, Any]:
    """Train the population of ``config``; write the run directory (when given) and return the result record.

    The members' states are checkpointed in ``RUN_DIR/checkpoints`` every ``train.checkpoint_every`` epochs;
    ``resume`` continues a killed run from there (and returns a finished run's result as it is).
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        _check_run_dir(config, run_dir, resume)
        if resume and (run_dir / "result.json").is_file():
            import json

            return json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    apply_runtime(config)
    t0 = time.perf_counter()
    parts = build_run(RunConfig.model_validate(config.model_dump(exclude={"population"})), dataset=dataset)
    pc = config.population
    models = member_models(config, parts)
    loaders = member_loaders(config, parts)
    weights = member_weights(config, len(parts.dataset.train), parts.train_loader.indices)
    base_lr = parts.schedule.base_lr
    lr_scale = [lr / base_lr for lr in pc.lr] if pc.lr is not None else None
    eval_set = EvalSet(parts.dataset.test.images, parts.dataset.test.labels, parts.augment,
                       config.train.eval_batch_size, parts.channels_last)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml_atomic(run_dir / "config.yaml", config.model_dump(mode="json"))
    steps = pc.size * config.train.epochs * len(loaders[0])
    with ProgressBar(progress, f"{pc.size} members", steps) as bar:
        res = train_population(models, loaders, parts.settings, epochs=config.train.epochs, lr=parts.schedule.lr,
                               lr_scale=lr_scale, member_weights=weights, members=pc.size, eval_set=eval_set,
                               eval_every=pc.eval_every, backend=pc.backend, workers=pc.workers, seed=config.seed,
                               progress=bar.advance, checkpoint_dir=run_dir / "checkpoints" if run_dir else None,
                               checkpoint_every=config.train.checkpoint_every)
    result = _result(config, parts, res, base_lr, weights, time.perf_counter() - t0)
    if run_dir is not None:
        save_torch_atomic(run_dir / "members.pt", {"format": STATE_FORMAT, "state": res.state.tensors(),
                                                   "config": config.model_dump(mode="json"),
                                                   "num_classes": parts.dataset.num_classes, "in_channels": parts.in_channels})
        write_text_atomic(run_dir / "metrics.jsonl", "".join(to_json(h, indent=None) + "\n" for h in res.history))
        plot_member_accuracy(res.history, run_dir / "accuracy.png", f"{config.name}: {config.model.name} x {pc.size}")
        write_json_atomic(run_dir / "result.json", result)
    return result


def _check_run_dir(config: PopulationRunConfig, run_dir: Path, resume: bool) -> None:
    """A run directory may be new, or (with ``resume``) hold a run of exactly this config."""
    started = (run_dir / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()
    if not resume:
        if (run_dir / "result.json").exists():
            raise FileExistsError(f"run directory {run_dir} already holds a result; pick another --out")
        if started:
            raise FileExistsError(f"run directory {run_dir} holds an unfinished population run; use --resume to "
                                  "continue it or pick another --out")
        return
    if (run_dir / "config.yaml").is_file():
        saved = load_yaml_text((run_dir / "config.yaml").read_text(encoding="utf-8"))
        diff = config_diff(saved, config.model_dump(mode="json"))
        if diff:
            raise ConfigError(mismatch_message("resume", run_dir, diff))


def _result(config: PopulationRunConfig, parts: RunParts, res: PopulationResult, base_lr: float,
            weights: Tensor | None, elapsed: float) -> dict[str, Any]:
    pc = config.population
    final = res.final
    acc = final.get("test_acc", [math.nan] * pc.size)
    diverged = _diverged_members(res, pc.size)
    members: list[dict[str, Any]] = []
    for i in range(pc.size):
        members.append({
            "index": i,
            "lr": pc.lr[i] if pc.lr is not None else base_lr,
            "init": "model" if pc.init == "shared" else f"member/{i}",
            "data_seed": parts.train_loader.seed if pc.order == "shared" else derive_seed(config.seed, f"member/{i}/data"),
            "examples_kept": int(weights[i].sum()) if weights is not None else parts.train_loader.num_examples,
            **{k: final[k][i] for k in ("train_loss", "train_acc", "test_loss", "test_acc") if k in final},
            "status": "diverged" if i in diverged else "completed",
        })
    ok = [i for i in range(pc.size) if i not in diverged]  # aggregates over the members that did not diverge
    acc_t = torch.tensor([acc[i] for i in ok] or [math.nan], dtype=torch.float64)
    return {
        "status": "diverged" if not ok else "completed",
        "diverged_members": diverged,
        "name": config.name,
        "size": pc.size,
        "backend": res.backend,
        "backend_choice": res.choice,
        "epochs": config.train.epochs,
        "steps": res.state.step,
        "members": members,
        "summary": {"test_acc_mean": float(acc_t.mean()), "test_acc_std": float(acc_t.std()) if len(ok) > 1 else 0.0,
                    "test_acc_best": float(acc_t.max()), "best_member": ok[int(acc_t.argmax())] if ok else None,
                    "members_counted": len(ok)},
        "timings": {"total_s": elapsed, "train_s": res.train_time_s,
                    "member_steps_per_s": pc.size * res.state.step / res.train_time_s if res.train_time_s > 0 else None},
        "device": str(parts.device),
        "num_params": sum(p.numel() for p in res.state.params.values()) // pc.size,
        "versions": versions(),
    }


def _diverged_members(res: PopulationResult, size: int) -> list[int]:
    """Members whose final losses or weights are not finite (NaN/inf): reported per member, left out of the summary."""
    final = res.final
    bad = torch.zeros(size, dtype=torch.bool)
    for k in ("train_loss", "test_loss"):
        if k in final:
            bad |= ~torch.isfinite(torch.tensor(final[k], dtype=torch.float64))
    for p in res.state.params.values():
        bad |= ~torch.isfinite(p.detach().reshape(size, -1).cpu()).all(1)
    return [int(i) for i in torch.nonzero(bad).flatten()]


def load_population(run_dir: str | Path, device: str = "cpu") -> tuple[Population, PopulationRunConfig, dict[str, Any] | None]:
    """A finished population run's members (a :class:`Population`), its config and result record."""
    import json

    from cnnlab.models import create_model

    run_dir = Path(run_dir)
    path = run_dir / "members.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished population run (no members.pt)")
    ckpt = load_tagged(path, STATE_FORMAT, what="population state", map_location=device)
    config = build(PopulationRunConfig, ckpt["config"])
    with torch.device("meta"):
        model = create_model(config.model.name, num_classes=int(ckpt["num_classes"]), in_channels=int(ckpt["in_channels"]),
                             **config.model.options)
    result_path = run_dir / "result.json"
    result = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else None
    return PopulationState.from_tensors(ckpt["state"]).population(model), config, result
