"""Populations: many models of one architecture at once (torch.func), population training, evolution strategies."""

from cnnlab.population.es import ESSettings, EvolutionStrategy, centered_ranks
from cnnlab.population.stack import ParamLayout, Population, stacked_forward
from cnnlab.population.state import PopulationState
from cnnlab.population.train import BACKENDS, EvalSet, PopulationResult, choose_backend, train_population

__all__ = [
    "BACKENDS", "ESSettings", "EvalSet", "EvolutionStrategy", "ParamLayout", "Population", "PopulationResult",
    "PopulationState", "centered_ranks", "choose_backend", "stacked_forward", "train_population",
]
