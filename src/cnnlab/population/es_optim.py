"""Optimizers for the ES mean: the engine's Adam and SGD, and ClipUp (Toklu et al. 2020).

ClipUp follows the normalised gradient with heavy-ball momentum and clips the velocity's norm:

    v <- clip(momentum * v + lr * d / ||d||, max_speed);   x <- x + v        (d: the ascent direction)

so a step never exceeds ``max_speed`` whatever the scale of the fitness. The paper's advice, which
EvoTorch follows, is ``max_speed = 2 * lr`` and momentum 0.9.
"""

from __future__ import annotations

from typing import Optional

import torch

from cnnlab.engine.optim import FunctionalOptimizer, ParamGroup, make_optimizer

ES_OPTIMIZERS = ("adam", "sgd", "clipup")


class ClipUp(FunctionalOptimizer):
    """ClipUp on each tensor as one vector (the ES mean is one tensor); ``update`` takes loss gradients.

    Args:
        groups (list[ParamGroup]): the parameters (their weight decay is added to the gradient).
        lr (float): the step size, the norm of the normalised-gradient step.
        momentum (float, optional): the velocity's decay. Default: 0.9.
        max_speed (float, optional): the largest velocity norm; None means ``2 * lr``. Default: None.
    """

    state_keys = ("velocity",)

    def __init__(self, groups: list[ParamGroup], lr: float, momentum: float = 0.9, max_speed: Optional[float] = None):
        super().__init__(groups)
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"ClipUp needs lr > 0 and momentum in [0, 1), got lr={lr}, momentum={momentum}")
        self.momentum = momentum
        self.max_speed = 2.0 * lr if max_speed is None else float(max_speed)
        if self.max_speed <= 0:
            raise ValueError(f"ClipUp needs max_speed > 0, got {self.max_speed}")

    def _update_one(self, p, g, s, lr, wd, step):
        d = g + wd * p if wd else g
        norm = d.norm()
        step_ = -(lr * d / norm) if norm > 0 else torch.zeros_like(d)
        v = self.momentum * s["velocity"] + step_
        speed = v.norm()
        if speed > self.max_speed:
            v = v * (self.max_speed / speed)
        return p + v, {"velocity": v}


def make_es_optimizer(name: str, lr: float, *, momentum: float = 0.9, max_speed: Optional[float] = None,
                      weight_decay: float = 0.0) -> FunctionalOptimizer:
    """The optimizer of an ES mean (one parameter named ``mean``): adam | sgd | clipup."""
    groups = [ParamGroup("mean", ("mean",), weight_decay)]
    if name == "clipup":
        return ClipUp(groups, lr, momentum=momentum, max_speed=max_speed)
    if name not in ES_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {ES_OPTIMIZERS}, got {name!r}")
    return make_optimizer(name, groups, momentum=momentum if name == "sgd" else 0.0)
