"""ResNet-9 (the ffcv / TRAK CIFAR "rn9"), with the smooth-pooling and width options used for metagradients."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.registry import register_model

_POOLINGS = ("max", "lse")


def conv_bn(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1, bias: bool = False) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU, the rn9 building block."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=bias),
        nn.BatchNorm2d(cout),
        nn.ReLU(),  # not in-place: safe under torch.func transforms and output hooks
    )


class Residual(nn.Module):
    """``x + body(x)``."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LogSumExpPool2d(nn.Module):
    """Global smooth max ``eps * logsumexp(x / eps)`` over spatial positions; -> (N, C, 1, 1).

    Tends to the global max as ``eps -> 0`` but, unlike max pooling, passes gradient to every
    position, which keeps metagradients through training smooth.
    """

    def __init__(self, eps: float = 0.1):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"lse_eps must be > 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.eps * torch.logsumexp(x.flatten(2) / self.eps, dim=2)[..., None, None]

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class ResNet9(nn.Module):
    """rn9: prep conv, strided 5x5 conv, residual pair, conv + maxpool, residual pair, 3x3 valid conv,
    global pooling, bias-free linear head scaled by ``output_scale``.

    ``features`` is the first conv-BN-ReLU block (the masking hook point); ``layer3`` is the last conv block.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: float = 1.0,
        pooling: str = "max",
        lse_eps: float = 0.1,
        output_scale: float = 0.2,
        bias: bool = False,
    ):
        super().__init__()
        if pooling not in _POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(_POOLINGS)}; got {pooling!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        c1, c2, c3 = (max(1, int(round(c * width))) for c in (64, 128, 256))
        self.features = conv_bn(in_channels, c1, bias=bias)
        self.layer1 = conv_bn(c1, c2, kernel_size=5, stride=2, padding=2, bias=bias)
        self.res1 = Residual(nn.Sequential(conv_bn(c2, c2, bias=bias), conv_bn(c2, c2, bias=bias)))
        self.layer2 = conv_bn(c2, c3, bias=bias)
        self.pool2 = nn.MaxPool2d(2)
        self.res2 = Residual(nn.Sequential(conv_bn(c3, c3, bias=bias), conv_bn(c3, c3, bias=bias)))
        self.layer3 = conv_bn(c3, c2, padding=0, bias=bias)
        self.pool = nn.AdaptiveMaxPool2d(1) if pooling == "max" else LogSumExpPool2d(lse_eps)
        self.fc = nn.Linear(c2, num_classes, bias=False)
        self.output_scale = float(output_scale)

    def gradcam_layer(self) -> nn.Module:
        return self.layer3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res1(self.layer1(self.features(x)))
        x = self.res2(self.pool2(self.layer2(x)))
        x = self.pool(self.layer3(x)).flatten(1)
        return self.fc(x) * self.output_scale


# Smallest input: 5x5/s2 conv, maxpool 2 and a 3x3 valid conv must leave >= 1 pixel.
_MIN_RES = 11


@register_model("resnet9", family="resnet9", min_resolution=_MIN_RES,
                description="ffcv/TRAK CIFAR ResNet-9 (rn9), max pooling, output x0.2")
def resnet9(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 1.0,
    pooling: str = "max",
    lse_eps: float = 0.1,
    output_scale: float = 0.2,
    bias: bool = False,
) -> ResNet9:
    return ResNet9(num_classes, in_channels, width, pooling, lse_eps, output_scale, bias)


@register_model("resnet9_paper", family="resnet9", min_resolution=_MIN_RES,
                description="rn9 width x2.5, log-sum-exp pooling (eps 0.1), output x0.04: smooth for metagradients",
                width=2.5, pooling="lse", lse_eps=0.1, output_scale=0.04)
def resnet9_paper(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 2.5,
    pooling: str = "lse",
    lse_eps: float = 0.1,
    output_scale: float = 0.04,
    bias: bool = False,
) -> ResNet9:
    return ResNet9(num_classes, in_channels, width, pooling, lse_eps, output_scale, bias)


@register_model("resnet9_table", family="resnet9", min_resolution=_MIN_RES,
                description="rn9 width x2.5 with max pooling (the paper-width baseline)",
                width=2.5, pooling="max")
def resnet9_table(
    num_classes: int = 10,
    in_channels: int = 3,
    width: float = 2.5,
    pooling: str = "max",
    lse_eps: float = 0.1,
    output_scale: float = 0.2,
    bias: bool = False,
) -> ResNet9:
    return ResNet9(num_classes, in_channels, width, pooling, lse_eps, output_scale, bias)
