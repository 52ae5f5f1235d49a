"""Small CNNs for quick runs and tests."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import register_model


def conv_bn_act(cin: int, cout: int, *, batchnorm: bool = True, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act())
    return nn.Sequential(*layers)


_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class HeadPool(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling to k x k, computed as a plain average pool when the map divides evenly: the
    same numbers, and unlike adaptive pooling's CUDA backward it is deterministic (which MAGIC requires)."""

    def forward(self, x):
        k = self.output_size
        h, w = x.shape[-2:]
        if k != 1 and h % k == 0 and w % k == 0:  # (k == 1: torch already reduces it to a mean)
            return F.avg_pool2d(x, (h // k, w // k))
        return super().forward(x)


class SmallCNN(nn.Module):
    """conv-bn-act blocks with 2x2 pooling between stages, adaptive average pooling, one linear head.

    ``features`` is the first conv-bn-act block (the hook point for masking analyses).
    Activation and pooling are options because they decide whether metagradients are smooth.
    ``head_pool``: side of the adaptive average pool before the linear head: 1 is global average
    pooling; larger keeps a coarse spatial map (flatten + linear), which learns faster on small data.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        widths: tuple[int, ...] = (16, 32, 64),
        batchnorm: bool = True,
        activation: str = "relu",
        pool: str = "max",
        dropout: float = 0.0,
        head_pool: int = 1,
    ):
        super().__init__()
        if activation not in _ACTS:
            raise ValueError(f"activation must be one of {sorted(_ACTS)}, got {activation!r}")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {sorted(_POOLS)}, got {pool!r}")
        if isinstance(head_pool, bool) or not isinstance(head_pool, int) or head_pool < 1:
            raise ValueError(f"head_pool must be a positive integer, got {head_pool!r}")
        if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ValueError(f"widths must be a non-empty list of positive integers (channels per stage), got {list(widths)!r}")
        widths = tuple(widths)
        act = _ACTS[activation]
        self.features = conv_bn_act(in_channels, widths[0], batchnorm=batchnorm, act=act)
        stages: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            stages += [_POOLS[pool](2), conv_bn_act(cin, cout, batchnorm=batchnorm, act=act)]
        self.stages = nn.Sequential(*stages)
        self.pool = HeadPool(head_pool)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(widths[-1] * head_pool**2, num_classes)

    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1] if len(self.stages) else self.features

    def forward(self, x):
        x = self.stages(self.features(x))
        return self.fc(self.dropout(self.pool(x).flatten(1)))


register_model("tiny_cnn", family="small_cnn", min_resolution=4, description="3-stage 16/32/64 CNN (~24k params)")(SmallCNN)
register_model("simple_cnn", family="small_cnn", min_resolution=8, description="4-stage 32..256 CNN (~390k params)",
               widths=(32, 64, 128, 256))(SmallCNN)
