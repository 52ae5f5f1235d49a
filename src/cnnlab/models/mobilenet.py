"""torchvision-layout MobileNetV2 (Sandler et al. 2018) and MobileNetV3 small/large (Howard et al. 2019).

Module names, state_dict keys (``features.N.conv...`` / ``features.N.block...``, ``classifier...``),
channel rounding and initialisation follow torchvision, so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cnnlab.models.init import init_cnn_weights_
from cnnlab.models.registry import register_model


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``v`` to the nearest multiple of ``divisor`` (at least ``min_value``), never going more than
    10% below ``v``: the channel rounding of the MobileNet papers' reference code."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    """Conv (no bias, 'same' padding) -> BatchNorm -> activation; keys ``0.weight``, ``1.*`` like torchvision."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: type[nn.Module] | None = nn.ReLU,
        norm_eps: float = 1e-5,
        norm_momentum: float = 0.1,
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=norm_eps, momentum=norm_momentum),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = cout


class _FeatureTrunk(nn.Module):
    """A torchvision MobileNet's hook points: ``first_block()`` is the stem (``features[0]``),
    ``gradcam_layer()`` the last conv block (``features[-1]``)."""

    features: nn.Sequential

    def first_block(self) -> nn.Module:
        return self.features[0]

    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]


# ------------------------------------------------------------------------------------------------ V2


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand] -> 3x3 depthwise -> 1x1 linear projection, residual when shapes match."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden, kernel_size=1, activation=nn.ReLU6))
        layers += [
            ConvNormActivation(hidden, hidden, stride=stride, groups=hidden, activation=nn.ReLU6),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, output channels c, repeats n, first stride s) from the MobileNetV2 paper, Table 2.
V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(_FeatureTrunk):
    """Stem conv 3x3/2 (32 ch), 17 inverted residual blocks, 1x1 conv to 1280, global average pool,
    ``classifier`` = Dropout + Linear. ``first_block()`` = ``features[0]``, ``gradcam_layer()`` = ``features[-1]``."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        cin = make_divisible(32 * width_mult)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult))
        features: list[nn.Module] = [ConvNormActivation(in_channels, cin, stride=2, activation=nn.ReLU6)]
        for t, c, n, s in V2_SETTING:
            cout = make_divisible(c * width_mult)
            for i in range(n):
                features.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        features.append(ConvNormActivation(cin, self.last_channel, kernel_size=1, activation=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        init_cnn_weights_(self, nonlinearity="leaky_relu")  # torchvision's (kaiming_normal_'s default)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ------------------------------------------------------------------------------------------------ V3


class SqueezeExcitation(nn.Module):
    """x * hardsigmoid(fc2(relu(fc1(avgpool(x))))), with 1x1 convs ``fc1``/``fc2`` as in torchvision."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


@dataclass(frozen=True)
class BneckConfig:
    """One MobileNetV3 bottleneck row (paper Tables 1-2), channels already width-adjusted."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int

    @classmethod
    def make(cls, cin: int, k: int, exp: int, cout: int, se: bool, act: str, stride: int, width_mult: float) -> "BneckConfig":
        adj = lambda c: make_divisible(c * width_mult)  # noqa: E731
        return cls(adj(cin), k, adj(exp), adj(cout), se, act == "HS", stride)


_V3_NORM: dict[str, Any] = dict(norm_eps=0.001, norm_momentum=0.01)


class BneckBlock(nn.Module):
    """MobileNetV3 block: [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection (+ residual)."""

    def __init__(self, cnf: BneckConfig):
        super().__init__()
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(ConvNormActivation(cnf.input_channels, cnf.expanded_channels, 1, activation=act, **_V3_NORM))
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.expanded_channels, cnf.kernel, cnf.stride,
                                         groups=cnf.expanded_channels, activation=act, **_V3_NORM))
        if cnf.use_se:
            layers.append(SqueezeExcitation(cnf.expanded_channels, make_divisible(cnf.expanded_channels // 4)))
        layers.append(ConvNormActivation(cnf.expanded_channels, cnf.out_channels, 1, activation=None, **_V3_NORM))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (in, kernel, expanded, out, SE, activation RE|HS, stride) per bottleneck; last value = classifier width.
V3_SETTINGS: dict[str, tuple[list[tuple[int, int, int, int, bool, str, int]], int]] = {
    "large": ([
        (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2), (24, 3, 72, 24, False, "RE", 1),
        (24, 5, 72, 40, True, "RE", 2), (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
        (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
        (80, 3, 184, 80, False, "HS", 1), (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
        (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1), (160, 5, 960, 160, True, "HS", 1),
    ], 1280),
    "small": ([
        (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
        (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
        (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
        (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1),
    ], 1024),
}


class MobileNetV3(_FeatureTrunk):
    """Stem conv 3x3/2 + Hardswish, bottlenecks, 1x1 conv to 6x the last width, global average pool,
    ``classifier`` = Linear - Hardswish - Dropout - Linear. ``first_block()`` = ``features[0]``."""

    def __init__(
        self, arch: str, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, dropout: float = 0.2
    ):
        super().__init__()
        if arch not in V3_SETTINGS:
            raise ValueError(f"MobileNetV3 arch must be one of {', '.join(V3_SETTINGS)}; got {arch!r}")
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        rows, last = V3_SETTINGS[arch]
        cnfs = [BneckConfig.make(*row, width_mult=width_mult) for row in rows]
        layers: list[nn.Module] = [
            ConvNormActivation(in_channels, cnfs[0].input_channels, 3, 2, activation=nn.Hardswish, **_V3_NORM)
        ]
        layers += [BneckBlock(c) for c in cnfs]
        lastconv = 6 * cnfs[-1].out_channels
        layers.append(ConvNormActivation(cnfs[-1].out_channels, lastconv, 1, activation=nn.Hardswish, **_V3_NORM))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channel = make_divisible(last * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        init_cnn_weights_(self, nonlinearity="leaky_relu")  # torchvision's (kaiming_normal_'s default)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


_FAMILY = "mobilenet"
register_model("mobilenet_v2", family=_FAMILY, min_resolution=32, description="torchvision MobileNetV2 (width_mult option)")(MobileNetV2)
register_model("mobilenet_v2_075", family=_FAMILY, min_resolution=32, description="torchvision MobileNetV2, width 0.75",
               width_mult=0.75)(MobileNetV2)
for _arch in ("small", "large"):
    register_model(f"mobilenet_v3_{_arch}", family=_FAMILY, min_resolution=32, model_args=dict(arch=_arch),
                   description=f"torchvision MobileNetV3-{_arch.capitalize()}")(MobileNetV3)
