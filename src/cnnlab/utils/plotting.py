"""Matplotlib for files, not screens: the Agg backend and atomic PNG writes."""

from __future__ import annotations

import os
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100, **savefig_kwargs: Any) -> None:
    """Save a matplotlib figure as PNG through a temporary file and rename, then close it."""
    from cnnlab.utils.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **savefig_kwargs)
    finally:
        pyplot().close(fig)
