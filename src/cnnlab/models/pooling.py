"""Log-sum-exp pooling as seed 000 (the ResNet-9 / MAGIC guide) defines it.

Over each window, ``(1/eps) * log(mean(exp(eps * x)))``: eps -> 0 gives average pooling, large eps
tends to max pooling; eps = 0.1 is close to average pooling. Unlike max pooling it is smooth and passes
gradient to every position, which keeps metagradients through training well behaved.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def log_mean_exp_pool(x: torch.Tensor, eps: float, dim: int) -> torch.Tensor:
    """``(1/eps) * log(mean(exp(eps * x), dim))``, computed around the max with expm1/log1p.

    With m the max and z = eps * (x - m) <= 0, the result is m + log1p(mean(expm1(z))) / eps: no
    overflow for large eps, and no cancellation as eps -> 0 (where it tends to the mean).
    """
    if eps == 0:
        return x.mean(dim)
    m = x.amax(dim, keepdim=True).detach()  # any constant shift is exact; detached, gradients are unchanged
    z = eps * (x - m)
    return m.squeeze(dim) + torch.log1p(torch.expm1(z).mean(dim)) / eps


class LogSumExpPool2d(nn.Module):
    """Windowed (``kernel_size``, ``stride``, zero ``padding``) or global (``kernel_size=None``) LSE pooling.

    ``eps``: temperature, >= 0 (0 = average pooling). The seed writes ``kernel_size=-1`` for global
    pooling; that is accepted too. Global pooling returns (N, C, 1, 1), like ``AdaptiveAvgPool2d(1)``.
    """

    def __init__(self, eps: float = 0.1, kernel_size: int | None = None, stride: int | None = None, padding: int = 0):
        super().__init__()
        if not (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"lse_eps must be a finite number >= 0, got {eps!r}")
        if kernel_size == -1:
            kernel_size = None
        if kernel_size is not None and (kernel_size < 1 or (stride is not None and stride < 1) or padding < 0):
            raise ValueError(f"bad LSE pooling window: kernel_size={kernel_size}, stride={stride}, padding={padding}")
        self.eps = float(eps)
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size is None:
            return log_mean_exp_pool(x.flatten(2), self.eps, 2)[..., None, None]
        if self.padding:
            x = F.pad(x, (self.padding,) * 4)
        k, s = self.kernel_size, self.stride if self.stride is not None else self.kernel_size
        windows = x.unfold(2, k, s).unfold(3, k, s).flatten(-2)  # (N, C, Ho, Wo, k*k)
        return log_mean_exp_pool(windows, self.eps, -1)

    def extra_repr(self) -> str:
        if self.kernel_size is None:
            return f"eps={self.eps}, global"
        return f"eps={self.eps}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
