"""The version stamp every result record carries: which cnnlab, torch, numpy, Python and platform made it."""

from __future__ import annotations

import platform
import sys

import numpy as np
import torch

from cnnlab import __version__


def versions() -> dict[str, str]:
    """``{"cnnlab", "torch", "numpy", "python", "platform"}`` version strings of this process."""
    return {"cnnlab": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}
