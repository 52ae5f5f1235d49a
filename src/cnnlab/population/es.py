"""Evolution strategies over a flat parameter vector: the abstract base, the registry and OpenAI-ES.

Every algorithm is one class behind ``ES_ALGORITHMS`` (``openai``, ``pgpe``, ``snes``, ``sep_cmaes``),
built as ``cls(center, cls.Settings(...), seed)`` and driven by ask/tell: ``ask()`` returns the
generation's candidates (n, P), ``tell(fitness)`` (n,) — higher is better — updates the search
distribution and returns the generation's statistics. Everything random derives from
``(seed, "es/noise/{generation}")``, so ``state_dict`` (the distribution, optimizer state, generation)
is all a resume needs to continue bit for bit on the same machine.

OpenAI-ES (Salimans et al. 2017): each generation draws K Gaussian directions eps_k, evaluates
``mean + sigma * eps_k`` and, with antithetic (mirrored) sampling, ``mean - sigma * eps_k``; fitness
values are shaped (centered ranks in [-0.5, 0.5], ties averaged, or left raw) and the ascent direction

    g = 1 / (n sigma) * sum_i F_i * e_i        (n candidates, e_i = +-eps_k)

is handed, negated, to a functional optimizer (Adam, SGD or ClipUp; optional weight decay) as the
gradient of a loss. With raw fitness and antithetic pairs, g is exactly unbiased for linear (and
quadratic) objectives: f(m + s e) - f(m - s e) = 2 s grad f . e.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Optional, TypeVar

import torch
from torch import Tensor

from cnnlab.population.es_optim import ES_OPTIMIZERS, make_es_optimizer
from cnnlab.utils.registry import Registry
from cnnlab.utils.seeding import make_generator

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

S = TypeVar("S", bound="DataclassInstance")  # an algorithm's Settings dataclass

SHAPINGS = ("centered_ranks", "none")


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


def default_popsize(dim: int) -> int:
    """4 + floor(3 ln n), the population size of CMA-ES, SNES and sep-CMA-ES (Hansen; Schaul et al.)."""
    return 4 + int(math.floor(3 * math.log(max(dim, 1))))


def fitness_stats(fitness: Tensor) -> dict[str, float]:
    f = fitness.double()
    return {"fitness_mean": float(f.mean()), "fitness_max": float(f.max()), "fitness_min": float(f.min()),
            "fitness_std": float(f.std()) if f.numel() > 1 else 0.0}


class SearchStrategy(ABC, Generic[S]):
    """An ES over a flat vector ``center`` (P,): subclass, set ``name`` and ``Settings``, register.

    Subclasses must implement: ``center``, ``stdev`` and ``popsize`` (properties), ``_sample(z)`` (the
    candidates from a standard normal draw of shape ``noise_shape``), ``_update(z, fitness)`` (the new
    distribution, returning extra statistics) and ``_tensors``/``_load_tensors`` (the mutable state).
    From these the base provides ``ask`` (the candidates of the current generation, a pure function of
    the state and ``(seed, generation)``), ``tell`` (the update from their fitness), ``center`` (the
    distribution's mean, the solution), ``stdev`` (its per-parameter standard deviation) and
    ``state_dict``/``load_state_dict`` (everything ``tell`` changes).
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type]

    def __init__(self, center: Tensor, settings: S, seed: int):
        if center.ndim != 1:
            raise ValueError(f"center must be a flat vector (P,), got shape {tuple(center.shape)}")
        if not isinstance(settings, self.Settings):
            raise TypeError(f"{type(self).__name__} needs {self.Settings.__name__}, got {type(settings).__name__}")
        self.settings: S = settings
        self.seed = int(seed)
        self.generation = 0
        self._asked: Optional[tuple[int, Tensor]] = None

    # ------------------------------------------------------------------ the interface
    @property
    @abstractmethod
    def center(self) -> Tensor:
        """The mean of the search distribution (P,)."""

    @property
    @abstractmethod
    def stdev(self) -> Tensor:
        """Per-parameter standard deviation of the search distribution (P,)."""

    @property
    @abstractmethod
    def popsize(self) -> int:
        """Candidates per generation."""

    @abstractmethod
    def _sample(self, z: Tensor) -> Tensor:
        """Candidates (n, P) from the generation's standard normal draw ``z`` (shape ``noise_shape``)."""

    @abstractmethod
    def _update(self, z: Tensor, fitness: Tensor) -> dict[str, float]:
        """Update the distribution from the draw and the candidates' fitness (n,); extra statistics."""

    @abstractmethod
    def _tensors(self) -> dict[str, Any]:
        """The mutable state (tensors and nested dicts of tensors) for ``state_dict``."""

    @abstractmethod
    def _load_tensors(self, state: dict[str, Any]) -> None: ...

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.popsize, self.dim)

    # ------------------------------------------------------------------ shared machinery
    @property
    def mean(self) -> Tensor:
        return self.center

    @property
    def dim(self) -> int:
        return self.center.numel()

    def noise(self, generation: int | None = None) -> Tensor:
        """The generation's standard normal draw, a pure function of (seed, generation)."""
        g = self.generation if generation is None else generation
        gen = make_generator(self.seed, f"es/noise/{g}", self.center.device)
        return torch.randn(*self.noise_shape, generator=gen, device=self.center.device, dtype=self.center.dtype)

    def ask(self) -> Tensor:
        """The current generation's candidates (n, P)."""
        z = self.noise()
        self._asked = (self.generation, z)
        return self._sample(z)

    def tell(self, fitness: Tensor) -> dict[str, float]:
        """Update from the fitness (n,) of the candidates ``ask`` returned (higher is better)."""
        if self._asked is None or self._asked[0] != self.generation:
            raise RuntimeError("tell() needs the candidates of this generation: call ask() first")
        n = self.popsize
        if tuple(fitness.shape) != (n,):
            raise ValueError(f"fitness must have shape ({n},), one value per candidate, got {tuple(fitness.shape)}")
        if not torch.isfinite(fitness).all():
            raise ValueError("fitness contains non-finite values")
        z = self._asked[1]
        extra = self._update(z, fitness.to(self.center.device))
        self._asked = None
        self.generation += 1
        return {"generation": self.generation, **fitness_stats(fitness), **extra}

    def step(self, fitness_fn: Callable[[Tensor], Tensor]) -> dict[str, float]:
        """One generation: ``fitness_fn(candidates (n, P)) -> (n,)``, higher is better."""
        return self.tell(fitness_fn(self.ask()))

    def state_dict(self) -> dict[str, Any]:
        return {"algorithm": self.name, **self._tensors(), "generation": self.generation, "seed": self.seed,
                "settings": asdict(self.settings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        algo = state.get("algorithm", "openai")  # checkpoints before the registry held OpenAI-ES only
        if algo != self.name:
            raise ValueError(f"the ES state is of algorithm {algo!r}; this strategy is {self.name!r}")
        defaults = {f.name: f.default for f in fields(self.Settings)}
        saved = {**defaults, **state["settings"]}  # settings added since the checkpoint take their defaults
        if saved != asdict(self.settings) or int(state["seed"]) != self.seed:
            raise ValueError("the ES state was saved with different settings or seed; it cannot continue this strategy")
        if state["mean"].shape != self.center.shape:
            raise ValueError(f"the saved mean has {state['mean'].numel()} entries, this strategy {self.dim}")
        dev = self.center.device
        self._load_tensors({k: _to(v, dev) for k, v in state.items() if k not in ("algorithm", "generation", "seed", "settings")})
        self.generation = int(state["generation"])
        self._asked = None


def _to(v: Any, device: torch.device) -> Any:
    if isinstance(v, Tensor):
        return v.to(device)
    if isinstance(v, dict):
        return {k: _to(x, device) for k, x in v.items()}
    return v


def _float_vector(center: Tensor) -> Tensor:
    """The working copy of the start vector: float64 stays float64, everything else becomes float32."""
    return center.detach().clone().to(torch.float64 if center.dtype == torch.float64 else torch.float32)


ES_ALGORITHMS: Registry[type[SearchStrategy]] = Registry(
    "ES algorithm", error=ValueError, hint="Register another with @register_es on a SearchStrategy subclass.")


def register_es(cls: type[SearchStrategy]) -> type[SearchStrategy]:
    """Class decorator: add an ES to the registry under ``cls.name`` (an empty or taken name is refused)."""
    return ES_ALGORITHMS.register(cls.name, cls)


def get_es(name: str) -> type[SearchStrategy]:
    """The registered ES class named ``name``; an unknown name is a ValueError listing the known ones."""
    return ES_ALGORITHMS.get(name)


def settings_fields(cls: type[SearchStrategy]) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls.Settings))


def create_es(name: str, center: Tensor, seed: int, **settings: Any) -> SearchStrategy:
    """``create_es("snes", x0, seed=0, sigma=0.1)``: the registry's algorithm with its settings."""
    cls = get_es(name)
    unknown = sorted(set(settings) - set(settings_fields(cls)))
    if unknown:
        raise ValueError(f"{name} has no setting(s) {', '.join(unknown)}; it takes {', '.join(settings_fields(cls))}")
    return cls(center, cls.Settings(**settings), seed)


@dataclass(frozen=True)
class GradientESSettings:
    """The settings of an ES whose mean follows a search-gradient estimate with an optimizer (OpenAI-ES, PGPE).

    Args:
        population (int, optional): candidates per generation (2K with antithetic sampling). Default: 32.
        sigma (float, optional): (initial) standard deviation of the perturbations. Default: 0.05.
        lr (float, optional): the optimizer's learning rate on the mean (ClipUp: its step size). Default: 0.01.
        optimizer (str, optional): ``adam``, ``sgd`` or ``clipup`` (Toklu et al. 2020). Default: ``adam``.
        momentum (float, optional): heavy-ball momentum of ``sgd`` and ``clipup``. Default: 0.9.
        max_speed (float, optional): ClipUp's velocity norm bound; None means ``2 * lr`` (the ClipUp
            paper's advice). Default: None.
        weight_decay (float, optional): L2 penalty on the mean, added to the gradient. Default: 0.
        antithetic (bool, optional): mirrored pairs ``mean +- sigma eps``. Default: True.
        shaping (str, optional): ``centered_ranks`` (ranks in [-0.5, 0.5]) or ``none`` (raw). Default:
            ``centered_ranks``.
    """

    population: int = 32
    sigma: float = 0.05
    lr: float = 0.01
    optimizer: str = "adam"
    momentum: float = 0.9
    max_speed: Optional[float] = None
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
        _check_optimizer(self.optimizer, self.momentum, self.max_speed, self.weight_decay)
        if self.shaping not in SHAPINGS:
            raise ValueError(f"shaping must be one of {SHAPINGS}, got {self.shaping!r}")

    @property
    def directions(self) -> int:
        """K, the Gaussian directions drawn per generation."""
        return self.population // 2 if self.antithetic else self.population


@dataclass(frozen=True)
class ESSettings(GradientESSettings):
    """OpenAI-ES hyperparameters (Salimans et al. 2017; defaults are cnnlab's, tuned on the digits CNN).

    Args: those of :class:`GradientESSettings` (population 32, sigma 0.05, lr 0.01, optimizer ``adam``,
    momentum 0.9, max_speed None, weight_decay 0, antithetic True, shaping ``centered_ranks``).
    """


def _check_optimizer(name: str, momentum: float, max_speed: Optional[float], weight_decay: float) -> None:
    if name not in ES_OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {ES_OPTIMIZERS}, got {name!r}")
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise ValueError("weight_decay must be >= 0 and momentum in [0, 1)")
    if max_speed is not None and max_speed <= 0:
        raise ValueError(f"max_speed must be > 0, got {max_speed}")


def shape_fitness(fitness: Tensor, shaping: str) -> Tensor:
    f = fitness.float()
    return centered_ranks(f) if shaping == "centered_ranks" else f


@register_es
class EvolutionStrategy(SearchStrategy[ESSettings]):
    """OpenAI-ES: a fixed isotropic Gaussian whose mean follows the search gradient with an optimizer.

    Args:
        center (Tensor): the start vector (P,).
        settings (ESSettings): hyperparameters (see :class:`ESSettings`).
        seed (int): the seed every generation's noise derives from.
    """

    name = "openai"
    Settings = ESSettings

    def __init__(self, center: Tensor, settings: ESSettings, seed: int):
        super().__init__(center, settings, seed)
        self._mean = center.detach().clone().float()
        self.optimizer = make_es_optimizer(settings.optimizer, settings.lr, momentum=settings.momentum,
                                           max_speed=settings.max_speed, weight_decay=settings.weight_decay)
        self.opt_state = self.optimizer.init_state({"mean": self._mean})

    @property
    def center(self) -> Tensor:
        return self._mean

    @property
    def stdev(self) -> Tensor:
        return torch.full_like(self._mean, self.settings.sigma)

    @property
    def popsize(self) -> int:
        return self.settings.population

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.settings.directions, self.dim)

    def _sample(self, z: Tensor) -> Tensor:
        signed = torch.cat([z, -z]) if self.settings.antithetic else z
        return self._mean[None] + self.settings.sigma * signed

    def gradient(self, noise: Tensor, fitness: Tensor) -> Tensor:
        """The ascent estimate g (P,) from a generation's noise and the candidates' raw fitness (n,)."""
        n = self.settings.population
        if tuple(fitness.shape) != (n,):
            raise ValueError(f"fitness must have shape ({n},), one value per candidate, got {tuple(fitness.shape)}")
        F = shape_fitness(fitness, self.settings.shaping).to(noise.device)
        k = noise.shape[0]
        weights = F[:k] - F[k:] if self.settings.antithetic else F
        return (weights @ noise) / (n * self.settings.sigma)

    def _update(self, z: Tensor, fitness: Tensor) -> dict[str, float]:
        g = self.gradient(z, fitness)
        new, self.opt_state = self.optimizer.update({"mean": self._mean}, {"mean": -g}, self.opt_state,
                                                    self.settings.lr, self.generation + 1)
        self._mean = new["mean"]
        return {"grad_norm": float(g.norm())}

    def _tensors(self) -> dict[str, Any]:
        return {"mean": self._mean, "opt_state": self.opt_state}

    def _load_tensors(self, state: dict[str, Any]) -> None:
        self._mean = state["mean"]
        self.opt_state = state["opt_state"]


OpenAIES = EvolutionStrategy

from cnnlab.population import es_algorithms  # noqa: E402,F401  (registers pgpe, snes, sep_cmaes)
