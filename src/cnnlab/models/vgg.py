"""VGG-11/13/16: CIFAR-style (conv-BN-ReLU trunk, one linear head) and torchvision-style (ImageNet head,
torchvision's state_dict keys so its checkpoints load with ``strict=True``)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.init import init_cnn_weights_
from cnnlab.models.registry import register_model

# Conv widths per configuration; "M" = 2x2 max pooling (Simonyan & Zisserman, configurations A, B, D).
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _check_config(config: str) -> list[int | str]:
    if config not in CONFIGS:
        raise ValueError(f"VGG config must be one of {', '.join(CONFIGS)}; got {config!r}")
    return CONFIGS[config]


# --------------------------------------------------------------------------------------------- CIFAR


def _cifar_block(cin: int, cout: int, batchnorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    """VGG trunk of conv(-BN)-ReLU blocks and five 2x2 max pools, global average pooling, Linear(512, C).

    ``features`` is the first conv-BN-ReLU block (the masking hook point); ``body`` holds the rest.
    """

    def __init__(self, config: str, num_classes: int = 10, in_channels: int = 3, batchnorm: bool = True):
        super().__init__()
        cfg = _check_config(config)
        self.features = _cifar_block(in_channels, int(cfg[0]), batchnorm)
        layers: list[nn.Module] = []
        cin = int(cfg[0])
        for v in cfg[1:]:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_cifar_block(cin, int(v), batchnorm))
                cin = int(v)
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def gradcam_layer(self) -> nn.Module:
        return [m for m in self.body if isinstance(m, nn.Sequential)][-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.features(x))
        return self.classifier(self.pool(x).flatten(1))


for _n in (11, 13, 16):
    register_model(f"vgg{_n}_cifar", family="vgg_cifar", min_resolution=32, model_args=dict(config=f"vgg{_n}"),
                   description=f"CIFAR VGG-{_n} with BN, Linear(512, C) head")(CifarVGG)


# --------------------------------------------------------------------------------------- torchvision


class VGG(nn.Module):
    """torchvision-layout VGG: flat ``features`` (conv, [BN], ReLU, ..., max pools), ``avgpool`` to 7x7,
    ``classifier`` = Linear-ReLU-Dropout x2 + Linear, with torchvision's initialisation."""

    def __init__(
        self, config: str, batch_norm: bool = False, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5
    ):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        layers: list[nn.Module] = []
        cin = in_channels
        for v in _check_config(config):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(nn.Conv2d(cin, int(v), kernel_size=3, padding=1))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(int(v)))
                layers.append(nn.ReLU(inplace=True))
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        init_cnn_weights_(self)  # torchvision's

    def _relus(self) -> list[nn.Module]:
        return [m for m in self.features if isinstance(m, nn.ReLU)]

    def first_block(self) -> nn.Module:
        """The first ReLU: its output is the first conv-(BN-)ReLU block's output."""
        return self._relus()[0]

    def gradcam_layer(self) -> nn.Module:
        """The last conv block's ReLU (before the final max pool)."""
        return self._relus()[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


for _n in (11, 13, 16):
    for _bn in (False, True):
        register_model(f"vgg{_n}" + ("_bn" if _bn else ""), family="vgg", min_resolution=32,
                       model_args=dict(config=f"vgg{_n}", batch_norm=_bn),
                       description=f"torchvision VGG-{_n}{' with BN' if _bn else ''} (ImageNet head, torchvision keys)")(VGG)
