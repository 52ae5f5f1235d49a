"""Every shipped run config validates (names, options, values) without training."""

from pathlib import Path

import pytest

from cnnlab.engine.config import load_config
from cnnlab.engine.setup import validate_names

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RUN_CONFIGS = ["quickstart.yaml", "resnet9_cifar10.yaml", "airbench94_cifar10.yaml", "mnist_small_cnn.yaml"]


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_shipped_run_config_validates(name):
    validate_names(load_config(CONFIGS / name))


def test_quickstart_is_the_default_run():
    assert load_config(CONFIGS / "quickstart.yaml").model_dump(exclude={"name"}) == load_config(None).model_dump(exclude={"name"})


def test_config_diff_lists_every_differing_leaf_by_dotted_key():
    from cnnlab.engine.config import config_diff

    old = {"optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": 0, "train": {"epochs": 2}}
    new = {"optim": {"lr": 0.2, "betas": [0.9, 0.99]}, "seed": 0, "train": {"epochs": 2, "ema": None}, "name": "x"}
    assert config_diff(old, new) == [("name", None, "x"), ("optim.lr", 0.1, 0.2)]
    assert config_diff(old, old) == []
