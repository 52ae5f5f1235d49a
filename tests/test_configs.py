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


def test_exponent_floats_are_numbers_in_files_and_overrides(tmp_path):
    """YAML 1.2 reading of 1e-3 everywhere configs are read, including untyped model options."""
    import yaml

    from cnnlab.engine.config import load_config, parse_overrides

    assert parse_overrides(["model.options.dropout=1e-1", "optim.lr=-2E+3"]) == {
        "model": {"options": {"dropout": 0.1}}, "optim": {"lr": -2000.0}}
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: tiny_cnn, options: {dropout: 5e-1}}\noptim: {lr: 3e-2}\n")
    cfg = load_config(path)
    assert cfg.model.options["dropout"] == 0.5 and isinstance(cfg.model.options["dropout"], float)
    assert cfg.optim.lr == 0.03
    assert yaml.safe_load("1e-3") == "1e-3"  # PyYAML's own loader is left as it is
