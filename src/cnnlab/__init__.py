"""cnnlab: fast, reproducible, analysable experiments on convolutional image classifiers."""

__version__ = "0.1.0"

from cnnlab.models import (  # noqa: E402  (public API re-export)
    create_deterministic_model,
    create_model,
    list_models,
    model_info,
)

__all__ = ["__version__", "create_model", "list_models", "model_info", "create_deterministic_model"]
