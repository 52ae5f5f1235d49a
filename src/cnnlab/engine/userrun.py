"""The Trainer's bring-your-own route: the user's nn.Module, torch optimizer, loaders and loss turned into the
pieces the one functional step runs on (a RunConfig describing them, the train state, the data sources)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from cnnlab.engine import distributed as dist_utils
from cnnlab.engine.config import RunConfig, TrainConfig
from cnnlab.engine.optim import from_torch_optimizer, load_torch_optimizer_state
from cnnlab.engine.setup import RunParts, resolve_device, resolve_precision
from cnnlab.engine.step import StepSettings, TrainState
from cnnlab.engine.userdata import eval_source, train_source
from cnnlab.utils.seeding import derive_seed


@dataclass
class UserRun:
    """What :func:`build_user_run` makes of the user's pieces."""

    config: RunConfig
    dist: dist_utils.DistInfo
    state: TrainState
    parts: RunParts
    sources: dict[str, Any] = field(default_factory=dict)  # "val" / "test" -> eval batch source
    criterion: Callable[[Tensor, Tensor], Tensor] | None = None
    targets: dict[str, nn.Parameter] = field(default_factory=dict)  # the user's trainable parameters, by name


class OptimizerRate:
    """The bring-your-own route's rate: group 0 of the user's torch optimizer, read at every step (so the
    user's own scheduler, stepping that optimizer, drives the functional update too)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def lr(self, step: int) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def observe(self, value: float) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None: ...


def build_user_run(model, device, criterion, optimizer, train_loader, val_loader, test_loader, use_amp,
                   accumulate, clip, epochs, batch_size, seed, channels_last) -> UserRun:
    """Check and assemble the user's pieces (see :class:`~cnnlab.engine.trainer.Trainer` for the arguments)."""
    if model is None or optimizer is None or train_loader is None:
        missing = [n for n, v in (("model", model), ("optimizer", optimizer), ("train_loader", train_loader)) if v is None]
        raise TypeError(f"Trainer needs a RunConfig, or model=, optimizer= and train_loader= (missing: {', '.join(missing)})")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if criterion is not None and getattr(criterion, "reduction", "mean") != "mean":
        raise ValueError(f"criterion must return the batch mean (reduction='mean'), got reduction={criterion.reduction!r}")
    dev = torch.device(device) if device is not None else resolve_device("auto")
    dist = dist_utils.DistInfo()
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # the step differentiates functionally, which DDP's autograd hooks never see: unwrap it and all-reduce
        # the gradients explicitly (each rank's train_loader holds its shard, e.g. a DistributedSampler)
        model = model.module
        dist = dist_utils.DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                                   int(os.environ.get("LOCAL_RANK", "0")))
    elif isinstance(model, nn.DataParallel):
        if len(model.device_ids or []) > 1:
            warnings.warn("DataParallel over several GPUs is not replicated by the functional step: the Trainer "
                          "runs the wrapped module on one device; use torchrun + DistributedDataParallel instead",
                          UserWarning, stacklevel=3)
        model = model.module
    config = RunConfig(name=type(model).__name__, seed=seed, train=TrainConfig(
        epochs=epochs, batch_size=batch_size, grad_clip=clip, precision="auto" if use_amp else "fp32",
        channels_last=channels_last, accumulate_batches=accumulate, device=str(dev)))
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    functional, names = from_torch_optimizer(optimizer, named)
    params = {n: named[n].detach() for n in names}  # shares storage with the model until the first update
    precision, _ = resolve_precision(config.train.precision, dev)
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    settings = StepSettings(optimizer=functional, grad_clip=clip, autocast_dtype=amp, criterion=criterion,
                            frozen={n: p.detach() for n, p in model.named_parameters() if n not in params})
    opt_state = functional.init_state(params)
    step0 = load_torch_optimizer_state(optimizer, functional, named, opt_state)
    scale = torch.tensor(2.0**16, device=dev) if amp == torch.float16 else None
    state = TrainState(params, {n: b.detach() for n, b in model.named_buffers()}, opt_state, step0, scale)
    loader = train_source(train_loader, batch_size=batch_size, seed=derive_seed(seed, "data"), device=dev, channels_last=channels_last)
    sources = {}
    for split, data in (("val", val_loader), ("test", test_loader)):
        if data is not None:
            sources[split] = eval_source(data, batch_size=config.train.eval_batch_size, device=dev, channels_last=channels_last)
    # no ImageDataset, no Augment (the user's data comes transformed), the rate from the user's optimizer:
    # Trainer.user_route tells the routes apart by parts.dataset being None
    parts = RunParts(config, dev, None, model, None, loader, settings, OptimizerRate(optimizer), 0,  # type: ignore[arg-type]
                     channels_last=channels_last)
    return UserRun(config, dist, state, parts, sources, criterion, named)
