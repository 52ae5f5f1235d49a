"""airbench94 network (Keller Jordan's 94%-in-seconds CIFAR-10 net): patch whitening, dirac init, frozen BN scales."""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import register_model

WHITEN_KERNEL = 2


def dirac_init_(weight: torch.Tensor) -> None:
    """Make the first ``in_channels`` filters of a conv weight identity maps (the rest keep their init)."""
    if weight.is_meta:  # no values to set (and meta arange is slow on first use)
        return
    out_ch, in_ch, kh, kw = weight.shape
    n = min(out_ch, in_ch)
    with torch.no_grad():
        weight[:n].zero_()
        idx = torch.arange(n, device=weight.device)
        weight[idx, idx, kh // 2, kw // 2] = 1.0


class ConvGroup(nn.Module):
    """conv -> maxpool 2 -> BN -> GELU -> conv -> BN -> GELU (pooling early halves the second conv's cost)."""

    def __init__(self, cin: int, cout: int, *, bn_momentum: float, bn_eps: float, freeze_bn_weights: bool, dirac: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.GELU()
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(not freeze_bn_weights)
        if dirac:
            dirac_init_(self.conv1.weight)
            dirac_init_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class AirBench94(nn.Module):
    """Frozen 2x2 patch-whitening conv (+ learned bias) and GELU, three ConvGroups, global max pool,
    bias-free linear head scaled by ``scale``.

    ``features`` is the whitening conv + GELU, the net's first block and the masking hook point
    (airbench has no BN there); ``block3`` is the last conv block. The whitening filters are random until
    ``init_from_data(train_images)`` (the engine calls it before training) or ``init_whitening`` sets them.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (64, 256, 256),
        scale: float = 1 / 9,
        freeze_bn_weights: bool = True,
        dirac_init: bool = True,
        bn_momentum: float = 0.4,
        bn_eps: float = 1e-12,
    ):
        super().__init__()
        ws = tuple(int(w) for w in widths)
        if len(ws) != 3 or min(ws) < 1:
            raise ValueError(f"widths must be three positive ints, got {ws!r}")
        if not 0 <= bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in [0, 1] (PyTorch convention), got {bn_momentum!r}")
        whiten_width = 2 * in_channels * WHITEN_KERNEL**2
        whiten = nn.Conv2d(in_channels, whiten_width, WHITEN_KERNEL, padding=0, bias=True)
        whiten.weight.requires_grad_(False)
        self.features = nn.Sequential(whiten, nn.GELU())
        opts: dict[str, Any] = dict(bn_momentum=bn_momentum, bn_eps=bn_eps, freeze_bn_weights=freeze_bn_weights, dirac=dirac_init)
        self.block1 = ConvGroup(whiten_width, ws[0], **opts)
        self.block2 = ConvGroup(ws[0], ws[1], **opts)
        self.block3 = ConvGroup(ws[1], ws[2], **opts)
        self.pool = nn.AdaptiveMaxPool2d(1)  # = airbench's MaxPool2d(3) at 32x32, and works at any size
        self.head = nn.Linear(ws[2], num_classes, bias=False)
        self.scale = float(scale)

    @property
    def whiten(self) -> nn.Conv2d:
        return cast(nn.Conv2d, self.features[0])

    def gradcam_layer(self) -> nn.Module:
        return self.block3

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4, chunk_size: int = 512) -> torch.Tensor:
        """Set the whitening filters from normalised training images (N, C, H, W).

        With S the second-moment matrix of all 2x2 patches and S = V diag(lambda) V^T, the filters are
        the rows of diag(lambda + eps)^-1/2 V^T and their negatives, so the first half of the conv's
        outputs (before the bias) has ~identity covariance on these images. Returns lambda, descending.
        airbench uses the first 5,000 training images.
        """
        conv = self.whiten
        if not torch.is_floating_point(images) or images.dim() != 4 or images.shape[1] != conv.in_channels:
            raise ValueError(
                f"init_whitening expects normalised float images of shape (N, {conv.in_channels}, H, W), "
                f"got {tuple(images.shape)} {images.dtype}"
            )
        if min(images.shape[-2:]) < WHITEN_KERNEL:
            raise ValueError(f"images must be at least {WHITEN_KERNEL}x{WHITEN_KERNEL}")
        dim = conv.in_channels * WHITEN_KERNEL**2
        second_moment = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.split(chunk_size):  # chunked: a float64 patch matrix of all images is large
            patches = F.unfold(chunk.double(), WHITEN_KERNEL)  # (n, C*k*k, L), ordered like conv weights
            patches = patches.transpose(1, 2).reshape(-1, dim)
            second_moment += patches.T @ patches
            count += patches.shape[0]
        second_moment /= count
        eigvals, eigvecs = torch.linalg.eigh(second_moment)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        filters = eigvecs.T / torch.sqrt(eigvals.clamp_min(0) + eps)[:, None]
        filters = filters.reshape(-1, conv.in_channels, WHITEN_KERNEL, WHITEN_KERNEL)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
        return eigvals.to(images.dtype)

    def init_from_data(self, images: torch.Tensor) -> None:
        """The :class:`~cnnlab.models.hooks.InitFromData` hook: set the whitening filters from ``images``
        (normalised training images, N x C x H x W) with :meth:`init_whitening`'s defaults."""
        self.init_whitening(images)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.features(x))))
        return self.head(self.pool(x).flatten(1)) * self.scale


register_model("airbench94", family="airbench", min_resolution=9,
               description="airbench94: whitening + 3 GELU conv groups 64/256/256, frozen BN scales (~1.97M)")(AirBench94)
