"""``cnnlab models list | info`` over the whole zoo."""

import json

from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models import list_models

runner = CliRunner()


def test_list_json_covers_the_zoo_with_exact_counts():
    res = runner.invoke(app, ["models", "list", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert sorted(rows) == list_models()
    assert rows["resnet9"]["params"] == 2_274_880 and rows["resnet9"]["family"] == "resnet9"
    assert rows["resnet4stage"]["params"] == 4_902_090  # built with its default single input channel
    assert rows["airbench94"]["params"] == 1_972_792
    assert rows["resnet18"]["params"] == 11_689_512 - 990 * 513  # 10-class head instead of 1000
    assert all(r["description"] for r in rows.values())


def test_list_pattern_filters():
    res = runner.invoke(app, ["models", "list", "mobilenet_v3*", "--json"])
    assert [r["name"] for r in json.loads(res.stdout)] == ["mobilenet_v3_large", "mobilenet_v3_small"]


def test_info_uses_the_models_default_channels_and_meta_build():
    res = runner.invoke(app, ["models", "info", "resnet4stage", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["in_channels"] == 1 and info["total_params"] == 4_902_090 and info["output_shape"] == [1, 10]
    res = runner.invoke(app, ["models", "info", "vgg16", "--num-classes", "1000", "--resolution", "224", "--json"])
    info = json.loads(res.stdout)
    assert info["total_params"] == 138_357_544 and info["output_shape"] == [1, 1000]
    assert info["size_mb"] > 500  # sizes are still those of the real weights


def test_info_airbench_trainable_and_min_resolution():
    info = json.loads(runner.invoke(app, ["models", "info", "airbench94", "--json"]).stdout)
    assert info["trainable_params"] == 1_972_792 - 288 - 1152
    res = runner.invoke(app, ["models", "info", "airbench94", "--resolution", "8"])
    assert res.exit_code == 2 and "below the minimum 9" in res.output and "Traceback" not in res.output
