"""cnnlab: fast, reproducible, analysable experiments on convolutional image classifiers."""

__version__ = "0.1.0"

from cnnlab.models import (  # noqa: E402  (public API re-export)
    create_deterministic_model,
    create_model,
    list_models,
    model_info,
)

__all__ = ["__version__", "create_model", "list_models", "model_info", "create_deterministic_model", "fit", "Trainer"]


def __getattr__(name: str):
    """``cnnlab.fit`` / ``cnnlab.Trainer``: the training engine, imported on first use."""
    if name in ("fit", "Trainer"):
        from cnnlab import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
