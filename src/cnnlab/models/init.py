"""The weight initialisation torchvision's (and the seeds') CNNs share, in one place."""

from __future__ import annotations

from typing import Literal

from torch import nn


def init_cnn_weights_(model: nn.Module, *, nonlinearity: Literal["relu", "leaky_relu"] = "relu",
                      linear_std: float | None = 0.01) -> None:
    """Initialise every conv, BatchNorm and linear layer of ``model`` in place, in module order.

    Args:
        model (nn.Module): The model whose layers are initialised.
        nonlinearity (str, optional): The ``nonlinearity`` of ``kaiming_normal_`` (fan_out mode) for conv
            weights; conv biases start at zero. Default: "relu".
        linear_std (float or None, optional): Linear weights ~ N(0, linear_std) with zero biases; None
            keeps PyTorch's default linear init (torchvision's ResNet). Default: 0.01.

    BatchNorm layers start at weight 1, bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
