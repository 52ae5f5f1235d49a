"""Evolution strategies over a flat parameter vector (OpenAI-ES / PGPE style), hand-written.

Each generation draws K Gaussian directions eps_k (seeded by generation), evaluates the candidates
``mean + sigma * eps_k`` and, with antithetic (mirrored) sampling, ``mean - sigma * eps_k``; fitness values
are shaped (centered ranks in [-0.5, 0.5], ties averaged, or left raw) and the ascent direction

    g = 1 / (n sigma) * sum_i F_i * e_i        (n candidates, e_i = +-eps_k)

is handed, negated, to the engine's functional optimizer (SGD or Adam; optional weight decay) as the
gradient of a loss. With raw fitness and antithetic pairs, g is exactly unbiased for linear (and
quadratic) objectives: f(m + s e) - f(m - s e) = 2 s grad f . e.

Everything random derives from ``(seed, "es/noise/{generation}")``, so ``state_dict`` (mean, optimizer
state, generation) is all a resume needs to continue bit for bit on the same machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from cnnlab.engine.optim import ParamGroup, make_optimizer
from cnnlab.utils.seeding import make_generator

SHAPINGS = ("centered_ranks", "none")
ES_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class ESSettings:
    """Hyperparameters of the strategy (see the module docstring)."""

    population: int = 32  # candidates per generation (2K with antithetic sampling)
    sigma: float = 0.05
    lr: float = 0.01
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    antithetic: bool = True
    shaping: str = "centered_ranks"

    def __post_init__(self) -> None:
        if self.population < 2:
            raise ValueError(f"population must be >= 2, got {self.population}")
        if self.antithetic and self.population % 2:
            raise ValueError(f"population must be even with antithetic sampling (mirrored pairs), got {self.population}")
        if self.sigma <= 0 or self.lr <= 0:
            raise ValueError(f"sigma and lr must be > 0, got sigma={self.sigma}, lr={self.lr}")
        if self.optimizer not in ES_OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {ES_OPTIMIZERS}, got {self.optimizer!r}")
        if self.shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {SHAPINGS}, got {self.shaping!r}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")

    @property
    def directions(self) -> int:
        """K, the Gaussian directions drawn per generation."""
        return self.population // 2 if self.antithetic else self.population


def centered_ranks(fitness: Tensor) -> Tensor:
    """Ranks scaled to [-0.5, 0.5] (lowest fitness -0.5); tied values share their average rank."""
    f = fitness.reshape(-1)
    n = f.numel()
    if n < 2:
        return torch.zeros_like(f, dtype=torch.float32)
    less = (f[None, :] < f[:, None]).sum(1).double()
    equal = (f[None, :] == f[:, None]).sum(1).double()
    ranks = less + (equal - 1) / 2
    return (ranks / (n - 1) - 0.5).to(torch.float32).reshape(fitness.shape)


class EvolutionStrategy:
    """ask/tell ES on a flat vector ``mean`` (P,). ``step(fitness_fn)`` = ask + evaluate + tell."""

    def __init__(self, mean: Tensor, settings: ESSettings, seed: int):
        if mean.ndim != 1:
            raise ValueError(f"mean must be a flat vector (P,), got shape {tuple(mean.shape)}")
        self.settings = settings
        self.seed = int(seed)
        self.mean = mean.detach().clone().float()
        self.generation = 0
        self.optimizer = make_optimizer(settings.optimizer, [ParamGroup("mean", ("mean",), settings.weight_decay)],
                                        momentum=settings.momentum if settings.optimizer == "sgd" else 0.0)
        self.opt_state = self.optimizer.init_state({"mean": self.mean})

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def noise(self, generation: int | None = None) -> Tensor:
        """The K directions of a generation (K, P), a pure function of (seed, generation)."""
        g = self.generation if generation is None else generation
        gen = make_generator(self.seed, f"es/noise/{g}", self.mean.device)
        return torch.randn(self.settings.directions, self.dim, generator=gen, device=self.mean.device)

    def ask(self) -> tuple[Tensor, Tensor]:
        """(noise (K, P), candidates (n, P)); with antithetic sampling rows K.. are the mirrored ones."""
        eps = self.noise()
        signed = torch.cat([eps, -eps]) if self.settings.antithetic else eps
        return eps, self.mean[None] + self.settings.sigma * signed

    def shape(self, fitness: Tensor) -> Tensor:
        f = fitness.float()
        return centered_ranks(f) if self.settings.shaping == "centered_ranks" else f

    def gradient(self, noise: Tensor, fitness: Tensor) -> Tensor:
        """The ascent estimate g (P,) from a generation's noise and the candidates' raw fitness (n,)."""
        n = self.settings.population
        if fitness.shape != (n,):
            raise ValueError(f"fitness must have shape ({n},), one value per candidate, got {tuple(fitness.shape)}")
        if not torch.isfinite(fitness).all():
            raise ValueError("fitness contains non-finite values")
        F = self.shape(fitness).to(noise.device)
        k = noise.shape[0]
        weights = F[:k] - F[k:] if self.settings.antithetic else F
        return (weights @ noise) / (n * self.settings.sigma)

    def tell(self, noise: Tensor, fitness: Tensor) -> dict[str, float]:
        """Move the mean along the estimate; returns the generation's fitness statistics."""
        g = self.gradient(noise, fitness)
        new, self.opt_state = self.optimizer.update({"mean": self.mean}, {"mean": -g}, self.opt_state,
                                                    self.settings.lr, self.generation + 1)
        self.mean = new["mean"]
        self.generation += 1
        f = fitness.double()
        return {"generation": self.generation, "fitness_mean": float(f.mean()), "fitness_max": float(f.max()),
                "fitness_min": float(f.min()), "fitness_std": float(f.std()) if f.numel() > 1 else 0.0,
                "grad_norm": float(g.norm())}

    def step(self, fitness_fn: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """One generation: ``fitness_fn(candidates (n, P)) -> (n,)``, higher is better."""
        noise, candidates = self.ask()
        return self.tell(noise, fitness_fn(candidates))

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "opt_state": self.opt_state, "generation": self.generation, "seed": self.seed,
                "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["settings"] != asdict(self.settings) or int(state["seed"]) != self.seed:
            raise ValueError("the ES state was saved with different settings or seed; it cannot continue this strategy")
        if state["mean"].shape != self.mean.shape:
            raise ValueError(f"the saved mean has {state['mean'].numel()} entries, this strategy {self.dim}")
        self.mean = state["mean"].to(self.mean.device)
        self.opt_state = {n: {k: t.to(self.mean.device) for k, t in s.items()} for n, s in state["opt_state"].items()}
        self.generation = int(state["generation"])
