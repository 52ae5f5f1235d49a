"""A user's data as the Trainer's batch sources: tensors, a torch Dataset, or a DataLoader (streamed).

Training sources yield :class:`cnnlab.data.batches.Batch` from ``epoch(e)``; evaluation sources are
callables returning an iterator of ``(x, y)`` on the device. uint8 images are scaled to [0, 1]; float
inputs are used as they are (normalise them yourself, or in the model).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cnnlab.data.batches import Batch, BatchLoader

EvalSource = Callable[[], Iterator[tuple[Tensor, Tensor]]]


def _xy(item: Any) -> tuple[Tensor, Tensor]:
    if isinstance(item, dict) and {"x", "y"} <= set(item):
        return item["x"], item["y"]
    if isinstance(item, (tuple, list)) and len(item) >= 2:
        return item[0], item[1]
    raise TypeError(f"a batch must be (inputs, targets) or {{'x': ..., 'y': ...}}, got {type(item).__name__}")


def _to_device(x: Tensor, y: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    nb = device.type == "cuda"
    x = x.to(device, non_blocking=nb)
    x = x.float().mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=nb)


class LoaderBatches:
    """Any iterable of (x, y) batches, e.g. a DataLoader: each batch moved to the device as it comes
    (non-blocking from pinned memory on CUDA), so data that does not fit in memory streams."""

    def __init__(self, loader: Any, device: torch.device, channels_last: bool = False):
        self.loader, self.device, self.channels_last = loader, device, channels_last

    def __len__(self) -> int:
        try:
            return len(self.loader)
        except TypeError:  # an IterableDataset without a length
            return 0

    def epoch(self, epoch: int) -> Iterator[Batch]:
        sampler = getattr(self.loader, "sampler", None)
        set_epoch = getattr(sampler, "set_epoch", None)
        if set_epoch is not None:  # DistributedSampler: a new shuffle each epoch
            set_epoch(epoch)
        for item in self.loader:
            x, y = _to_device(*_xy(item), self.device, self.channels_last)
            n = int(y.shape[0])
            yield Batch(x=x, y=y, w=torch.ones(n, device=self.device), index=torch.full((n,), -1, dtype=torch.int64))


def _tensor_pair(data: Any) -> tuple[Tensor, Tensor] | None:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data[0], data[1]
    return None


def train_source(data: Any, *, batch_size: int, seed: int, device: torch.device, channels_last: bool = False,
                 drop_last: bool = False):
    """Training batches from ``(images, labels)`` tensors (shuffled on the device, order a function of
    (seed, epoch)), a map-style Dataset (a seeded shuffling DataLoader), or a DataLoader / iterable as given."""
    pair = _tensor_pair(data)
    if pair is not None:
        return BatchLoader(pair[0], pair[1], batch_size, seed=seed, shuffle=True, drop_last=drop_last,
                           device=device, channels_last=channels_last)
    if hasattr(data, "epoch") and hasattr(data, "__len__"):
        return data
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        gen = torch.Generator().manual_seed(seed)
        data = DataLoader(data, batch_size=batch_size, shuffle=True, generator=gen, drop_last=drop_last,
                          pin_memory=device.type == "cuda")
    if isinstance(data, Tensor):
        raise TypeError("train data as tensors is a pair (images, labels)")
    if not hasattr(data, "__iter__"):
        raise TypeError(f"train data must be (images, labels) tensors, a torch Dataset or a DataLoader, got {type(data).__name__}")
    return LoaderBatches(data, device, channels_last)


def eval_source(data: Any, *, batch_size: int, device: torch.device, channels_last: bool = False) -> EvalSource:
    """Evaluation batches (in order, no shuffling) from the same kinds of data as :func:`train_source`."""
    pair = _tensor_pair(data)
    if pair is not None:
        x_all, y_all = pair
        if x_all.shape[0] != y_all.shape[0]:
            raise ValueError(f"eval data: {x_all.shape[0]} inputs but {y_all.shape[0]} targets")

        def tensors() -> Iterator[tuple[Tensor, Tensor]]:
            for s in range(0, x_all.shape[0], batch_size):
                yield _to_device(x_all[s:s + batch_size], y_all[s:s + batch_size], device, channels_last)

        return tensors
    if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False, pin_memory=device.type == "cuda")
    if not hasattr(data, "__iter__"):
        raise TypeError(f"eval data must be (images, labels) tensors, a torch Dataset or a DataLoader, got {type(data).__name__}")

    def loader() -> Iterator[tuple[Tensor, Tensor]]:
        for item in data:
            yield _to_device(*_xy(item), device, channels_last)

    return loader
