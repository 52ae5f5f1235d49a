import json

from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()


def test_models_list_json():
    res = runner.invoke(app, ["models", "list", "tiny*", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows == [{"name": "tiny_cnn", "family": "small_cnn", "params": 24346, "description": rows[0]["description"]}]


def test_models_info_json_output_shape():
    res = runner.invoke(app, ["models", "info", "tiny_cnn", "--num-classes", "7", "--in-channels", "1", "--resolution", "28", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["output_shape"] == [1, 7]
    assert info["in_channels"] == 1


def test_models_info_unknown_is_a_clear_error():
    res = runner.invoke(app, ["models", "info", "tiny_cnnn"])
    assert res.exit_code == 2
    assert "Did you mean" in res.output and "Traceback" not in res.output
