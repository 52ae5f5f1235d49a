"""Adaptive ES over a flat vector: PGPE, SNES and separable CMA-ES, each with its paper's defaults.

All three keep a diagonal Gaussian N(center, diag(stdev^2)) and cost O(n P) per generation (n
candidates, P parameters), so they scale to ~10^6 parameters; see each class for its update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from cnnlab.population.es import (
    GradientESSettings,
    S,
    SearchStrategy,
    _float_vector,
    default_popsize,
    register_es,
    shape_fitness,
)
from cnnlab.population.es_optim import make_es_optimizer


class _DiagonalGaussian(SearchStrategy[S]):
    """A Gaussian N(center, diag(stdev^2)) starting at (center, sigma); its state: center, stdev (+ ``_extra``)."""

    def __init__(self, center: Tensor, settings: S, seed: int, popsize: int, sigma: float):
        super().__init__(center, settings, seed)
        self._center = _float_vector(center)
        self._stdev = torch.full_like(self._center, sigma)
        self._popsize = popsize

    @property
    def center(self) -> Tensor:
        return self._center

    @property
    def stdev(self) -> Tensor:
        return self._stdev

    @property
    def popsize(self) -> int:
        return self._popsize

    def _tensors(self) -> dict[str, Any]:
        return {"mean": self._center, "stdev": self._stdev}

    def _load_tensors(self, state: dict[str, Any]) -> None:
        self._center, self._stdev = state["mean"], state["stdev"]


# ---------------------------------------------------------------------------------------------- PGPE
@dataclass(frozen=True)
class PGPESettings(GradientESSettings):
    """PGPE hyperparameters (Sehnke et al. 2010, with the ClipUp paper's and EvoTorch's defaults).

    Args:
        population, sigma, lr, momentum, max_speed, weight_decay, antithetic, shaping: as in
            :class:`~cnnlab.population.es.GradientESSettings` (population 32, sigma 0.05, lr 0.01, antithetic:
            symmetric sampling, Sehnke et al.'s SyS; shaping ``none`` means raw fitness minus its mean).
        optimizer (str, optional): ``clipup`` (EvoTorch's default for PGPE), ``adam`` or ``sgd``.
            Default: ``clipup``.
        stdev_lr (float, optional): learning rate of the standard deviations. Default: 0.1.
        stdev_max_change (float, optional): largest relative change of a standard deviation per
            generation (0.2: at most 20%); None for no bound. Default: 0.2.
        stdev_min (float, optional): floor of the standard deviations. Default: 1e-12.
    """

    optimizer: str = "clipup"
    stdev_lr: float = 0.1
    stdev_max_change: Optional[float] = 0.2
    stdev_min: float = 1e-12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stdev_lr < 0:
            raise ValueError(f"stdev_lr must be >= 0, got {self.stdev_lr}")
        if self.stdev_max_change is not None and not 0 < self.stdev_max_change < 1:
            raise ValueError(f"stdev_max_change must be in (0, 1) or None, got {self.stdev_max_change}")
        if self.stdev_min <= 0:
            raise ValueError(f"stdev_min must be > 0, got {self.stdev_min}")


@register_es
class PGPE(_DiagonalGaussian[PGPESettings]):
    """PGPE: a diagonal Gaussian whose center and per-parameter stdev follow the search gradient.

    With symmetric pairs ``c +- s*eps_k`` and utilities u (shaped fitness) the estimates are

        grad_c = 1/K sum_k (u+_k - u-_k)/2 * s*eps_k
        grad_s = 1/K sum_k (u+_k + u-_k)/2 * ((s*eps_k)^2 - s^2) / s

    (without mirroring: 1/n sum_i u_i * s*eps_i and 1/n sum_i u_i ((s*eps_i)^2 - s^2)/s). The center
    follows grad_c with the optimizer; ``s <- s + stdev_lr * grad_s``, each entry's change bounded by
    ``stdev_max_change * s``. Args: ``center`` (Tensor (P,)), ``settings`` (:class:`PGPESettings`),
    ``seed`` (int).
    """

    name = "pgpe"
    Settings = PGPESettings

    def __init__(self, center: Tensor, settings: PGPESettings, seed: int):
        super().__init__(center, settings, seed, settings.population, settings.sigma)
        self.optimizer = make_es_optimizer(settings.optimizer, settings.lr, momentum=settings.momentum,
                                           max_speed=settings.max_speed, weight_decay=settings.weight_decay)
        self.opt_state = self.optimizer.init_state({"mean": self._center})

    @property
    def noise_shape(self) -> tuple[int, int]:
        s = self.settings
        return (s.population // 2 if s.antithetic else s.population, self.dim)

    def _sample(self, z: Tensor) -> Tensor:
        d = self._stdev * z
        return self._center[None] + (torch.cat([d, -d]) if self.settings.antithetic else d)

    def gradients(self, z: Tensor, fitness: Tensor) -> tuple[Tensor, Tensor]:
        """(grad_center, grad_stdev) from a generation's draw and the candidates' fitness."""
        s = self.settings
        u = shape_fitness(fitness, s.shaping).to(self._center.dtype)
        if s.shaping == "none":
            u = u - u.mean()
        d = self._stdev * z
        second = (d * d - self._stdev**2) / self._stdev
        if s.antithetic:
            k = z.shape[0]
            plus, minus = u[:k], u[k:]
            return ((plus - minus) / 2) @ d / k, ((plus + minus) / 2) @ second / k
        n = z.shape[0]
        return u @ d / n, u @ second / n

    def _update(self, z: Tensor, fitness: Tensor) -> dict[str, float]:
        s = self.settings
        g_c, g_s = self.gradients(z, fitness)
        new, self.opt_state = self.optimizer.update({"mean": self._center}, {"mean": -g_c}, self.opt_state, s.lr,
                                                    self.generation + 1)
        self._center = new["mean"]
        target = self._stdev + s.stdev_lr * g_s
        if s.stdev_max_change is not None:
            bound = s.stdev_max_change * self._stdev
            target = torch.minimum(torch.maximum(target, self._stdev - bound), self._stdev + bound)
        self._stdev = target.clamp_min(s.stdev_min)
        return {"grad_norm": float(g_c.norm()), "sigma_mean": float(self._stdev.mean())}

    def _tensors(self) -> dict[str, Any]:
        return {**super()._tensors(), "opt_state": self.opt_state}

    def _load_tensors(self, state: dict[str, Any]) -> None:
        super()._load_tensors(state)
        self.opt_state = state["opt_state"]


# ---------------------------------------------------------------------------------------------- SNES
def nes_utilities(fitness: Tensor) -> Tensor:
    """NES utilities: u_k = max(0, ln(n/2 + 1) - ln k) / sum_j max(0, ln(n/2 + 1) - ln j) - 1/n, k the rank (1 = best)."""
    n = fitness.numel()
    order = torch.argsort(fitness.double(), descending=True, stable=True)
    k = torch.arange(1, n + 1, dtype=torch.float64)
    raw = (math.log(n / 2 + 1) - torch.log(k)).clamp_min(0)
    u_sorted = raw / raw.sum() - 1.0 / n
    u = torch.empty(n, dtype=torch.float64)
    u[order] = u_sorted
    return u


@dataclass(frozen=True)
class SNESSettings:
    """SNES hyperparameters (Schaul, Glasmachers & Schmidhuber 2011; None = the paper's default for n parameters).

    Args:
        population (int, optional): candidates per generation; None means ``4 + floor(3 ln n)``. Default: None.
        sigma (float, optional): initial standard deviation of every parameter. Default: 0.05.
        center_lr (float, optional): learning rate of the center (the paper's eta_mu). Default: 1.0.
        stdev_lr (float, optional): learning rate of the log standard deviations; None means
            ``(3 + ln n) / (5 sqrt(n))``. Default: None.
    """

    population: Optional[int] = None
    sigma: float = 0.05
    center_lr: float = 1.0
    stdev_lr: Optional[float] = None

    def __post_init__(self) -> None:
        if self.population is not None and self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if self.sigma <= 0 or self.center_lr <= 0 or (self.stdev_lr is not None and self.stdev_lr < 0):
            raise ValueError("sigma and center_lr must be > 0 and stdev_lr >= 0")


@register_es
class SNES(_DiagonalGaussian[SNESSettings]):
    """Separable NES: x_k = c + s * z_k, utilities u (NES ranks), then

        c <- c + center_lr * s * sum_k u_k z_k;     s <- s * exp(stdev_lr / 2 * sum_k u_k (z_k^2 - 1))

    Args: ``center`` (Tensor (P,)), ``settings`` (:class:`SNESSettings`), ``seed`` (int).
    """

    name = "snes"
    Settings = SNESSettings

    def __init__(self, center: Tensor, settings: SNESSettings, seed: int):
        n = center.numel()
        super().__init__(center, settings, seed, settings.population or default_popsize(n), settings.sigma)
        self.stdev_lr = settings.stdev_lr if settings.stdev_lr is not None else (3 + math.log(n)) / (5 * math.sqrt(n))

    def _sample(self, z: Tensor) -> Tensor:
        return self._center[None] + self._stdev * z

    def _update(self, z: Tensor, fitness: Tensor) -> dict[str, float]:
        u = nes_utilities(fitness.cpu()).to(device=z.device, dtype=z.dtype)
        self._center = self._center + self.settings.center_lr * self._stdev * (u @ z)
        self._stdev = self._stdev * torch.exp(self.stdev_lr / 2 * (u @ (z * z - 1)))
        return {"sigma_mean": float(self._stdev.mean())}


# ---------------------------------------------------------------------------------------------- sep-CMA-ES
@dataclass(frozen=True)
class SepCMAESSettings:
    """Separable CMA-ES hyperparameters (Ros & Hansen 2008; None = the paper's default for n parameters).

    Args:
        population (int, optional): lambda, candidates per generation; None means ``4 + floor(3 ln n)``.
            Default: None.
        sigma (float, optional): initial global step size (the diagonal covariance starts at I). Default: 0.05.
        center_lr (float, optional): c_m, learning rate of the mean. Default: 1.0.
        c_c (float, optional): cumulation rate of the covariance path; None means ``4 / (n + 4)``. Default: None.
        c_sigma (float, optional): cumulation rate of the step-size path; None means
            ``(mu_eff + 2) / (n + mu_eff + 3)``. Default: None.
        c_cov (float, optional): learning rate of the diagonal covariance; None means the paper's sep-CMA
            rate (see :class:`SepCMAES`). Default: None.
    """

    population: Optional[int] = None
    sigma: float = 0.05
    center_lr: float = 1.0
    c_c: Optional[float] = None
    c_sigma: Optional[float] = None
    c_cov: Optional[float] = None

    def __post_init__(self) -> None:
        if self.population is not None and self.population < 4:
            raise ValueError(f"population must be >= 4, got {self.population}")
        if self.sigma <= 0 or self.center_lr <= 0:
            raise ValueError("sigma and center_lr must be > 0")
        for name in ("c_c", "c_sigma", "c_cov"):
            v = getattr(self, name)
            if v is not None and not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")


@register_es
class SepCMAES(SearchStrategy[SepCMAESSettings]):
    """sep-CMA-ES: CMA-ES with a diagonal covariance C = diag(c), O(n) memory and time per candidate.

    lambda = 4 + floor(3 ln n), mu = floor(lambda / 2), w_i ∝ ln(mu + 1/2) - ln i (sum 1),
    mu_eff = 1 / sum w_i^2, c_sigma = (mu_eff + 2) / (n + mu_eff + 3),
    d_sigma = 1 + 2 max(0, sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma, c_c = 4 / (n + 4),
    mu_cov = mu_eff, c_cov = (n + 2) / 3 * [2 / (mu_cov (n + sqrt 2)^2)
    + (1 - 1/mu_cov) min(1, (2 mu_eff - 1) / ((n + 2)^2 + mu_eff))]  (the sep-CMA-ES rate),
    E||N(0, I)|| ~ sqrt(n) (1 - 1/(4n) + 1/(21 n^2)). Per generation, with x_k = m + sigma sqrt(c) z_k
    sorted best first and y_i = (x_i - m) / sigma, y_w = sum_{i<=mu} w_i y_i:

        m     <- m + c_m sigma y_w
        p_s   <- (1 - c_s) p_s + sqrt(c_s (2 - c_s) mu_eff) y_w / sqrt(c)
        h_s    = ||p_s|| / sqrt(1 - (1 - c_s)^(2 (g + 1))) < (1.4 + 2 / (n + 1)) E||N||
        p_c   <- (1 - c_c) p_c + h_s sqrt(c_c (2 - c_c) mu_eff) y_w
        c     <- (1 - c_cov) c + c_cov / mu_cov (p_c^2 + (1 - h_s) c_c (2 - c_c) c)
                 + c_cov (1 - 1/mu_cov) sum_i w_i y_i^2
        sigma <- sigma exp(c_s / d_s (||p_s|| / E||N|| - 1))

    These are the paper's rates. EvoTorch's ``CMAES(separable=True)`` defaults to pycma's instead (c_c ~
    1/sqrt(n), separate c_1 and c_mu, active CMA); given c_c, c_1 = c_cov / mu_cov, c_mu = c_cov (1 - 1/mu_cov)
    and ``active=False`` it follows this class to float rounding on the same noise (benchmarks/es_peers.py
    ``--lockstep``).

    Args: ``center`` (Tensor (P,)), ``settings`` (:class:`SepCMAESSettings`), ``seed`` (int).
    """

    name = "sep_cmaes"
    Settings = SepCMAESSettings

    def __init__(self, center: Tensor, settings: SepCMAESSettings, seed: int):
        super().__init__(center, settings, seed)
        self._mean = _float_vector(center)
        n = self.dim
        lam = settings.population or default_popsize(n)
        mu = lam // 2
        w = torch.tensor([math.log(mu + 0.5) - math.log(i) for i in range(1, mu + 1)], dtype=torch.float64)
        w = w / w.sum()
        mu_eff = float(1 / (w**2).sum())
        self.lam, self.mu, self.mu_eff = lam, mu, mu_eff
        self.weights = w.to(device=self._mean.device, dtype=self._mean.dtype)
        self.c_sigma = settings.c_sigma or (mu_eff + 2) / (n + mu_eff + 3)
        self.d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + self.c_sigma
        self.c_c = settings.c_c or 4 / (n + 4)
        self.mu_cov = mu_eff
        c_cov = (2 / (self.mu_cov * (n + math.sqrt(2)) ** 2)
                 + (1 - 1 / self.mu_cov) * min(1.0, (2 * mu_eff - 1) / ((n + 2) ** 2 + mu_eff)))
        self.c_cov = settings.c_cov or min(1.0, (n + 2) / 3 * c_cov)
        self.chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
        self.sigma = torch.tensor(float(settings.sigma), dtype=torch.float64)
        self.diag_c = torch.ones_like(self._mean)
        self.p_sigma = torch.zeros_like(self._mean)
        self.p_c = torch.zeros_like(self._mean)

    @property
    def center(self) -> Tensor:
        return self._mean

    @property
    def stdev(self) -> Tensor:
        return float(self.sigma) * self.diag_c.sqrt()

    @property
    def popsize(self) -> int:
        return self.lam

    def _sample(self, z: Tensor) -> Tensor:
        return self._mean[None] + float(self.sigma) * self.diag_c.sqrt() * z

    def _update(self, z: Tensor, fitness: Tensor) -> dict[str, float]:
        n, sigma = self.dim, float(self.sigma)
        order = torch.argsort(fitness.double().cpu(), descending=True, stable=True)[: self.mu].to(z.device)
        y = self.diag_c.sqrt() * z[order]  # (mu, P): (x_i - m) / sigma of the mu best
        y_w = self.weights @ y
        self._mean = self._mean + self.settings.center_lr * sigma * y_w
        cs, cc = self.c_sigma, self.c_c
        self.p_sigma = (1 - cs) * self.p_sigma + math.sqrt(cs * (2 - cs) * self.mu_eff) * (y_w / self.diag_c.sqrt())
        ps_norm = float(self.p_sigma.double().norm())
        h_sigma = float(ps_norm / math.sqrt(1 - (1 - cs) ** (2 * (self.generation + 1))) < (1.4 + 2 / (n + 1)) * self.chi_n)
        self.p_c = (1 - cc) * self.p_c + h_sigma * math.sqrt(cc * (2 - cc) * self.mu_eff) * y_w
        rank_mu = self.weights @ (y * y)
        self.diag_c = ((1 - self.c_cov) * self.diag_c
                       + self.c_cov / self.mu_cov * (self.p_c**2 + (1 - h_sigma) * cc * (2 - cc) * self.diag_c)
                       + self.c_cov * (1 - 1 / self.mu_cov) * rank_mu)
        self.sigma = self.sigma * math.exp(cs / self.d_sigma * (ps_norm / self.chi_n - 1))
        return {"sigma": float(self.sigma), "sigma_mean": float(self.stdev.mean())}

    def _tensors(self) -> dict[str, Any]:
        return {"mean": self._mean, "sigma": self.sigma, "diag_c": self.diag_c, "p_sigma": self.p_sigma, "p_c": self.p_c}

    def _load_tensors(self, state: dict[str, Any]) -> None:
        self._mean, self.sigma, self.diag_c = state["mean"], state["sigma"].cpu(), state["diag_c"]
        self.p_sigma, self.p_c = state["p_sigma"], state["p_c"]
