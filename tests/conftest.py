import os

import pytest
import torch

# Two pytest-xdist workers share two cores: one intra-op thread each keeps them from fighting.
torch.set_num_threads(1)
os.environ.setdefault("CNNLAB_DATA", os.path.join(os.path.dirname(__file__), ".data-never-used"))


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path, monkeypatch):
    """Tests never touch the user's data cache."""
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "data"))
