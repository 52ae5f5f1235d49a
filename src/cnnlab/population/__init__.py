"""Populations: many models of one architecture at once (torch.func), population training, evolution strategies."""

from cnnlab.population.es import (
    ES_ALGORITHMS, ESSettings, EvolutionStrategy, GradientESSettings, SearchStrategy, centered_ranks, create_es, get_es, register_es,
)
from cnnlab.population.es_algorithms import PGPE, SNES, PGPESettings, SepCMAES, SepCMAESSettings, SNESSettings
from cnnlab.population.es_optim import ClipUp
from cnnlab.population.stack import ParamLayout, Population, stacked_forward
from cnnlab.population.state import PopulationState
from cnnlab.population.train import BACKENDS, EvalSet, PopulationResult, choose_backend, train_population

__all__ = [
    "BACKENDS", "ClipUp", "ES_ALGORITHMS", "ESSettings", "GradientESSettings", "PGPE", "PGPESettings", "SNES", "SNESSettings", "SearchStrategy",
    "SepCMAES", "SepCMAESSettings", "create_es", "get_es", "register_es", "EvalSet", "EvolutionStrategy", "ParamLayout", "Population", "PopulationResult",
    "PopulationState", "centered_ranks", "choose_backend", "stacked_forward", "train_population",
]
