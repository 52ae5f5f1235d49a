"""The Trainer: epochs of [deterministic batch order -> device augmentation -> step -> callbacks -> metrics].

A run directory holds config.yaml, metrics.jsonl, checkpoints/ and result.json (written last, atomically).
Batch order and augmentation are pure functions of (seed, epoch), so resuming from an end-of-epoch
checkpoint reproduces the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import math
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from cnnlab import __version__
from cnnlab.engine import distributed as dist_utils
from cnnlab.engine.callbacks import Callback, EarlyStopping, ModelCheckpoint
from cnnlab.engine.config import ConfigError, RunConfig, config_diff
from cnnlab.engine.metrics import EvalAccumulator
from cnnlab.engine.setup import RunParts, apply_runtime, build_run, resolve_device, seeds
from cnnlab.engine.step import TrainState, eval_logits, train_step
from cnnlab.utils.io import append_jsonl, save_torch_atomic, write_json_atomic, write_text_atomic, write_yaml_atomic

CHECKPOINT_FORMAT = "cnnlab-checkpoint-v1"


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; result.json records status "diverged"."""


class Trainer:
    """Train one RunConfig. ``run_dir=None`` trains without writing anything."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        dataset=None,
        weights: Tensor | None = None,
        progress: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        apply_runtime(config)
        self.dist = dist_utils.init_from_env(resolve_device(config.train.device).type)
        self.parts: RunParts = build_run(config, dataset=dataset, weights=weights, rank=self.dist.rank, world_size=self.dist.world_size)
        self.model = self.parts.model
        self.callbacks: list[Callback] = list(callbacks) + _config_callbacks(config)
        self.progress = progress
        self.state: TrainState = self.parts.initial_state()
        self.ema: dict[str, Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.should_stop = False
        self._elapsed = 0.0
        self.test_confusion: list[list[int]] | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Path, epoch: int) -> None:
        """Everything needed to resume; loads with ``torch.load(weights_only=True)``."""
        save_torch_atomic(path, {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "state": self.state.tensors(),
            "ema": self.ema,
            "schedule": self.parts.schedule.state_dict(),
            "callbacks": [{"callback": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks],
            "history": self.history,
            "elapsed": self._elapsed,
            "config": self.config.to_dict(),
        })

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if ckpt["config"] != self.config.to_dict():
            diff = [f"{k} ({a!r} -> {b!r})" for k, a, b in config_diff(ckpt["config"], self.config.to_dict())]
            raise ConfigError(f"cannot resume {self.run_dir}: the config differs from the checkpoint's at {', '.join(diff)}")
        self.state = TrainState.from_tensors(_to_device(ckpt["state"], self.parts.device))
        self.ema = _to_device(ckpt["ema"], self.parts.device)
        self.parts.schedule.load_state_dict(ckpt["schedule"])
        _restore_callbacks(self.callbacks, ckpt["callbacks"])
        self.history = ckpt["history"]
        self.epoch = int(ckpt["epoch"])
        self._elapsed = float(ckpt["elapsed"])

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, split: str = "test", *, use_ema: bool = True, limit: int | None = None) -> dict[str, float]:
        """Eval-mode loss / top-1 / top-5 / macro P,R,F1 on the clean ``split`` ("test" or "train")."""
        data = self.parts.dataset.test if split == "test" else self.parts.dataset.train
        params = self.ema if (use_ema and self.ema is not None) else self.state.params
        t = self.config.train
        self.model.eval()
        acc = EvalAccumulator(self.parts.dataset.num_classes)
        n = len(data) if limit is None else min(limit, len(data))
        amp = self.parts.settings.autocast_dtype
        for start in range(0, n, t.eval_batch_size):
            end = min(n, start + t.eval_batch_size)
            x = self.parts.eval_images(data.images, start, end)
            logits = eval_logits(self.model, params, self.state.buffers, x, self.parts.settings.frozen, amp, t.tta_flip)
            acc.update(logits, data.labels[start:end].to(self.parts.device))
        self.model.train()
        if split == "test":
            self.test_confusion = acc.confusion.tolist()
        return acc.summary("test" if split == "test" else "train_clean")

    # ----------------------------------------------------------------- training
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the configured number of epochs (or an early stop) and return the result record."""
        cfg, t = self.config, self.config.train
        ckpt_path = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
        if self.run_dir and self.is_main:
            self._prepare_run_dir(resume)
        if resume and ckpt_path is not None and ckpt_path.exists():
            self._restore(ckpt_path)
            if self.is_main:
                write_text_atomic(self.run_dir / "metrics.jsonl", "".join(_jsonl(h) for h in self.history))
        for cb in self.callbacks:
            cb.on_train_start(self)

        loader = self.parts.train_loader
        world = self.dist.world_size
        reducer = dist_utils.sum_gradients if self.dist.enabled else None
        self.model.train()
        diverged = False
        with _Progress(self.progress and self.is_main, t.epochs, len(loader)) as bar:
            while self.epoch < t.epochs and not self.should_stop:
                epoch = self.epoch
                bar.start_epoch(epoch)
                t0 = time.perf_counter()
                losses: list[Tensor] = []
                correct = torch.zeros((), dtype=torch.long, device=self.parts.device)
                seen = 0
                for i, batch in enumerate(loader.epoch(epoch)):
                    lr = self.parts.schedule.lr(self.state.step)
                    self.state, out = train_step(
                        self.model, self.state, batch.x, batch.y, batch.w, lr, self.parts.settings,
                        denominator=len(batch) * world, grad_reducer=reducer)
                    self._update_ema()
                    for cb in self.callbacks:
                        cb.on_batch_end(self, self.state.step)
                    losses.append(out.loss)
                    correct += out.correct
                    seen += len(batch)
                    if (i + 1) % t.log_every == 0 or i + 1 == len(loader):
                        recent = float(torch.stack(losses[-t.log_every:]).mean())
                        if not math.isfinite(recent):
                            diverged = True
                            break
                        bar.update(i + 1, recent, float(correct) / max(seen, 1), seen * world / (time.perf_counter() - t0))
                        for cb in self.callbacks:
                            cb.on_step_end(self, self.state.step, recent)
                if diverged:
                    break
                train_time = time.perf_counter() - t0
                if self.dist.enabled:
                    dist_utils.broadcast_tensors(self.state.buffers)
                t1 = time.perf_counter()
                metrics = self._epoch_metrics(epoch, losses, correct, seen * world, train_time, lr)
                metrics["eval_time_s"] = time.perf_counter() - t1
                self._elapsed += time.perf_counter() - t0
                if not math.isfinite(metrics["train_loss"]) or not math.isfinite(metrics["test_loss"]):
                    diverged = True
                    break
                self.parts.schedule.observe(metrics.get(cfg.schedule.monitor, float("nan"))) if cfg.schedule.name == "plateau" else None
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, metrics)
                self.history.append(metrics)
                self.epoch = epoch + 1
                bar.end_epoch(metrics)
                if self.run_dir and self.is_main:
                    if self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs or self.should_stop:
                        self.save_checkpoint(ckpt_path, self.epoch)
                    append_jsonl(self.run_dir / "metrics.jsonl", metrics)

        if self.test_confusion is None and self.history and not diverged:
            self.evaluate("test")  # resumed at its final epoch: the confusion matrix is not in the checkpoint
        result = self._result("diverged" if diverged else "completed")
        if self.run_dir and self.is_main:
            write_json_atomic(self.run_dir / "result.json", result)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        if diverged:
            raise TrainingDiverged(f"the training loss became non-finite in epoch {self.epoch + 1} (step {self.state.step})")
        return result

    def _epoch_metrics(self, epoch: int, losses: list[Tensor], correct: Tensor, seen: int, train_time: float, lr: float) -> dict[str, Any]:
        train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        if self.dist.enabled:  # average the logged train loss/accuracy over ranks
            agg = torch.tensor([train_loss, float(correct)], dtype=torch.float64)
            torch.distributed.all_reduce(agg)
            train_loss, correct_all = float(agg[0]) / self.dist.world_size, float(agg[1])
        else:
            correct_all = float(correct)
        m: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step, "lr": lr, "train_loss": train_loss,
                             "train_acc": correct_all / max(seen, 1), "train_time_s": train_time,
                             "images_per_s": seen / train_time if train_time > 0 else float("nan")}
        m.update(self.evaluate("test"))
        if self.config.train.clean_train_eval:
            m.update(self.evaluate("train"))
            m["gen_gap"] = m["train_clean_acc"] - m["test_acc"]
        m.update(_memory_stats(self.parts.device))
        return m

    def _update_ema(self) -> None:
        ema_cfg = self.config.train.ema
        if ema_cfg is None:
            return
        if self.ema is None:
            self.ema = {n: p.detach().clone() for n, p in self.state.params.items()}
            return
        if self.state.step % ema_cfg.every == 0:
            with torch.no_grad():
                for n, p in self.state.params.items():
                    self.ema[n].lerp_(p.detach(), 1 - ema_cfg.decay)

    def _prepare_run_dir(self, resume: bool) -> None:
        assert self.run_dir is not None
        result = self.run_dir / "result.json"
        if not resume and (result.exists() or (self.run_dir / "checkpoints" / "last.pt").exists()):
            raise FileExistsError(f"run directory {self.run_dir} already holds a run; use --resume to continue it or pick another --out")
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if result.exists():
            result.unlink()  # a resumed run is not done until it writes a new result
        write_yaml_atomic(self.run_dir / "config.yaml", self.config.to_dict())

    def _result(self, status: str) -> dict[str, Any]:
        final = self.history[-1] if self.history else {}
        ckpt_cb = next((cb for cb in self.callbacks if isinstance(cb, ModelCheckpoint)), None)
        es_cb = next((cb for cb in self.callbacks if isinstance(cb, EarlyStopping)), None)
        train_times = [h["train_time_s"] for h in self.history]
        images = sum(h["images_per_s"] * h["train_time_s"] for h in self.history)
        result: dict[str, Any] = {
            "status": status,
            "name": self.config.name,
            "epochs_completed": self.epoch,
            "epochs_planned": self.config.train.epochs,
            "steps": self.state.step,
            "stopped_early": bool(es_cb and es_cb.stopped_epoch is not None),
            "final": final,
            "timings": {"total_s": self._elapsed, "train_s": sum(train_times),
                        "images_per_s": images / sum(train_times) if train_times and sum(train_times) > 0 else None},
            "seeds": seeds(self.config),
            "device": str(self.parts.device),
            "world_size": self.dist.world_size,
            "num_params": sum(p.numel() for p in self.state.params.values()),
            "classes": self.parts.dataset.classes,
            "confusion_matrix": self.test_confusion,
            "versions": versions(),
        }
        if ckpt_cb and ckpt_cb.best_path:
            best = ckpt_cb.kept[0]
            result["best"] = {"monitor": ckpt_cb.monitor, "value": best[0], "epoch": best[1] + 1, "checkpoint": f"checkpoints/{best[2]}"}
        if self.dist.enabled:
            result["ranks_identical"] = dist_utils.all_equal(_checksum(self.state.params))
        return result

    def trained_model(self, use_ema: bool = True) -> torch.nn.Module:
        """The model (eval mode) with the trained weights loaded."""
        return model_from_state(self.model, self.ema if (use_ema and self.ema is not None) else self.state.params, self.state.buffers)


def model_from_state(model: torch.nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> torch.nn.Module:
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in params:
                p.copy_(params[n])
        for n, b in model.named_buffers():
            if n in buffers:
                b.copy_(buffers[n])
    return model.eval()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a cnnlab checkpoint safely (``weights_only=True``) and check its format."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} file")
    return ckpt


def versions() -> dict[str, str]:
    return {"cnnlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def _restore_callbacks(callbacks: Sequence[Callback], saved: list) -> None:
    """Give each callback the state saved by the callback of its class at the same rank among that class, so a
    resumed run whose callback list differs (one added or dropped) never hands a state to the wrong callback."""
    if not all(isinstance(s, dict) and set(s) == {"callback", "state"} for s in saved):
        for cb, s in zip(callbacks, saved):  # checkpoints written before callback states were named
            cb.load_state_dict(s)
        return
    pools: dict[str, list] = {}
    for s in saved:
        pools.setdefault(s["callback"], []).append(s["state"])
    for cb in callbacks:
        pool = pools.get(type(cb).__name__)
        if pool:
            cb.load_state_dict(pool.pop(0))


def _config_callbacks(config: RunConfig) -> list[Callback]:
    out: list[Callback] = []
    es = config.callbacks.early_stopping
    if es is not None:
        out.append(EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.warmup_epochs))
    ck = config.callbacks.checkpoint
    if ck is not None:
        out.append(ModelCheckpoint(ck.monitor, ck.mode, ck.top_k))
    return out


def _memory_stats(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return {"peak_mem_mb": peak}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _checksum(params: dict[str, Tensor]) -> Tensor:
    return torch.stack([p.detach().double().sum() for p in params.values()]).cpu()


def _to_device(obj, device):
    if obj is None:
        return None
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _jsonl(record: dict) -> str:
    from cnnlab.utils.io import to_json

    return to_json(record, indent=None) + "\n"


class _Progress:
    """A rich progress bar (loss, accuracy, images/s, ETA) that is a no-op when disabled."""

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.enabled, self.epochs, self.steps = enabled and sys.stderr.isatty(), epochs, steps
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), transient=False)
            self._p.__enter__()
        return self

    def start_epoch(self, epoch: int) -> None:
        if self._p is not None:
            self._task = self._p.add_task(f"epoch {epoch + 1}/{self.epochs}", total=self.steps, stats="")

    def update(self, done: int, loss: float, acc: float, ips: float) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=done, stats=f"loss {loss:.4f} acc {acc:.3f} {ips:,.0f} img/s")

    def end_epoch(self, m: dict) -> None:
        if self._p is not None:
            self._p.update(self._task, stats=f"loss {m['train_loss']:.4f} test_acc {m['test_acc']:.4f} {m['images_per_s']:,.0f} img/s")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
