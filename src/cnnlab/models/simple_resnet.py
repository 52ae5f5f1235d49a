"""SimpleResNet: a CIFAR/MNIST-size BasicBlock ResNet, 64->128->256->512, with blocks per stage as an option.

``resnet4stage`` ([1, 1, 1, 1], one input channel) is the EMNIST model used for populations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.registry import register_model

WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU; a 1x1 conv-BN projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SimpleResNet(nn.Module):
    """3x3 stride-1 stem conv-BN-ReLU (no max pool), four stages of BasicBlocks at 64/128/256/512
    (stride 2 entering stages 2-4), global average pooling, Linear(512, C).

    ``features`` is the stem (the masking hook point); ``gradcam_layer()`` is the last block.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2)):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != len(WIDTHS) or min(blocks) < 1:
            raise ValueError(f"blocks must be {len(WIDTHS)} positive ints (blocks per stage), got {blocks!r}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, WIDTHS[0], 3, padding=1, bias=False), nn.BatchNorm2d(WIDTHS[0]), nn.ReLU()
        )
        cin = WIDTHS[0]
        stages = []
        for i, (cout, n) in enumerate(zip(WIDTHS, blocks)):
            layer = [BasicBlock(cin, cout, stride=1 if i == 0 else 2)]
            layer += [BasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layer))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def gradcam_layer(self) -> nn.Module:
        return self.layer4[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.features(x)))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("simple_resnet", family="simple_resnet", min_resolution=8,
                description="BasicBlock ResNet 64-512, 3x3 stem, no max pool; option blocks (default 2-2-2-2)")
def simple_resnet(num_classes: int = 10, in_channels: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> SimpleResNet:
    return SimpleResNet(num_classes, in_channels, blocks)


@register_model("resnet4stage", family="simple_resnet", min_resolution=8, in_channels=1,
                description="SimpleResNet [1,1,1,1], 1 input channel: the EMNIST population model (4.9M)",
                blocks=(1, 1, 1, 1))
def resnet4stage(num_classes: int = 10, in_channels: int = 1, blocks: tuple[int, ...] = (1, 1, 1, 1)) -> SimpleResNet:
    return SimpleResNet(num_classes, in_channels, blocks)
