"""Batched, seeded image augmentation on the training device: crop, flip, cutout, resize, normalisation.

Everything works on whole batches of uint8 images N×C×H×W with tensor ops (no per-image Python loop), so
the same code is fast on a GPU and cheap on a CPU. Randomness comes only from the ``torch.Generator`` the
caller passes (``BatchLoader`` derives one per batch from the run seed), so a batch is reproducible.

Steps, in this fixed order:

1. random crop with ``crop_padding`` pixels of zero or reflect padding, at the data's resolution
   (one gather from the unpadded images; the padded batch is never materialised);
2. horizontal flip: ``"random"`` (each image with probability 1/2) or ``"alternating"`` (airbench's
   scheme: a fixed pseudo-random half of the dataset, chosen by a seeded hash of the dataset index, is
   flipped on even epochs and exactly the other half on odd epochs); folded into the crop's gather;
3. conversion to float in [0, 1] and channel conversion (gray -> C by repetition, RGB -> gray with the
   ITU-R BT.601 luma weights 0.299/0.587/0.114);
4. resize to ``resize`` × ``resize`` (``F.interpolate``; antialiased when downscaling);
5. normalisation ``(x - mean) / std``;
6. cutout: one ``cutout`` × ``cutout`` square per image, fully inside the (resized) image, set to 0 —
   the dataset mean after normalisation (DeVries & Taylor 2017).

Steps 3-5 are the deterministic part, shared with evaluation through :func:`normalize` /
:meth:`Augment.eval_transform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from cnnlab.utils.seeding import derive_seed

LUMA_WEIGHTS = (0.299, 0.587, 0.114)
CROP_MODES = ("reflect", "zeros")
FLIP_MODES = (None, "random", "alternating")
RESIZE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")
_MASK32 = 0xFFFFFFFF
_HASH_MUL = 0x45D9F3B  # < 2**27, so (x < 2**32) * _HASH_MUL never overflows int64


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing hash of int64 values in [0, 2**32), computed without int64 overflow."""
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    x = (((x >> 16) ^ x) * _HASH_MUL) & _MASK32
    return (x >> 16) ^ x


def alternating_flip_mask(index: torch.Tensor, epoch: int, seed: int = 0) -> torch.Tensor:
    """Which examples airbench's alternating flip mirrors: a seeded half by dataset index, complemented on odd epochs.

    The half is ``hash(hash(index) + s) & 1 == 1`` with ``s`` derived from ``seed``; it does not depend on
    the batch an example lands in, so over any two consecutive epochs every example is seen both ways.
    """
    if index.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"index must be an integer tensor, got {index.dtype}")
    s = derive_seed(seed, "augment/alternating_flip") & _MASK32
    h = _hash32((_hash32(index.to(torch.int64) & _MASK32) + s) & _MASK32)
    base = (h & 1).bool()
    return base if epoch % 2 == 0 else ~base


def _as_stats(name: str, values: Sequence[float] | float) -> tuple[float, ...]:
    if isinstance(values, (int, float)):
        values = (float(values),)
    try:
        out = tuple(float(v) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be a float or a sequence of floats, got {values!r}") from None
    if not out:
        raise ValueError(f"{name} must have at least one value")
    if not all(torch.isfinite(torch.tensor(out))):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _check_int(name: str, value: Any, minimum: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        none = " or None" if allow_none else ""
        raise ValueError(f"{name} must be an integer >= {minimum}{none}, got {value!r}")


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"images must be a uint8 tensor N×C×H×W, got {got}")


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype, got {dtype!r}")


def _output_channels(data_channels: int, channels: int | None) -> int:
    if channels is None or channels == data_channels:
        return data_channels
    if data_channels == 1 or (data_channels == 3 and channels == 1):
        return channels
    raise ValueError(
        f"cannot convert {data_channels}-channel images to channels={channels}: supported are gray -> any "
        "(repeat) and RGB (3) -> gray (1, luma)"
    )


def _convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Float N×C×H×W -> N×channels×H×W: gray repeated, or RGB -> luma."""
    c = x.shape[1]
    out = _output_channels(c, channels)
    if out == c:
        return x
    if c == 1:
        return x.expand(-1, out, -1, -1)
    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _resize(x: torch.Tensor, size: int | None, mode: str) -> torch.Tensor:
    if size is None or (x.shape[-2] == size and x.shape[-1] == size):
        return x
    down = size < x.shape[-2] or size < x.shape[-1]
    kwargs: dict[str, Any] = {}
    if mode in ("bilinear", "bicubic"):
        kwargs = {"align_corners": False, "antialias": down}
    y = F.interpolate(x, size=(size, size), mode=mode, **kwargs)
    return y.clamp_(0.0, 1.0) if mode == "bicubic" else y


def _check_stats_len(values: tuple[float, ...], channels: int, name: str, data_channels: int) -> None:
    if len(values) not in (1, channels):
        hint = ""
        if len(values) == data_channels:
            hint = (f"; these look like the data's {data_channels}-channel stats — compute stats of the converted "
                    f"images with cnnlab.data.augment.converted_stats(images, channels={channels})")
        raise ValueError(f"{name} has {len(values)} values but the images have {channels} channels after conversion{hint}")


def _stats_tensor(values: tuple[float, ...], channels: int, name: str, data_channels: int,
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    _check_stats_len(values, channels, name, data_channels)
    if len(values) == 1:
        values = values * channels
    return torch.tensor(values, dtype=dtype, device=device).view(1, channels, 1, 1)


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] | float,
    std: Sequence[float] | float,
    *,
    resize: int | None = None,
    resize_mode: str = "bilinear",
    channels: int | None = None,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """The deterministic transform (evaluation): uint8 -> float [0, 1] -> channels -> resize -> (x - mean) / std.

    ``mean``/``std`` (in [0, 1] units) describe the output channels; one value broadcasts to all of them.
    """
    _check_images(images)
    _check_float_dtype(dtype)
    mean_t, std_t = _as_stats("mean", mean), _as_stats("std", std)
    if min(std_t) <= 0:
        raise ValueError(f"std must be positive, got {std_t}")
    _check_int("resize", resize, 1, allow_none=True)
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    return _transform(images, mean_t, std_t, resize, resize_mode, channels, dtype, channels_last, None)


def _transform(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], resize: int | None,
               resize_mode: str, channels: int | None, dtype: torch.dtype, channels_last: bool,
               cache: dict | None) -> torch.Tensor:
    """:func:`normalize` without argument checks; ``cache`` keeps the per-device scale/shift tensors."""
    work = torch.float64 if dtype == torch.float64 else torch.float32
    data_c = images.shape[1]
    out_c = _output_channels(data_c, channels)
    direct = out_c == data_c and resize is None  # normalise straight from 0..255: x * 1/(255 std) - mean/std
    key = (images.device, work, data_c, out_c, direct)
    affine = cache.get(key) if cache is not None else None
    if affine is None:
        m = _stats_tensor(mean, out_c, "mean", data_c, torch.float64, torch.device("cpu"))
        s = _stats_tensor(std, out_c, "std", data_c, torch.float64, torch.device("cpu"))
        scale = 1.0 / (255.0 * s) if direct else 1.0 / s
        affine = (scale.to(images.device, work), (m / s).to(images.device, work))
        if cache is not None:
            cache[key] = affine
    scale, shift = affine
    x = images.to(work)
    if direct:
        x = x.mul_(scale).sub_(shift)
    else:
        x = _convert_channels(x.mul_(1.0 / 255.0), channels)
        x = _resize(x, resize, resize_mode)
        x = x.mul(scale).sub_(shift)
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    elif not x.is_contiguous():
        x = x.contiguous()
    return x


def converted_stats(images: torch.Tensor, channels: int | None = None, resize: int | None = None,
                    resize_mode: str = "bilinear", chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (in [0, 1] units) of uint8 images after channel conversion and resize.

    Use it for the ``mean``/``std`` of an :class:`Augment` that converts RGB data to gray.
    """
    _check_images(images)
    out_c = _output_channels(images.shape[1], channels)
    total = torch.zeros(out_c, dtype=torch.float64)
    total_sq = torch.zeros(out_c, dtype=torch.float64)
    count = 0
    for start in range(0, images.shape[0], chunk):
        x = _convert_channels(images[start:start + chunk].to(torch.float64) / 255.0, channels)
        x = _resize(x, resize, resize_mode)
        total += x.sum(dim=(0, 2, 3)).cpu()
        total_sq += (x * x).sum(dim=(0, 2, 3)).cpu()
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if count < 2:
        raise ValueError("need at least two pixels to compute a standard deviation")
    mean = total / count
    var = (total_sq - count * mean * mean) / (count - 1)
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


@dataclass(frozen=True)
class AugmentParams:
    """The random draws for one batch (leading dimension = batch size); slicing them shards a batch."""

    crop: torch.Tensor | None = None    # int64 B×2: (dy, dx) offsets in [0, 2 * crop_padding]
    flip: torch.Tensor | None = None    # bool B
    cutout: torch.Tensor | None = None  # int64 B×2: top-left (y, x) of the square

    def slice(self, start: int, end: int) -> "AugmentParams":
        return AugmentParams(*(None if t is None else t[start:end] for t in (self.crop, self.flip, self.cutout)))


class Augment:
    """Batched on-device augmentation + normalisation, composed in a fixed order (see the module doc).

    ``mean``/``std`` are in [0, 1] units for the output channels (one value broadcasts). ``seed`` picks
    the fixed half that the alternating flip mirrors on even epochs.
    """

    def __init__(
        self,
        mean: Sequence[float] | float,
        std: Sequence[float] | float,
        *,
        crop_padding: int = 0,
        crop_mode: str = "reflect",
        flip: str | None = None,
        cutout: int = 0,
        resize: int | None = None,
        resize_mode: str = "bilinear",
        channels: int | None = None,
        seed: int = 0,
    ) -> None:
        self.mean = _as_stats("mean", mean)
        self.std = _as_stats("std", std)
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")
        _check_int("crop_padding", crop_padding, 0)
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {', '.join(CROP_MODES)}, got {crop_mode!r}")
        if flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of None, 'random', 'alternating', got {flip!r}")
        _check_int("cutout", cutout, 0)
        _check_int("resize", resize, 1, allow_none=True)
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
        _check_int("channels", channels, 1, allow_none=True)
        _check_int("seed", seed, 0)
        self.crop_padding = crop_padding
        self.crop_mode = crop_mode
        self.flip = flip
        self.cutout = cutout
        self.resize = resize
        self.resize_mode = resize_mode
        self.channels = channels
        self.seed = seed
        self._affine: dict = {}  # (device, dtype, channels) -> normalisation scale/shift tensors

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Augment({args})"

    def config(self) -> dict[str, Any]:
        """The constructor arguments (for logs and run configs)."""
        return {
            "mean": list(self.mean), "std": list(self.std), "crop_padding": self.crop_padding,
            "crop_mode": self.crop_mode, "flip": self.flip, "cutout": self.cutout, "resize": self.resize,
            "resize_mode": self.resize_mode, "channels": self.channels, "seed": self.seed,
        }

    @property
    def is_random(self) -> bool:
        """Whether any step draws random numbers or depends on the epoch."""
        return self.crop_padding > 0 or self.flip is not None or self.cutout > 0

    def deterministic(self) -> "Augment":
        """The same transform without crop, flip and cutout: what evaluation should see."""
        return Augment(self.mean, self.std, resize=self.resize, resize_mode=self.resize_mode,
                       channels=self.channels, seed=self.seed)

    def output_shape(self, data_shape: Sequence[int]) -> tuple[int, int, int]:
        """(C, H, W) of the output for images of shape (..., C, H, W)."""
        c, h, w = data_shape[-3:]
        out_c = _output_channels(c, self.channels)
        return (out_c, self.resize, self.resize) if self.resize else (out_c, h, w)

    def validate_shape(self, shape: Sequence[int]) -> None:
        """Raise a clear ValueError if images of ``shape`` (..., C, H, W) cannot go through this transform."""
        c, h, w = shape[-3:]
        if self.crop_padding and self.crop_mode == "reflect" and self.crop_padding >= min(h, w):
            raise ValueError(f"crop_padding={self.crop_padding} with reflect padding needs images larger than "
                             f"the padding, got {h}×{w}; use crop_mode='zeros' or a smaller padding")
        _, oh, ow = self.output_shape(shape)
        if self.cutout > min(oh, ow):
            raise ValueError(f"cutout={self.cutout} is larger than the {oh}×{ow} output images")
        out_c = _output_channels(c, self.channels)
        _check_stats_len(self.mean, out_c, "mean", c)
        _check_stats_len(self.std, out_c, "std", c)

    def sample(self, shape: Sequence[int], *, generator: torch.Generator, epoch: int, index: torch.Tensor) -> AugmentParams:
        """Draw the random parameters for a batch of uint8 images of ``shape`` (B, C, H, W).

        Draw order is fixed (crop offsets, random flips, cutout positions) so a seed path reproduces them.
        """
        self.validate_shape(shape)
        n = int(shape[0])
        if index.shape != (n,):
            raise ValueError(f"index must have shape ({n},), got {tuple(index.shape)}")
        dev = generator.device
        crop = flip = cut = None
        if self.crop_padding > 0:
            crop = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=generator, device=dev)
        if self.flip == "random":
            flip = torch.rand(n, generator=generator, device=dev) < 0.5
        elif self.flip == "alternating":
            flip = alternating_flip_mask(index, epoch, self.seed)
        if self.cutout > 0:
            _, oh, ow = self.output_shape(shape)
            hi = torch.tensor([oh - self.cutout + 1, ow - self.cutout + 1], device=dev)
            cut = (torch.rand(n, 2, generator=generator, device=dev) * hi).long().minimum(hi - 1)
        return AugmentParams(crop, flip, cut)

    def apply(self, x: torch.Tensor, params: AugmentParams, *, dtype: torch.dtype = torch.float32,
              channels_last: bool = False) -> torch.Tensor:
        """Apply drawn ``params`` to uint8 images ``x`` (the batch, or a contiguous shard of it)."""
        _check_images(x)
        _check_float_dtype(dtype)
        self.validate_shape(x.shape)
        dev = x.device
        crop = None if params.crop is None else params.crop.to(dev)
        flip = None if params.flip is None else params.flip.to(dev)
        for name, t in (("crop", crop), ("flip", flip), ("cutout", params.cutout)):
            if t is not None and t.shape[0] != x.shape[0]:
                raise ValueError(f"params.{name} is for {t.shape[0]} images, the batch has {x.shape[0]}")
        if crop is not None:
            x = self._crop_flip(x, crop, flip)
        elif flip is not None:
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = _transform(x, self.mean, self.std, self.resize, self.resize_mode, self.channels, dtype, False, self._affine)
        if params.cutout is not None:
            x.masked_fill_(self._cutout_mask(x, params.cutout.to(dev)), 0.0)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def __call__(self, x_uint8: torch.Tensor, *, generator: torch.Generator, epoch: int, index: torch.Tensor,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False) -> torch.Tensor:
        """Augment and normalise a batch; same generator state, epoch and index -> same output."""
        _check_images(x_uint8)
        params = self.sample(x_uint8.shape, generator=generator, epoch=epoch, index=index)
        return self.apply(x_uint8, params, dtype=dtype, channels_last=channels_last)

    def eval_transform(self, x_uint8: torch.Tensor, *, dtype: torch.dtype = torch.float32,
                       channels_last: bool = False) -> torch.Tensor:
        """The deterministic part only (channels, resize, normalisation)."""
        _check_images(x_uint8)
        _check_float_dtype(dtype)
        self.validate_shape(x_uint8.shape)
        return _transform(x_uint8, self.mean, self.std, self.resize, self.resize_mode, self.channels, dtype,
                          channels_last, self._affine)

    def _crop_flip(self, x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        """Padded random crop (+ optional flip) as one gather of source pixels; padding is computed, not built."""
        b, c, h, w = x.shape
        p = self.crop_padding
        dev = x.device
        i = torch.arange(h, device=dev)
        j = torch.arange(w, device=dev)
        cols = j.expand(b, w)
        if flip is not None:
            cols = torch.where(flip.view(-1, 1), (w - 1) - j, j)
        rows = i.view(1, h) + (crop[:, :1] - p)          # B×H source rows in the padded frame, minus p
        cols = cols + (crop[:, 1:] - p)                   # B×W
        if self.crop_mode == "reflect":
            rows = torch.where(rows < 0, -rows, rows)
            rows = torch.where(rows > h - 1, 2 * (h - 1) - rows, rows)
            cols = torch.where(cols < 0, -cols, cols)
            cols = torch.where(cols > w - 1, 2 * (w - 1) - cols, cols)
            valid = None
        else:
            valid = ((rows >= 0) & (rows < h)).view(b, 1, h, 1) & ((cols >= 0) & (cols < w)).view(b, 1, 1, w)
            rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
        lin = (rows.view(b, h, 1) * w + cols.view(b, 1, w)).view(b, 1, h * w).expand(b, c, h * w)
        out = x.reshape(b, c, h * w).gather(2, lin).view(b, c, h, w)
        if valid is not None:
            out = out.masked_fill(~valid, 0)
        return out

    def _cutout_mask(self, x: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s = self.cutout
        i = torch.arange(h, device=x.device).view(1, h)
        j = torch.arange(w, device=x.device).view(1, w)
        rows = (i >= cut[:, :1]) & (i < cut[:, :1] + s)
        cols = (j >= cut[:, 1:]) & (j < cut[:, 1:] + s)
        return rows.view(b, 1, h, 1) & cols.view(b, 1, 1, w)


__all__ = ["Augment", "AugmentParams", "LUMA_WEIGHTS", "alternating_flip_mask", "converted_stats", "normalize"]
