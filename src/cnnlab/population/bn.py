"""BatchNorm helpers for populations: batch-statistics forwards and running-statistics recalibration.

The BatchNorm code lives in :mod:`cnnlab.engine.batchnorm` (shared with the training step); this module
re-exports what populations use, and says whether a model's train-mode forward is random.
"""

from __future__ import annotations

from torch import nn

from cnnlab.engine.batchnorm import batchnorm_modules, bn_batch_statistics, recalibrate_bn

__all__ = ["batchnorm_modules", "bn_batch_statistics", "has_random_layers", "recalibrate_bn"]


def has_random_layers(model: nn.Module) -> bool:
    """Whether a train-mode forward draws random numbers (dropout with p > 0)."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in model.modules())
