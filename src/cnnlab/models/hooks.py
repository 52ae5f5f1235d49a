"""Hooks a model may define for the engine to call: the model's own knowledge, not the engine's.

Any ``nn.Module`` (a registered model or the user's own) may implement them; the engine checks for them
with ``isinstance(model, InitFromData)`` and knows nothing of any family.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class InitFromData(Protocol):
    """A model with a data-dependent initialisation.

    Implementations must provide ``init_from_data(self, images: Tensor) -> None``, which sets parameters
    from ``images``: normalised training images (float, N x C x H x W at the size and channels the run
    serves, without augmentation; up to 5,000 of them). The engine calls it once, after the seeded init
    and before training, and only when no weights are loaded (``model.weights`` unset). Example:
    airbench's patch whitening (:meth:`cnnlab.models.airbench.AirBench94.init_from_data`).
    """

    def init_from_data(self, images: Tensor) -> None: ...

