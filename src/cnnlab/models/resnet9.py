"""The ResNet-9 family of seed 000: rn9 (the seed's ``construct_rn9``, ffcv/TRAK), the seed's smooth
``construct_resnet9_paper``, its ``ResNet9TableArch`` and its ``make_airbench94_adapted``.

Layouts and state_dict keys are the seed's (rn9 and the paper variant are ``nn.Sequential`` with the
seed's indices), so checkpoints saved by the seed's code load with ``strict=True``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from cnnlab.models.pooling import LogSumExpPool2d
from cnnlab.models.registry import register_model
from cnnlab.models.simple_resnet import BasicBlock

_GLOBAL_POOLS = ("max", "avg", "lse")
_DOWNSAMPLE_POOLS = ("max", "lse")


def conv_bn(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1, bias: bool = False,
            bias_scale: float = 1.0) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU, the rn9 building block. A conv bias starts at zero (x ``bias_scale``, as the seed)."""
    conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
        with torch.no_grad():
            conv.bias.mul_(bias_scale)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())  # not in-place: safe under torch.func


class Residual(nn.Module):
    """``x + module(x)`` (the seed's attribute name ``module``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.module(x)


class Mul(nn.Module):
    """Multiply by a fixed scalar (no parameters)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _global_pool(kind: str, eps: float) -> nn.Module:
    if kind not in _GLOBAL_POOLS:
        raise ValueError(f"pooling must be one of {', '.join(_GLOBAL_POOLS)}; got {kind!r}")
    return {"max": lambda: nn.AdaptiveMaxPool2d(1), "avg": lambda: nn.AdaptiveAvgPool2d(1),
            "lse": lambda: LogSumExpPool2d(eps)}[kind]()


def _check_width(width: float) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")


class ResNet9(nn.Sequential):
    """rn9 as an ``nn.Sequential`` with the seed's indices: 0 prep conv, 1 strided 5x5 conv, 2 residual
    pair, 3 conv, 4 downsampling pool, 5 residual pair, 6 3x3 valid conv, 7 global pool, 8 flatten,
    9 bias-free linear, 10 output scale.

    ``features`` (index 0) is the masking hook point; ``gradcam_layer()`` (index 6) the last conv block.
    The layout takes every option; :func:`resnet9` gives them their defaults, as torchvision's ``ResNet``
    and ``resnet18``.
    """

    def __init__(self, num_classes: int, in_channels: int, width: float, pooling: str, downsample_pool: str,
                 lse_eps: float, output_scale: float, bias: bool, bias_scale: float):
        _check_width(width)
        if downsample_pool not in _DOWNSAMPLE_POOLS:
            raise ValueError(f"downsample_pool must be one of {', '.join(_DOWNSAMPLE_POOLS)}; got {downsample_pool!r}")
        c1, c2, c3 = (max(1, int(c * width)) for c in (64, 128, 256))  # int(): the seed's rounding

        def cb(cin: int, cout: int, **kw: Any) -> nn.Sequential:
            return conv_bn(cin, cout, bias=bias, bias_scale=bias_scale, **kw)

        super().__init__(
            cb(in_channels, c1),
            cb(c1, c2, kernel_size=5, stride=2, padding=2),
            Residual(nn.Sequential(cb(c2, c2), cb(c2, c2))),
            cb(c2, c3),
            nn.MaxPool2d(2) if downsample_pool == "max" else LogSumExpPool2d(lse_eps, kernel_size=2, stride=2),
            Residual(nn.Sequential(cb(c3, c3), cb(c3, c3))),
            cb(c3, c2, padding=0),
            _global_pool(pooling, lse_eps),
            nn.Flatten(),
            nn.Linear(c2, num_classes, bias=False),
            Mul(output_scale),
        )

    @property
    def features(self) -> nn.Module:
        return self[0]

    @property
    def pool(self) -> nn.Module:
        return self[7]

    @property
    def fc(self) -> nn.Linear:
        return cast(nn.Linear, self[9])

    @property
    def output_scale(self) -> float:
        return cast(Mul, self[10]).scale

    def gradcam_layer(self) -> nn.Module:
        return self[6]


class ScaledLinear(nn.Module):
    """``linear(x) * scale_factor`` (the seed's ``ScaledLinearTableArch``)."""

    def __init__(self, linear: nn.Linear, scale_factor: float):
        super().__init__()
        self.linear = linear
        self.scale_factor = float(scale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale_factor


class ResNet9Table(nn.Module):
    """The seed's ``ResNet9TableArch``: conv1-bn1-ReLU stem, four one-BasicBlock stages (strides 1, 2, 2, 2;
    projection shortcuts where the shape changes), global LSE pooling, biased linear head x ``output_scale``.

    As in the seed, the head is ``linear_original`` and, when the scale is not 1, also ``linear`` (a
    ``ScaledLinear`` around the same module), so its state_dict holds both key sets.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 2.5, lse_eps: float = 0.1,
                 output_scale: float = 0.04):
        super().__init__()
        _check_width(width)
        c = [max(1, int(ch * width)) for ch in (64, 64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(BasicBlock(c[0], c[1], 1))
        self.layer2 = nn.Sequential(BasicBlock(c[1], c[2], 2))
        self.layer3 = nn.Sequential(BasicBlock(c[2], c[3], 2))
        self.layer4 = nn.Sequential(BasicBlock(c[3], c[4], 2))
        self.pool = LogSumExpPool2d(lse_eps)
        self.linear_original = nn.Linear(c[4], num_classes)
        self.linear = ScaledLinear(self.linear_original, output_scale) if output_scale != 1.0 else self.linear_original

    def first_block(self) -> nn.Module:
        return self.relu

    def gradcam_layer(self) -> nn.Module:
        return self.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x).flatten(1))


class Airbench94Adapted(nn.Sequential):
    """The seed's ``make_airbench94_adapted``: 0 Conv(k2, bias) (no whitening), 1 GELU, 2-4 blocks
    [conv3x3 'same', LSE pool k2, BN, GELU, conv3x3, BN, GELU], 5 LSE pool k3 s3, 6 flatten, 7 bias-free
    linear, 8 output scale. The k3 pool must leave 1x1, so inputs are 25..48 px (32 for CIFAR).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 2.5, lse_eps: float = 0.1,
                 output_scale: float = 0.04):
        _check_width(width)
        c0, c1, c2 = (max(1, int(ch * width)) for ch in (24, 64, 256))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding="same", bias=False), LogSumExpPool2d(lse_eps, 2, 2),
                nn.BatchNorm2d(cout), nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding="same", bias=False), nn.BatchNorm2d(cout), nn.GELU(),
            )

        super().__init__(
            nn.Conv2d(in_channels, c0, 2, padding=0, bias=True), nn.GELU(),
            block(c0, c1), block(c1, c2), block(c2, c2),
            LogSumExpPool2d(lse_eps, 3, 3), nn.Flatten(), nn.Linear(c2, num_classes, bias=False), Mul(output_scale),
        )

    def first_block(self) -> nn.Module:
        return self[1]

    def gradcam_layer(self) -> nn.Module:
        return self[4]


# Smallest input: 5x5/s2 conv, pool 2 and a 3x3 valid conv must leave >= 1 pixel.
_MIN_RES = 11


def resnet9(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    pooling: str = "max",
    downsample_pool: str = "max",
    lse_eps: float = 0.1,
    output_scale: float = 0.2,
    bias: bool = False,
    bias_scale: float = 1.0,
) -> ResNet9:
    """The rn9 builder every ResNet-9 variant name calls (they differ only in these options).

    Args:
        num_classes (int, optional): Classes of the linear head. Default: 10.
        in_channels (int, optional): Input channels. Default: 3.
        width (float, optional): Channel multiplier of the 64/128/256 widths (``int()`` rounding). Default: 1.0.
        pooling (str, optional): Global pool: max, avg or lse. Default: "max".
        downsample_pool (str, optional): The 2x2 downsampling pool: max or lse. Default: "max".
        lse_eps (float, optional): Temperature of the LSE pools. Default: 0.1.
        output_scale (float, optional): Factor on the logits. Default: 0.2.
        bias (bool, optional): Conv biases (zero-initialised). Default: False.
        bias_scale (float, optional): Factor on the initial conv biases (as the seed). Default: 1.0.
    """
    return ResNet9(num_classes, in_channels, width, pooling, downsample_pool, lse_eps, output_scale, bias, bias_scale)


register_model("resnet9", family="resnet9", min_resolution=_MIN_RES,
               description="the seed's construct_rn9 (ffcv/TRAK rn9): max pooling, output x0.2")(resnet9)
register_model("resnet9_paper", family="resnet9", min_resolution=_MIN_RES,
               width=2.5, pooling="avg", downsample_pool="lse", output_scale=0.04, bias=True,
               description="the seed's construct_resnet9_paper: rn9 x2.5, conv biases, LSE pool k2 (eps 0.1), "
                           "global average pool, output x0.04 (14.2M)")(resnet9)
register_model("resnet9_table", family="resnet9", min_resolution=8,
               description="the seed's ResNet9TableArch: 4 BasicBlock stages 160-1280, global LSE pool, "
                           "biased head x0.04 (30.6M)")(ResNet9Table)
register_model("airbench94_adapted", family="resnet9", min_resolution=25, max_resolution=48,
               description="the seed's make_airbench94_adapted: airbench94 x2.5, LSE pooling, GELU, no whitening "
                           "(12.3M; 25-48 px)")(Airbench94Adapted)
