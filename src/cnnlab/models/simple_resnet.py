"""SimpleResNet (seed 004): a BasicBlock ResNet, 64->128->256->512, 3x3 stride-1 stem, no max pool.

Constructor and module names are the seed's (``SimpleResNet(block, num_blocks_per_stage, num_classes,
in_channels)``; ``conv1``, ``bn1``, ``layer1``..``layer4``, ``linear``; ``BasicBlock.expansion``), so a
state_dict saved by the seed's code loads with ``strict=True``. ``resnet4stage`` (the seed's
``ResNet4StageCustom``: [1, 1, 1, 1], one input channel) is the EMNIST model used for populations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.registry import register_model
from cnnlab.models.resnet import StemAndStages

WIDTHS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with ReLU; a 1x1 conv-BN projection ``shortcut`` when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # no parameters: the state_dict keys stay the seed's
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SimpleResNet(StemAndStages):
    """Stem conv1-bn1-ReLU (64 channels, stride 1), four stages of ``block`` at 64/128/256/512 (stride 2
    entering stages 2-4), ``avgpool`` to 1x1, ``linear``.

    ``first_block()`` (the masking hook point) is the stem's ReLU; ``gradcam_layer()`` the last block.
    """

    def __init__(
        self,
        block: type[nn.Module] = BasicBlock,
        num_blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_channels: int = 1,
    ):
        super().__init__()
        blocks = tuple(num_blocks_per_stage)
        if len(blocks) != len(WIDTHS) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks):
            raise ValueError(f"blocks must be {len(WIDTHS)} positive ints (blocks per stage), got {blocks!r}")
        expansion = getattr(block, "expansion", 1)
        self.in_planes = WIDTHS[0]
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        self.relu = nn.ReLU()
        self.layer1 = self._make_layer(block, WIDTHS[0], blocks[0], stride=1)
        self.layer2 = self._make_layer(block, WIDTHS[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(block, WIDTHS[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(block, WIDTHS[3], blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(WIDTHS[3] * expansion, num_classes)

    def _make_layer(self, block: type[nn.Module], planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * getattr(block, "expansion", 1)
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def simple_resnet(num_classes: int = 10, in_channels: int = 3, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> SimpleResNet:
    """SimpleResNet with cnnlab's option name: ``blocks`` (blocks per stage) is the seed's ``num_blocks_per_stage``."""
    return SimpleResNet(BasicBlock, tuple(blocks), num_classes, in_channels)


register_model("simple_resnet", family="simple_resnet", min_resolution=8,
               description="SimpleResNet (seed 004) BasicBlock 64-512, 3x3 stem, no max pool; option blocks (default 2-2-2-2)"
               )(simple_resnet)
register_model("resnet4stage", family="simple_resnet", min_resolution=8, in_channels=1, blocks=(1, 1, 1, 1),
               description="the seed's ResNet4StageCustom: SimpleResNet [1,1,1,1], 1 input channel (EMNIST, 4.9M)"
               )(simple_resnet)
