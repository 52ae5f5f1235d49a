"""MAGIC data attribution: exact metagradients tau_i = d phi / d w_i at w = 1 through a whole training run.

Training minimises sum_i w_i loss_i with every source of randomness fixed, so the trained model is a
deterministic function of w and phi (a measurement on test targets) can be differentiated exactly by
replaying the run backwards (:mod:`cnnlab.attribution.replay`). Removing a set S of training examples
is predicted to change phi by -sum_{i in S} tau_i.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import torch
from torch import Tensor, nn

from cnnlab.attribution.checkpointing import Checkpointing
from cnnlab.attribution.measures import Measurement, MeasureFn, get_measurement
from cnnlab.attribution.replay import Replay, ReplayStats
from cnnlab.attribution.scores import Scores
from cnnlab.data import ImageDataset
from cnnlab.engine.config import ConfigError, RunConfig
from cnnlab.engine.setup import RunParts, apply_malloc, apply_runtime, build_run, nonfunctional_optimizer
from cnnlab.engine.step import TrainState, eval_logits

log = logging.getLogger("cnnlab.attribution")

# Settings that made metagradients chaotic in this project's measurements (2-core CPU, small CNN on MNIST):
# ReLU + max pooling LDS 0.41-0.43, no BatchNorm at lr 0.05: 0.11, lr 0.1: 0.94 (vs 0.99 at 0.05).
HIGH_LR = 0.1


def prepare_config(config: RunConfig) -> RunConfig:
    """The config MAGIC explains: ``train.bn_stats`` forced to "explicit" (differentiable running stats).

    Raises ConfigError naming the setting when the run cannot be differentiated exactly.
    """
    t = config.train
    if t.precision == "auto":  # cnnlab's choice for an exact replay is fp32 (the run MAGIC trains uses this config)
        config = config.model_copy(update={"train": t.model_copy(update={"precision": "fp32"})})
        t = config.train
    if t.precision != "fp32":
        raise ConfigError(f"train.precision: MAGIC needs exact fp32 arithmetic, got {t.precision!r} (autocast "
                          "rounding and fp16 loss scaling are not differentiable); set train.precision=fp32")
    if t.ema is not None:
        raise ConfigError("train.ema: MAGIC differentiates the trained weights themselves; an EMA of them is "
                          "not replayed. Remove train.ema")
    if t.compile:
        raise ConfigError("train.compile: a compiled training run is not bitwise the eager one the replay recomputes; "
                          "set train.compile=false (the replay itself compiles with compile=True / cnnlab magic --compile)")
    if config.schedule.name == "plateau":
        raise ConfigError("schedule.name: 'plateau' changes the rate from evaluation results at epoch ends; "
                          "MAGIC needs a schedule that is a function of the step (onecycle, cosine, step, ...)")
    if config.callbacks.early_stopping is not None:
        raise ConfigError("callbacks.early_stopping: the replay needs a fixed number of epochs; remove it")
    if t.accumulate_batches > 1:
        raise ConfigError("train.accumulate_batches: the replay recomputes one loader batch per step; use "
                          "train.batch_size (with train.accumulation for memory) instead")
    problem = nonfunctional_optimizer(config)
    if problem:
        raise ConfigError(problem.replace("this analysis", "MAGIC"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("data-parallel runs (WORLD_SIZE > 1) are not replayed; run MAGIC in one process")
    if t.bn_stats != "explicit":
        config = config.model_copy(update={"train": t.model_copy(update={"bn_stats": "explicit"})})
    return config


def check_model(model: nn.Module) -> None:
    """Random layers would make the replay's recompute differ from the run: refuse them."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            raise ConfigError(f"model.options.dropout: {name or 'the model'} has dropout p={m.p}, whose masks come "
                              "from the global RNG and cannot be replayed; set dropout to 0")


def check_determinism(device: torch.device) -> None:
    if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        raise ConfigError("train.deterministic: on CUDA the replay must recompute every step bit for bit; "
                          "set train.deterministic=true")


def chaos_warnings(config: RunConfig, parts: RunParts) -> list[str]:
    """Settings known to make metagradients chaotic (attribution quality, not exactness)."""
    mods = list(parts.model.modules())
    out = []
    relu = any(isinstance(m, nn.ReLU) for m in mods)
    maxpool = any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in mods)
    if relu and maxpool:
        out.append("ReLU + max pooling: metagradients of such runs are chaotic (reference LDS 0.41-0.43 vs 0.96-0.99 "
                   "with GELU + average pooling); prefer activation=gelu, pool=avg")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods):
        out.append("no BatchNorm: metagradients without BN were chaotic in the reference (LDS 0.11 at lr 0.05)")
    peak = max(parts.schedule.lr(t) for t in range(parts.schedule.total_steps))
    if peak >= HIGH_LR:
        out.append(f"high learning rate (peak {peak:g} >= {HIGH_LR:g}): LDS fell to 0.94 at lr 0.1 in the reference "
                   "(0.99 at 0.05); a smaller rate gives smoother metagradients")
    return out


@dataclass
class MagicResult:
    """MAGIC's answer: the scores in the shared layout (``attribution``, a :class:`~cnnlab.attribution.scores.Scores`
    N_train × K: row r is training example ``train_indices[r]``, column j test target ``target_indices[j]``),
    the measurement at the full run, and what the replay cost. ``scores``, ``train_indices``, ... read through
    to ``attribution``."""

    attribution: Scores
    phi: Tensor
    stats: ReplayStats
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    final_state: TrainState | None = None

    @property
    def scores(self) -> Tensor:
        return self.attribution.scores

    @property
    def train_indices(self) -> Tensor:
        return self.attribution.train_indices

    @property
    def target_indices(self) -> Tensor:
        return self.attribution.target_indices

    @property
    def measurement(self) -> str:
        return self.attribution.measurement

    @property
    def higher_is_better(self) -> bool:
        return self.attribution.higher_is_better

    def proponents(self, target: int, k: int = 8) -> tuple[Tensor, Tensor]:
        """Dataset indices and scores of the k examples whose up-weighting most improves target column ``target``."""
        col = self.scores[:, target] * (1 if self.higher_is_better else -1)
        top = torch.topk(col, min(k, col.numel()))
        return self.train_indices[top.indices], self.scores[top.indices, target]

    def opponents(self, target: int, k: int = 8) -> tuple[Tensor, Tensor]:
        col = self.scores[:, target] * (-1 if self.higher_is_better else 1)
        top = torch.topk(col, min(k, col.numel()))
        return self.train_indices[top.indices], self.scores[top.indices, target]

    def predicted_change(self, removed_rows: Tensor) -> Tensor:
        """Predicted change of phi (K,) when the training rows ``removed_rows`` (bool N_train or indices) are removed."""
        return -self.scores[removed_rows].sum(0)


def target_data(parts: RunParts, targets: list[int] | Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Eval-transformed inputs and labels of the test targets, on the run's device."""
    idx = torch.as_tensor(targets, dtype=torch.long)
    test = parts.dataset.test
    x = parts.eval_images(test.images[idx], 0, len(idx), dtype=dtype)
    return x, test.labels[idx].to(parts.device)


def measure_state(parts: RunParts, state: TrainState, x: Tensor, y: Tensor,
                  measure: Union[str, Measurement, MeasureFn] = "loss") -> Tensor:
    """phi of a trained state on the targets: eval-mode forward with its params and running statistics."""
    m = get_measurement(measure)
    model = parts.model
    was_training = model.training
    model.eval()
    try:
        logits = eval_logits(model, state.params, state.buffers, x, {n: p.detach() for n, p in model.named_parameters()
                                                                       if n not in state.params})
    finally:
        model.train(was_training)
    return m(logits, y)


def compute_magic(
    config: RunConfig,
    *,
    targets: list[int] | None = None,
    measure: Union[str, Measurement, MeasureFn] = "loss",
    checkpointing: Union[str, Checkpointing] = "log",
    tree_k: int = 4,
    dtype: torch.dtype = torch.float32,
    dataset: ImageDataset | None = None,
    device: str | torch.device | None = None,
    vjp: str = "auto",
    offload: bool = False,
    progress: Callable[[int, int], None] | None = None,
    states: Mapping[int, TrainState] | None = None,
    compile: bool = False,
    compile_chunk: int = 4,
    batch_targets: list[int] | None = None,
) -> MagicResult:
    """MAGIC scores of every training example for ``measure`` on test ``targets`` (default 0..49).

    One replay serves all K targets (``vjp``: auto | batched | looped, see :class:`Replay`).
    ``dtype=torch.float64`` converts model and data (exactness checks). ``states``: the run's states
    recorded while it trained (:class:`~cnnlab.attribution.replay.RecordReplayStates`), which spare the
    replay its first forward pass (float32 only). ``compile``: reverse the steps with a torch.compile'd VJP,
    ``compile_chunk`` targets per call (:class:`~cnnlab.attribution.compiled.CompiledReverseStep`; pays off
    for long runs: compiling takes minutes, seconds from inductor's cache).
    ``batch_targets``: the test examples the measurement's eval forward runs on together (a superset of
    ``targets``; default: ``targets``). A chunk of a longer target list passes the whole list, so that its
    columns are bit for bit those of one run over the list (the forward's rounding can depend on batch size).
    """
    config = prepare_config(config)
    apply_runtime(config)
    parts = build_run(config, dataset=dataset, device=torch.device(device) if device is not None else None)
    apply_malloc(parts.device)
    check_model(parts.model)
    check_determinism(parts.device)
    warnings = chaos_warnings(config, parts)
    for w in warnings:
        log.warning("MAGIC: %s", w)
    m = get_measurement(measure)
    if targets is None:
        targets = list(range(min(50, len(parts.dataset.test))))
    if not targets:
        raise ValueError("targets: at least one test example is needed")

    replay = Replay(parts, dtype=dtype, checkpointing=checkpointing, tree_k=tree_k, offload=offload, vjp=vjp,
                    compile=compile, compile_chunk=compile_chunk, progress=progress)
    batch = list(targets) if batch_targets is None else [int(i) for i in batch_targets]
    missing = sorted(set(int(i) for i in targets) - set(batch))
    if missing:
        raise ValueError(f"batch_targets must contain every target; {missing[:5]} are not in it")
    bad = [i for i in batch if not 0 <= i < len(parts.dataset.test)]
    if bad:
        raise ValueError(f"targets: {bad[:5]} are outside the test split [0, {len(parts.dataset.test)})")
    columns = torch.as_tensor([batch.index(int(i)) for i in targets], dtype=torch.long, device=parts.device)
    whole = columns.numel() == len(batch) and bool((columns == torch.arange(len(batch), device=parts.device)).all())
    x, y = target_data(parts, batch, dtype)

    def phi_of(s: TrainState) -> Tensor:
        values = measure_state(parts, s, x, y, m)
        return values if whole else values[columns]

    t0 = time.perf_counter()
    tau, phi, final = replay.metagradient(phi_of, len(targets), states if dtype == torch.float32 else None)
    train_idx = parts.train_loader.indices
    scores = tau[:, train_idx.to(tau.device)].T.contiguous().cpu()
    settings = {"checkpointing": replay.strategy.describe(), "dtype": str(dtype).replace("torch.", ""),
                "device": str(parts.device), "vjp": vjp, "offload": replay.offload, "compile": compile,
                "time_s": time.perf_counter() - t0, "config": config.to_dict()}
    scored = Scores(scores, train_idx.clone(), torch.as_tensor(targets, dtype=torch.long), m.name, "magic",
                    m.higher_is_better)
    return MagicResult(scored, phi.cpu(), replay.stats, warnings, settings, final)
