import os

import pytest
import torch

# Two pytest-xdist workers share two cores: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("CNNLAB_DATA", os.path.join(os.path.dirname(__file__), ".data-never-used"))


@pytest.fixture(autouse=True)
def _seeded_draws():
    """Every test starts from the same global RNG state: an unseeded torch.randn / np.random draw (inputs,
    default model inits) is the same in every run and on every xdist worker, so no test is flaky by draw."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    """Tests never touch the user's data cache."""
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "data"))
