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
