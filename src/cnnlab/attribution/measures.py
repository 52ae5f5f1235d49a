"""Measurements phi: what an attribution explains, as per-target values from eval-mode logits.

A measurement maps ``(logits K×C, labels K)`` to K values, one per target test example. MAGIC
differentiates it, LDS evaluates it on retrained models, and plots use ``higher_is_better`` to tell
proponents (examples that move phi the good way) from opponents.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Union

import torch.nn.functional as F
from torch import Tensor

from cnnlab.utils.indices import parse_index_list

MeasureFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Measurement:
    """A named per-target function of (logits, labels) -> values of shape (K,)."""

    name: str
    fn: MeasureFn
    higher_is_better: bool
    description: str = ""

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        out = self.fn(logits, y)
        if out.shape != (logits.shape[0],):
            raise ValueError(f"measurement {self.name!r} must return one value per target, shape "
                             f"({logits.shape[0]},), got {tuple(out.shape)}")
        return out


def target_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy of each target (no label smoothing: the quantity a user reads as test loss)."""
    return F.cross_entropy(logits, y, reduction="none")


def correct_class_margin(logits: Tensor, y: Tensor) -> Tensor:
    """logit of the true class minus the largest other logit."""
    true = logits.gather(1, y[:, None])[:, 0]
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - others.max(dim=1).values


_MEASURES: dict[str, Measurement] = {}


def register_measurement(m: Measurement) -> Measurement:
    if m.name in _MEASURES:
        raise ValueError(f"measurement {m.name!r} is registered twice")
    _MEASURES[m.name] = m
    return m


register_measurement(Measurement("loss", target_loss, False, "per-target cross-entropy loss"))
register_measurement(Measurement("margin", correct_class_margin, True, "logit_y - max_{k != y} logit_k"))


def list_measurements() -> list[str]:
    return sorted(_MEASURES)


def get_measurement(spec: Union[str, Measurement, MeasureFn]) -> Measurement:
    """A registered name (``loss``, ``margin``), a :class:`Measurement`, or a callable(logits, y) -> (K,)."""
    if isinstance(spec, Measurement):
        return spec
    if isinstance(spec, str):
        if spec not in _MEASURES:
            close = difflib.get_close_matches(spec, list(_MEASURES), n=2, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown measurement {spec!r}.{hint} Available: {', '.join(list_measurements())} "
                             f"(or pass a callable(logits, y) -> per-target values)")
        return _MEASURES[spec]
    if callable(spec):
        name = getattr(spec, "__name__", "custom")
        return Measurement(f"custom:{name}", spec, True, "user callable")
    raise TypeError(f"measure must be a name, a Measurement or a callable, got {type(spec).__name__}")


def parse_targets(spec: str | None, n_test: int, default: int = 50) -> list[int]:
    """``"0-49"``, ``"3,7,10-12"`` or None (the first ``default`` test examples) -> sorted unique indices.

    Args:
        spec (str, optional): The ``--targets`` list (:func:`cnnlab.utils.indices.parse_index_list` syntax);
            None or "" for the default.
        n_test (int): Size of the test split (every index must lie in [0, n_test)).
        default (int, optional): How many leading test examples the default takes. Default: 50.
    """
    if spec is None or spec == "":
        return list(range(min(default, n_test)))
    return parse_index_list(spec, n_test, what="targets (test split)")
