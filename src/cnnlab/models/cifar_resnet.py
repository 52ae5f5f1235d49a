"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016, Sec. 4.2): 6n+2 layers, 16/32/64 channels, option-A shortcuts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import register_model


def _conv_norm(cin: int, cout: int, stride: int, batchnorm: bool) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=not batchnorm)
    return [conv, nn.BatchNorm2d(cout)] if batchnorm else [conv, nn.Identity()]


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


class BasicBlockA(nn.Module):
    """Two 3x3 conv(-BN) layers with ReLU and an identity / option-A shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool):
        super().__init__()
        self.conv1, self.bn1 = _conv_norm(cin, cout, stride, batchnorm)
        self.conv2, self.bn2 = _conv_norm(cout, cout, 1, batchnorm)
        self.relu = nn.ReLU()
        self.shortcut = ShortcutA(cin, cout, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU (16 channels) then three stages of ``n`` blocks at 16/32/64 channels
    (stride 2 entering stages 2 and 3), global average pooling, optional dropout, linear head.

    ``features`` is the stem (the masking hook point); ``gradcam_layer()`` is the last block.
    """

    def __init__(
        self,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        batchnorm: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        n = (depth - 2) // 6
        conv, norm = _conv_norm(in_channels, 16, 1, batchnorm)
        self.features = nn.Sequential(conv, norm, nn.ReLU())
        cin = 16
        for i, cout in enumerate((16, 32, 64), start=1):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 1) else 1
                blocks.append(BasicBlockA(cin, cout, stride, batchnorm))
                cin = cout
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def gradcam_layer(self) -> nn.Module:
        return self.layer3[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.features(x))))
        return self.fc(self.dropout(self.avgpool(x).flatten(1)))


_FAMILY = "cifar_resnet"


@register_model("resnet20", family=_FAMILY, min_resolution=4, description="He et al. CIFAR ResNet-20, option-A shortcuts (0.27M)")
def resnet20(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels, batchnorm, dropout)


@register_model("resnet32", family=_FAMILY, min_resolution=4, description="He et al. CIFAR ResNet-32, option-A shortcuts (0.46M)")
def resnet32(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels, batchnorm, dropout)


@register_model("resnet44", family=_FAMILY, min_resolution=4, description="He et al. CIFAR ResNet-44, option-A shortcuts (0.66M)")
def resnet44(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(44, num_classes, in_channels, batchnorm, dropout)


@register_model("resnet56", family=_FAMILY, min_resolution=4, description="He et al. CIFAR ResNet-56, option-A shortcuts (0.85M)")
def resnet56(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, batchnorm, dropout)


@register_model("resnet110", family=_FAMILY, min_resolution=4, description="He et al. CIFAR ResNet-110, option-A shortcuts (1.7M)")
def resnet110(num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True, dropout: float = 0.0) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels, batchnorm, dropout)
