"""The Trainer: epochs of [deterministic batch order -> device augmentation -> step -> callbacks -> metrics].

A run directory holds config.yaml, metrics.jsonl, checkpoints/ and result.json (written last, atomically).
Batch order and augmentation are pure functions of (seed, epoch), so resuming from an end-of-epoch
checkpoint reproduces the uninterrupted run bit for bit on CPU.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from cnnlab.engine import distributed as dist_utils
from cnnlab.engine.callbacks import Callback, EarlyStopping, ModelCheckpoint, _monitored, config_callbacks
from cnnlab.engine.checkpoint import (CHECKPOINT_FORMAT, checkpoint_weights, load_checkpoint, model_from_state,
                                      restore_callbacks, save_checkpoint, to_device)
from cnnlab.engine.config import ConfigError, RunConfig, config_diff
from cnnlab.engine.metrics import EvalAccumulator, confusion_matrix, macro_prf
from cnnlab.engine.optim import sync_torch_optimizer
from cnnlab.engine.progress import EpochProgress
from cnnlab.engine.rundir import check_same_run
from cnnlab.engine.setup import RunParts, apply_malloc, apply_runtime, build_run, resolve_channels_last, resolve_device, resolve_precision, seeds
from cnnlab.engine.step import TrainState, eval_logits, train_step
from cnnlab.engine.userrun import build_user_run
from cnnlab.engine.versions import versions
from cnnlab.utils.configdiff import mismatch_message
from cnnlab.utils.io import append_jsonl, ensure_contained, write_json_atomic, write_text_atomic, write_yaml_atomic
from cnnlab.utils.memory import peak_rss_bytes

# moved to their own modules; still importable from here
__all__ = ["CHECKPOINT_FORMAT", "Trainer", "TrainingDiverged", "load_checkpoint", "model_from_state",
           "versions"]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; result.json records status "diverged"."""


class Trainer:
    """Train a RunConfig, or the user's own pieces, with the one functional step (:func:`train_step`).

    Config route (what the CLI uses): ``Trainer(config, run_dir)``; ``run_dir=None`` writes nothing.
    Bring-your-own route (the ResoMap seed's API): ``Trainer(model=..., optimizer=..., train_loader=...,
    val_loader=..., criterion=..., device=..., use_amp=..., gradient_accumulation_steps=...,
    gradient_clip_norm=..., scheduler=...)``; then ``fit()``, or ``train_epoch()`` / ``validate()`` in a
    hand-written loop. Arguments of the second route:

    - ``model``: any nn.Module (moved to ``device``; it holds the trained weights after each epoch).
    - ``train_loader`` / ``val_loader`` / ``test_loader``: a DataLoader (streamed batch by batch), a torch
      Dataset, or ``(images, labels)`` tensors (uint8 scaled to [0, 1], float as given).
    - ``optimizer``: a torch.optim.Optimizer; SGD/Adam/AdamW map exactly onto the functional update (the
      rate is read from its param_groups each step, so torch schedulers work), any other runs its own ``.step()``.
    - ``criterion``: any loss callable ``criterion(logits, targets) -> batch mean``; default cross-entropy.
    - ``use_amp``: autocast in bf16 where the device has it natively (fp16 with loss scaling on older GPUs).
    - ``gradient_accumulation_steps``: N loader batches per optimizer step (effective batch N x batch size).
    - ``gradient_clip_norm``: clip the global gradient norm. ``scheduler``: an LRSchedulerCallback or a torch
      scheduler, stepped at each epoch end (a plateau scheduler by ``validate()``'s metrics).
    - ``epochs`` (for ``fit``), ``batch_size`` (for a Dataset or tensors), ``seed`` (their shuffle),
      ``channels_last``, ``callbacks``.
    """

    def __init__(
        self,
        config: RunConfig | None = None,
        run_dir: str | Path | None = None,
        *,
        callbacks: Sequence[Callback] = (),
        dataset=None,
        weights: Tensor | None = None,
        progress: bool = True,
        model: nn.Module | None = None,
        device: str | torch.device | None = None,
        criterion: Callable[[Tensor, Tensor], Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        train_loader: Any = None,
        val_loader: Any = None,
        test_loader: Any = None,
        use_amp: bool = False,
        gradient_accumulation_steps: int = 1,
        gradient_clip_norm: float | None = None,
        scheduler: Any = None,
        epochs: int = 10,
        batch_size: int = 128,
        seed: int = 0,
        channels_last: bool = False,
    ):
        if isinstance(config, nn.Module):  # Trainer(model, ...)
            config, model = None, config
        self.user_optimizer = optimizer
        self.scheduler = scheduler
        self._sources: dict[str, Any] = {}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        if config is not None:
            if model is not None or optimizer is not None or train_loader is not None:
                raise TypeError("give either a RunConfig or your own model/optimizer/train_loader, not both")
            self.config = config
            apply_runtime(config)
            self.dist = dist_utils.init_from_env(resolve_device(config.train.device).type)
            self.parts: RunParts = build_run(config, dataset=dataset, weights=weights, rank=self.dist.rank, world_size=self.dist.world_size)
            self.state: TrainState = self.parts.initial_state()
            self._num_classes: int | None = self.parts.dataset.num_classes
        else:
            user = build_user_run(model, device, criterion, optimizer, train_loader, val_loader, test_loader, use_amp,
                                  gradient_accumulation_steps, gradient_clip_norm, epochs, batch_size, seed, channels_last)
            self.config, self.dist, self.state, self.parts = user.config, user.dist, user.state, user.parts
            self._sources, self._criterion, self._targets = user.sources, user.criterion, user.targets
            self._num_classes = None
        self.model = self.parts.model
        self.precision, self.precision_reason = resolve_precision(self.config.train.precision, self.parts.device)
        self.channels_last_reason = resolve_channels_last(self.config.train.channels_last, self.precision, self.parts.device)[1]
        self.malloc, self.malloc_reason = apply_malloc(self.parts.device)
        self.callbacks: list[Callback] = list(callbacks) + config_callbacks(self.config)
        self.progress = progress
        self.ema: dict[str, Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # completed epochs
        self.should_stop = False
        self._elapsed = 0.0
        self.test_confusion: list[list[int]] | None = None
        self.extended_from: int | None = None

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def user_route(self) -> bool:
        return self.parts.dataset is None

    @property
    def has_val(self) -> bool:
        return "val" in self._sources if self.user_route else self.parts.val_indices is not None

    @property
    def has_test(self) -> bool:
        return "test" in self._sources if self.user_route else True

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.parts.train_loader) / self.config.train.accumulate_batches)

    # ----------------------------------------------------------------- checkpoints
    def save_checkpoint(self, path: Path, epoch: int) -> None:
        """Everything needed to resume; loads with ``torch.load(weights_only=True)``."""
        save_checkpoint(path, epoch=epoch, state=self.state.tensors(), ema=self.ema, schedule=self.parts.schedule.state_dict(),
                        callbacks=self.callbacks, history=self.history, elapsed=self._elapsed, config=self.config.to_dict())

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        diff = config_diff(ckpt["config"], self.config.to_dict())
        if diff:
            other = [d for d in diff if d[0] != "train.epochs"]
            if other:
                raise ConfigError(mismatch_message("resume", self.run_dir, other, hint=(
                    f"{path.name} was trained under the old values; only train.epochs may change on resume. Pick another --out")))
            self._check_extension(int(ckpt["config"]["train"]["epochs"]), int(ckpt["epoch"]))
        self.state = TrainState.from_tensors(to_device(ckpt["state"], self.parts.device))
        self.ema = to_device(ckpt["ema"], self.parts.device)
        self.parts.schedule.load_state_dict(ckpt["schedule"])
        restore_callbacks(self.callbacks, ckpt["callbacks"])
        self.history = ckpt["history"]
        self.epoch = int(ckpt["epoch"])
        self._elapsed = float(ckpt["elapsed"])

    def _check_extension(self, old_epochs: int, done: int) -> None:
        """``--resume`` with another ``train.epochs``: allowed when the rates of the steps already taken do not
        change (every schedule but onecycle and cosine, which are functions of the total length)."""
        new = self.config.train.epochs
        if new < done:
            raise ConfigError(f"train.epochs: {new} is fewer than the {done} epochs {self.run_dir} has already trained")
        s = self.config.schedule
        if s.name in ("onecycle", "cosine"):
            raise ConfigError(
                f"train.epochs: {old_epochs} -> {new}: schedule.name={s.name!r} is a function of the total length, so a "
                f"longer run would have taken other rates in the epochs already trained; start a new run, or use a "
                f"schedule that does not depend on the length (constant, step, multistep, exponential, plateau)")
        self.extended_from = old_epochs

    # ----------------------------------------------------------------- evaluation
    def _split_batches(self, images: Tensor, labels: Tensor, indices: Tensor | None = None):
        bs = self.config.train.eval_batch_size
        n = len(labels) if indices is None else len(indices)
        for start in range(0, n, bs):
            end = min(n, start + bs)
            if indices is None:
                yield self.parts.eval_images(images, start, end), labels[start:end].to(self.parts.device)
            else:
                idx = indices[start:end]
                yield self.parts.eval_images(images[idx], 0, end - start), labels[idx].to(self.parts.device)

    def _eval_batches(self, split: str):
        if self.user_route:
            if split not in self._sources:
                raise ValueError(f"no {split} data: pass {split}_loader= to the Trainer")
            return self._sources[split]()
        ds = self.parts.dataset
        if split == "test":
            return self._split_batches(ds.test.images, ds.test.labels)
        if split == "val":
            if self.parts.val_indices is None:
                raise ValueError("no validation split: set data.val_split (a count or a fraction of the train set)")
            return self._split_batches(ds.train.images, ds.train.labels, self.parts.val_indices)
        if split == "train":
            return self._split_batches(ds.train.images, ds.train.labels)
        raise ValueError(f"split must be test, val or train, got {split!r}")

    @torch.no_grad()
    def evaluate(self, split: str = "test", *, use_ema: bool = True, limit: int | None = None,
                 params: dict[str, Tensor] | None = None, buffers: dict[str, Tensor] | None = None) -> dict[str, float]:
        """Eval-mode loss / top-1 / top-5 / macro P,R,F1 on the clean ``split`` ("test", "val" or "train"),
        with the current weights (EMA if kept) or the given ``params``/``buffers``."""
        if params is None:
            params = self.ema if (use_ema and self.ema is not None) else self.state.params
        buffers = self.state.buffers if buffers is None else buffers
        t = self.config.train
        was_training = self.model.training
        self.model.eval()
        acc: EvalAccumulator | None = None
        seen = 0
        amp = self.parts.settings.autocast_dtype
        for x, y in self._eval_batches(split):
            if limit is not None:
                if seen >= limit:
                    break
                x, y = x[: limit - seen], y[: limit - seen]
            logits = eval_logits(self.model, params, buffers, x, self.parts.settings.frozen, amp, t.tta_flip)
            if acc is None:
                acc = EvalAccumulator(self._num_classes or logits.shape[1], loss_fn=getattr(self, "_criterion", None))
            acc.update(logits, y)
            seen += int(y.shape[0])
        self.model.train(was_training)
        if acc is None:
            raise ValueError(f"the {split} data is empty")
        if split == "test":
            self.test_confusion = acc.confusion.tolist() if acc.confusion is not None else None
        return acc.summary({"test": "test", "val": "val", "train": "train_clean"}[split])

    def validate(self) -> dict[str, float]:
        """Evaluate on the validation data (``val_loader`` / ``data.val_split``): ``val_*`` metrics plus the
        seed's names (loss, accuracy, val_accuracy, precision, recall, f1, epoch_time, memory_mb). Steps a
        plateau scheduler given to the Trainer."""
        t0 = time.perf_counter()
        m = self.evaluate("val")
        out = {**m, "loss": m["val_loss"], "accuracy": m["val_acc"], "val_accuracy": m["val_acc"],
               "precision": m["val_precision"], "recall": m["val_recall"], "f1": m["val_f1"],
               "epoch_time": time.perf_counter() - t0, "memory_mb": _memory_mb(self.parts.device)}
        if _is_plateau(self.scheduler):
            _step_plateau(self.scheduler, out)
        return out

    # ----------------------------------------------------------------- training
    def _step_inputs(self, epoch: int):
        """(x, y, w, splits) per optimizer step: ``train.accumulate_batches`` loader batches concatenated."""
        n = self.config.train.accumulate_batches
        group: list = []
        for b in self.parts.train_loader.epoch(epoch):
            group.append(b)
            if len(group) == n:
                yield _merge(group)
                group = []
        if group:
            yield _merge(group)

    def _train_epoch(self, epoch: int, bar: "EpochProgress | None") -> tuple[dict[str, Any], bool]:
        """One epoch of steps: (train metrics, diverged)."""
        t = self.config.train
        world = self.dist.world_size
        reducer = dist_utils.sum_gradients if self.dist.enabled else None
        self.model.train()
        t0 = time.perf_counter()
        losses: list[Tensor] = []
        correct = torch.zeros((), dtype=torch.long, device=self.parts.device)
        preds: list[Tensor] = []
        labels: list[Tensor] = []
        seen = 0
        lr = float("nan")
        steps = self.steps_per_epoch
        for i, (x, y, w, splits) in enumerate(self._step_inputs(epoch)):
            lr = self.parts.schedule.lr(self.state.step)
            self.state, out = train_step(
                self.model, self.state, x, y, w, lr, self.parts.settings,
                denominator=len(y) * world, grad_reducer=reducer, splits=splits)
            self._update_ema()
            for cb in self.callbacks:
                cb.on_batch_end(self, self.state.step)
            losses.append(out.loss)
            correct += out.correct
            preds.append(out.pred)
            labels.append(y)
            seen += len(y)
            if (i + 1) % t.log_every == 0 or i + 1 == steps:
                recent = float(torch.stack(losses[-t.log_every:]).mean())
                if not math.isfinite(recent):
                    return {}, True
                if bar is not None:
                    bar.update(i + 1, recent, float(correct) / max(seen, 1), seen * world / (time.perf_counter() - t0))
                for cb in self.callbacks:
                    cb.on_step_end(self, self.state.step, recent)
        if losses and not math.isfinite(float(torch.stack(losses).mean())):
            return {}, True
        train_time = time.perf_counter() - t0
        if self.dist.enabled:
            dist_utils.broadcast_tensors(self.state.buffers)
        m = self._train_metrics(epoch, losses, correct, seen * world, train_time, lr)
        if preds:
            y_all, p_all = torch.cat(labels), torch.cat(preds)
            k = self._num_classes or int(torch.maximum(y_all.max(), p_all.max())) + 1
            m.update({f"train_{n}": v for n, v in macro_prf(confusion_matrix(p_all, y_all, k)).items()})
        self._after_train_epoch()
        return m, False

    def _after_train_epoch(self) -> None:
        """Hand the weights (and optimizer state) back to the user's objects; step a per-epoch scheduler."""
        self.sync_model()
        if self.scheduler is not None and not _is_plateau(self.scheduler):
            self.scheduler.step()

    def sync_model(self) -> None:
        """Copy the step's weights and optimizer state into the user's model and torch optimizer (bring-your-own
        route; the config route's model is only a template and is left alone)."""
        if not self.user_route:
            return
        with torch.no_grad():
            for n, p in self.state.params.items():
                target = self._targets[n]
                if target.data_ptr() != p.data_ptr():
                    target.copy_(p)
            for n, b in self.model.named_buffers():
                src = self.state.buffers.get(n)
                if src is not None and src.data_ptr() != b.data_ptr():
                    b.copy_(src)
        assert self.user_optimizer is not None  # the user route always has one
        sync_torch_optimizer(self.user_optimizer, self.parts.settings.optimizer, self._targets, self.state.opt_state, self.state.step)

    def train_epoch(self) -> dict[str, Any]:
        """Train one epoch and return its metrics: ``train_*`` plus the seed's names (loss, accuracy,
        precision, recall, f1, epoch_time, memory_mb, lr). Raises TrainingDiverged on a non-finite loss."""
        m, diverged = self._train_epoch(self.epoch, None)
        if diverged:
            raise TrainingDiverged(f"the training loss became non-finite in epoch {self.epoch + 1} (step {self.state.step})")
        self.epoch += 1
        self._elapsed += m["train_time_s"]
        return {**m, "loss": m["train_loss"], "accuracy": m["train_acc"], "precision": m.get("train_precision"),
                "recall": m.get("train_recall"), "f1": m.get("train_f1"), "epoch_time": m["train_time_s"],
                "memory_mb": _memory_mb(self.parts.device)}

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to the configured number of epochs (or an early stop) and return the result record.

        With a validation split, each epoch is evaluated on it (``val_*``: what monitors watch) and the test
        split only once training has ended, for the last weights and the best checkpoint's."""
        cfg, t = self.config, self.config.train
        ckpt_path = self.run_dir / "checkpoints" / "last.pt" if self.run_dir else None
        if self.run_dir and self.is_main:
            self._prepare_run_dir(resume)
        if resume and ckpt_path is not None and ckpt_path.exists():
            self._restore(ckpt_path)
            if self.is_main and self.run_dir is not None:
                write_text_atomic(self.run_dir / "metrics.jsonl", "".join(_jsonl(h) for h in self.history))
        for cb in self.callbacks:
            cb.on_train_start(self)

        diverged = False
        eval_split = "val" if self.has_val else ("test" if self.has_test else None)
        with EpochProgress(self.progress and self.is_main, t.epochs, self.steps_per_epoch) as bar:
            while self.epoch < t.epochs and not self.should_stop:
                epoch = self.epoch
                bar.start_epoch(epoch)
                metrics, diverged = self._train_epoch(epoch, bar)
                if diverged:
                    break
                t1 = time.perf_counter()
                if eval_split is not None:
                    metrics.update(self.evaluate(eval_split))
                if t.clean_train_eval and not self.user_route:
                    metrics.update(self.evaluate("train"))
                    ref = "val_acc" if eval_split == "val" else "test_acc"
                    metrics["gen_gap"] = metrics["train_clean_acc"] - metrics[ref]
                metrics.update(_memory_stats(self.parts.device))
                metrics["eval_time_s"] = time.perf_counter() - t1
                self._elapsed += metrics["train_time_s"] + metrics["eval_time_s"]
                watched = f"{eval_split}_loss" if eval_split else "train_loss"
                if not math.isfinite(metrics["train_loss"]) or not math.isfinite(metrics[watched]):
                    diverged = True
                    break
                if cfg.schedule.name == "plateau" and not self.user_route:
                    self.parts.schedule.observe(_monitored(metrics, cfg.schedule.monitor))
                if _is_plateau(self.scheduler):
                    _step_plateau(self.scheduler, metrics)
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, metrics)
                self.history.append(metrics)
                self.epoch = epoch + 1
                bar.end_epoch(metrics)
                if self.run_dir and ckpt_path and self.is_main:
                    if self.epoch % t.checkpoint_every == 0 or self.epoch == t.epochs or self.should_stop:
                        self.save_checkpoint(ckpt_path, self.epoch)
                    append_jsonl(self.run_dir / "metrics.jsonl", metrics)

        if self.test_confusion is None and self.history and not diverged and self.has_test:
            self.evaluate("test")  # resumed at its final epoch: the confusion matrix is not in the checkpoint
        result = self._result("diverged" if diverged else "completed")
        if self.run_dir and self.is_main:
            write_json_atomic(self.run_dir / "result.json", result)
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        if diverged:
            raise TrainingDiverged(f"the training loss became non-finite in epoch {self.epoch + 1} (step {self.state.step})")
        return result

    def _train_metrics(self, epoch: int, losses: list[Tensor], correct: Tensor, seen: int, train_time: float, lr: float) -> dict[str, Any]:
        train_loss = float(torch.stack(losses).mean()) if losses else float("nan")
        if self.dist.enabled:  # average the logged train loss/accuracy over ranks
            agg = torch.tensor([train_loss, float(correct)], dtype=torch.float64)
            torch.distributed.all_reduce(agg)
            train_loss, correct_all = float(agg[0]) / self.dist.world_size, float(agg[1])
        else:
            correct_all = float(correct)
        return {"epoch": epoch + 1, "step": self.state.step, "lr": lr, "train_loss": train_loss,
                "train_acc": correct_all / max(seen, 1), "train_time_s": train_time,
                "images_per_s": seen / train_time if train_time > 0 else float("nan")}

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
        check_same_run(self.run_dir, self.config.to_dict(), action="resume" if resume else "train into", kind_only=not resume,
                       ignore=("train.epochs",))  # a longer run extends this one: _restore checks the schedule allows it
        ensure_contained(self.run_dir, "checkpoints", "metrics.jsonl", "result.json", "config.yaml")
        if not resume and (result.exists() or (self.run_dir / "checkpoints" / "last.pt").exists()):
            raise FileExistsError(f"run directory {self.run_dir} already holds a run; use --resume to continue it or pick another --out")
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        if result.exists():
            result.unlink()  # a resumed run is not done until it writes a new result
        write_yaml_atomic(self.run_dir / "config.yaml", self.config.to_dict())

    def _final_test(self, result: dict[str, Any], ckpt_cb: "ModelCheckpoint | None") -> None:
        """With a validation split: the test split, evaluated now for the first time, for the last weights and
        for the best checkpoint's (chosen on validation)."""
        last = self.evaluate("test")
        result["final"] = {**result["final"], **last}
        result["test"] = {"last": last}
        if ckpt_cb is not None and ckpt_cb.best_path and ckpt_cb.save_dir is None and self.run_dir is not None:
            ckpt = load_checkpoint(self.run_dir / "checkpoints" / ckpt_cb.best_path)
            params, buffers = checkpoint_weights(ckpt, self.parts.device)
            best = self.evaluate("test", params=params, buffers=buffers)
            result["test"]["best"] = best
            self.evaluate("test")  # the confusion matrix stays the last weights'

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
            "selection": "val" if self.has_val else ("test" if self.has_test else "train"),
            "precision": {"autocast": self.precision, "channels_last": self.parts.channels_last,
                          "reason": self.precision_reason, "channels_last_reason": self.channels_last_reason},
            "malloc": {"allocator": self.malloc, "reason": self.malloc_reason},
            "timings": {"total_s": self._elapsed, "train_s": sum(train_times),
                        "images_per_s": images / sum(train_times) if train_times and sum(train_times) > 0 else None},
            "seeds": seeds(self.config),
            "device": str(self.parts.device),
            "world_size": self.dist.world_size,
            "num_params": sum(p.numel() for p in self.state.params.values()),
            "classes": self.parts.dataset.classes if self.parts.dataset is not None else None,
            "confusion_matrix": self.test_confusion,
            "versions": versions(),
        }
        if self.extended_from is not None:
            result["extended_from_epochs"] = self.extended_from
        if not self.user_route and self.parts.val_indices is not None:
            result["validation"] = {"examples": int(self.parts.val_indices.numel()), "val_split": self.config.data.val_split,
                                    "val_seed": self.config.data.val_seed}
        if ckpt_cb and ckpt_cb.best_path:
            best = ckpt_cb.kept[0]
            where = f"checkpoints/{best[2]}" if ckpt_cb.save_dir is None else str(ckpt_cb.get_best_checkpoint_path())
            result["best"] = {"monitor": ckpt_cb.monitor, "value": best[0], "epoch": best[1] + 1, "checkpoint": where}
        if status == "completed" and self.has_val and self.has_test and self.is_main:
            self._final_test(result, ckpt_cb)
            if "best" in result and "best" in result["test"]:
                result["best"]["test"] = result["test"]["best"]
            result["confusion_matrix"] = self.test_confusion
        elif final:
            result["test"] = {"last": {k: v for k, v in final.items() if k.startswith("test_")}}
        if self.dist.enabled:
            result["ranks_identical"] = dist_utils.all_equal(_checksum(self.state.params))
        return result

    def trained_model(self, use_ema: bool = True) -> torch.nn.Module:
        """The model (eval mode) with the trained weights loaded."""
        return model_from_state(self.model, self.ema if (use_ema and self.ema is not None) else self.state.params, self.state.buffers)


def _merge(batches: list) -> tuple[Tensor, Tensor, Tensor, list[int] | None]:
    if len(batches) == 1:
        b = batches[0]
        return b.x, b.y, b.w, None
    return (torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches]), torch.cat([b.w for b in batches]),
            [len(b) for b in batches])


def _is_plateau(scheduler: Any) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) or bool(getattr(scheduler, "is_plateau", False))


def _step_plateau(scheduler: Any, metrics: dict[str, Any]) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(float(_monitored(metrics, "val_loss")))
    else:
        scheduler.step(metrics=metrics)


def _memory_mb(device: torch.device) -> float:
    """Peak memory so far in MiB: allocated on a CUDA device, else this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_bytes() / 2**20


def _memory_stats(device: torch.device) -> dict[str, float]:
    """An epoch's memory metric: ``peak_mem_mb`` (CUDA, this epoch's peak) or ``peak_rss_mb`` (the process's)."""
    if device.type == "cuda":
        peak = _memory_mb(device)
        torch.cuda.reset_peak_memory_stats(device)
        return {"peak_mem_mb": peak}
    return {"peak_rss_mb": _memory_mb(device)}


def _checksum(params: dict[str, Tensor]) -> Tensor:
    return torch.stack([p.detach().double().sum() for p in params.values()]).cpu()


def _jsonl(record: dict) -> str:
    from cnnlab.utils.io import to_json

    return to_json(record, indent=None) + "\n"
