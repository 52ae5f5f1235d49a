"""CIFAR ResNet-20/32/44/56/110 as seed 001's code builds them (He et al. 2016, Sec. 4.2 layout).

6n+2 layers at 16/32/64 channels; 1x1-conv(+BN) projection shortcuts where the shape changes
("option B", the seed's default; He et al.'s parameter-free option A via ``shortcut="A"``); conv biases
only without BatchNorm; Kaiming-normal (fan_out) conv init, N(0, 0.01) linear init; optional
Dropout before the linear head. Module names are the seed's (``features``, ``layer1``..``layer3``,
``classifier``), so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.init import init_cnn_weights_
from cnnlab.models.registry import register_model

_SHORTCUTS = ("A", "B")


class ShortcutA(nn.Module):
    """Parameter-free shortcut: take every other pixel and zero-pad the new channels (option A)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.cin, self.cout, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.cout - self.cin
        if extra:
            x = F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x

    def extra_repr(self) -> str:
        return f"{self.cin}->{self.cout}, stride={self.stride}"


def _norm(c: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3x3 conv(-BN) layers with ReLU; identity, option-B (1x1 conv(-BN)) or option-A shortcut."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, use_batchnorm: bool = True, shortcut: str = "B"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=not use_batchnorm)
        self.bn1 = _norm(planes, use_batchnorm)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=not use_batchnorm)
        self.bn2 = _norm(planes, use_batchnorm)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.shortcut = ShortcutA(in_planes, planes, stride)
            else:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=not use_batchnorm), _norm(planes, use_batchnorm))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem ``features`` = conv(-BN)-ReLU (16 channels, the masking hook point), three stages of ``n``
    blocks at 16/32/64 (stride 2 entering stages 2 and 3), global average pooling, ``classifier``
    (``Sequential(Dropout, Linear)`` when ``dropout > 0``, as the seed's ``use_dropout``).
    ``gradcam_layer()`` is the last block.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        batchnorm: bool = True,
        dropout: float = 0.0,
        shortcut: str = "B",
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if shortcut not in _SHORTCUTS:
            raise ValueError(f"shortcut must be 'A' (He et al.'s zero padding) or 'B' (1x1 projection), got {shortcut!r}")
        n = (depth - 2) // 6
        stem: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=not batchnorm)]
        if batchnorm:
            stem.append(nn.BatchNorm2d(16))
        stem.append(nn.ReLU())
        self.features = nn.Sequential(*stem)
        self.in_planes = 16
        self.layer1 = self._make_layer(16, n, 1, batchnorm, shortcut)
        self.layer2 = self._make_layer(32, n, 2, batchnorm, shortcut)
        self.layer3 = self._make_layer(64, n, 2, batchnorm, shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        linear = nn.Linear(64, num_classes)
        self.classifier = nn.Sequential(nn.Dropout(dropout), linear) if dropout > 0 else linear
        init_cnn_weights_(self)  # the seed's initialisation

    def _make_layer(self, planes: int, n: int, stride: int, batchnorm: bool, shortcut: str) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s, batchnorm, shortcut))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    @property
    def fc(self) -> nn.Linear:
        return cast(nn.Linear, self.classifier[-1] if isinstance(self.classifier, nn.Sequential) else self.classifier)

    @property
    def dropout(self) -> nn.Module:
        return self.classifier[0] if isinstance(self.classifier, nn.Sequential) else nn.Identity()

    def gradcam_layer(self) -> nn.Module:
        return self.layer3[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.features(x))))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


for _depth, _approx in ((20, "0.27M"), (32, "0.47M"), (44, "0.66M"), (56, "0.86M"), (110, "1.7M")):
    register_model(f"resnet{_depth}", family="cifar_resnet", min_resolution=4, model_args=dict(depth=_depth),
                   description=f"seed 001's CIFAR ResNet-{_depth}: option-B projection shortcuts ({_approx}); "
                               "shortcut='A' for He et al.'s")(CifarResNet)
