"""Deterministic batches from in-memory uint8 tensors: order and augmentation are pure functions of (seed, epoch).

The images are moved to the training device once; each batch is a gather by dataset index on that device,
then batched augmentation (:class:`cnnlab.data.augment.Augment`). Seed paths:

- epoch order: ``make_generator(seed, f"order/{epoch}")`` (CPU), a permutation of the subset ``indices``;
- augmentation of global batch ``i``: ``make_generator(seed, f"augment/{epoch}/{i}", device)``.

So ``batch(e, i)`` can be recomputed alone (MAGIC replay), and a data-parallel run (``world_size`` ranks,
each taking a contiguous shard of every global batch) sees exactly the examples and augmentations of the
single-process run: the random draws are made for the whole global batch and each rank applies its slice.

Batches per epoch with ``m`` examples in the subset, global batch size ``B`` and ``world_size`` ranks:

- ``drop_last=True``: ``m // B`` full batches; the rest of the epoch is skipped.
- ``drop_last=False``: the last batch is partial. With ``world_size > 1`` it is trimmed to a multiple of
  ``world_size`` so that every rank gets an equal shard and runs the same number of steps (at most
  ``world_size - 1`` examples are skipped; if fewer than ``world_size`` remain the partial batch is skipped).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from cnnlab.data.augment import Augment
from cnnlab.utils.seeding import make_generator


@dataclass
class Batch:
    """One (shard of a) batch on the training device."""

    x: torch.Tensor      # float, normalised + augmented (or in [0, 1] without an Augment), dtype/memory format as asked
    y: torch.Tensor      # int64 labels
    w: torch.Tensor      # float32 per-example weights (ones when none were given)
    index: torch.Tensor  # int64 dataset indices of the examples

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _as_index_tensor(name: str, values: torch.Tensor | Sequence[int]) -> torch.Tensor:
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(values)
    if t.numel() == 0 and t.ndim == 1:
        return t.to("cpu", torch.int64)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integers, got dtype {t.dtype}")
    return t.to("cpu", torch.int64)


class BatchLoader:
    """Epochs of :class:`Batch` from uint8 images N×C×H×W (float N×... without augmentation: served as they are)
    and labels N; see the module doc for the semantics."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        indices: torch.Tensor | Sequence[int] | None = None,
        weights: torch.Tensor | Sequence[float] | None = None,
        augment: Augment | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        ok = isinstance(images, torch.Tensor) and (
            (images.dtype == torch.uint8 and images.ndim == 4) or (augment is None and images.is_floating_point() and images.ndim >= 2))
        if not ok:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a uint8 tensor N×C×H×W (or, without augmentation, a float tensor N×...), got {got}")
        n = images.shape[0]
        labels = _as_index_tensor("labels", labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match images, got {tuple(labels.shape)}")
        for name, v in (("batch_size", batch_size), ("world_size", world_size), ("seed", seed), ("rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an int, got {v!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by world_size {world_size}: each rank takes "
                             f"an equal contiguous shard of every global batch")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
        if augment is not None and not isinstance(augment, Augment):
            raise TypeError(f"augment must be a cnnlab.data.augment.Augment or None, got {type(augment).__name__}")

        if indices is None:
            subset = torch.arange(n, dtype=torch.int64)
        else:
            subset = _as_index_tensor("indices", indices)
            if subset.ndim != 1:
                raise ValueError(f"indices must be 1-D, got shape {tuple(subset.shape)}")
            if subset.numel() and (int(subset.min()) < 0 or int(subset.max()) >= n):
                bad = subset[(subset < 0) | (subset >= n)][:5].tolist()
                raise ValueError(f"indices must be in [0, {n}), got out-of-range values {bad}")
        if subset.numel() == 0:
            raise ValueError("no examples: images is empty or indices selects none")

        if weights is None:
            w = torch.ones(n, dtype=torch.float32)
        else:
            w = weights if isinstance(weights, torch.Tensor) else torch.as_tensor(weights)
            if w.dtype == torch.bool or w.is_complex():
                raise ValueError(f"weights must be real numbers, got dtype {w.dtype}")
            if w.shape != (n,):
                raise ValueError(f"weights must have shape ({n},) (one per dataset example, indexed by dataset "
                                 f"index), got {tuple(w.shape)}")
            w = w.detach().to("cpu", torch.float32)
            if not bool(torch.isfinite(w).all()):
                bad = torch.nonzero(~torch.isfinite(w)).flatten()[:5].tolist()
                raise ValueError(f"weights must be finite; non-finite at dataset indices {bad}")

        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.weights = w.to(self.device)
        self.indices = subset
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.dtype = dtype
        self.channels_last = channels_last
        self.rank = rank
        self.world_size = world_size
        self._order: tuple[int, torch.Tensor] | None = None
        if len(self) == 0:
            raise ValueError(f"no batches: {subset.numel()} examples with batch_size {batch_size}, "
                             f"drop_last={drop_last}, world_size={world_size}")
        if augment is not None:
            augment.validate_shape(images.shape)

    @property
    def num_examples(self) -> int:
        """Examples in the subset (before ``drop_last`` trimming)."""
        return int(self.indices.numel())

    @property
    def shard_size(self) -> int:
        """Examples per rank in a full batch."""
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        full, rest = divmod(self.num_examples, self.batch_size)
        if self.drop_last:
            return full
        return full + (1 if rest // self.world_size > 0 else 0)

    def order(self, epoch: int) -> torch.Tensor:
        """Dataset indices of the whole epoch in batch order (all ranks), on the device."""
        self._check_epoch(epoch)
        if self._order is None or self._order[0] != epoch:
            if self.shuffle:
                perm = torch.randperm(self.num_examples, generator=make_generator(self.seed, f"order/{epoch}"))
                order = self.indices[perm]
            else:
                order = self.indices
            self._order = (epoch, order.to(self.device))
        return self._order[1]

    def global_bounds(self, i: int) -> tuple[int, int]:
        """[start, end) positions of global batch ``i`` in the epoch order."""
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self):
            raise IndexError(f"batch index must be an int in [0, {len(self)}), got {i!r}")
        start = i * self.batch_size
        size = min(self.batch_size, self.num_examples - start)
        size -= size % self.world_size
        return start, start + size

    def batch(self, epoch: int, i: int) -> Batch:
        """Batch ``i`` of ``epoch`` (this rank's shard), identical to the ``i``-th batch of ``epoch(epoch)``."""
        start, end = self.global_bounds(i)
        order = self.order(epoch)
        global_index = order[start:end]
        shard = (end - start) // self.world_size
        lo, hi = self.rank * shard, (self.rank + 1) * shard
        index = global_index[lo:hi]
        raw = self.images.index_select(0, index)
        if self.augment is None:
            x = raw.to(self.dtype).mul_(1.0 / 255.0) if raw.dtype == torch.uint8 else raw.to(self.dtype)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        else:
            gen = make_generator(self.seed, f"augment/{epoch}/{i}", self.device)
            shape = (end - start, *self.images.shape[1:])
            params = self.augment.sample(shape, generator=gen, epoch=epoch, index=global_index)
            if self.world_size > 1:
                params = params.slice(lo, hi)
            x = self.augment.apply(raw, params, dtype=self.dtype, channels_last=self.channels_last)
        return Batch(x=x, y=self.labels.index_select(0, index), w=self.weights.index_select(0, index), index=index)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of ``epoch`` in order."""
        self._check_epoch(epoch)
        for i in range(len(self)):
            yield self.batch(epoch, i)

    @staticmethod
    def _check_epoch(epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")


__all__ = ["Batch", "BatchLoader"]
