"""Models from the user's own code: import paths and entry points in every command, ``weights=``
strict loading, option checks against the factory's signature, ``cnnlab models info`` options."""

import json
import sys

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models import UnknownModelError, create_model, get_model_info, get_target_layer_for_gradcam, model_info
from cnnlab.models.compat import create_deterministic_model as seed_create_deterministic_model
from cnnlab.models.registry import get_entry, meta_device

runner = CliRunner()
MODULE = "cnnlab_test_user_nets"

USER_CODE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes=10, in_ch=1, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_ch, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU())
        self.body = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.GELU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def gradcam_layer(self):
        return self.body

    def forward(self, x):
        return self.fc(self.pool(self.body(self.features(x))).flatten(1))


def make_net(num_classes):  # as the seeds' creators: only num_classes
    return Net(num_classes)


def make_configurable(num_classes, in_channels=3, width: int = 8, batchnorm: bool = True):
    return Net(num_classes, in_channels, width)


NOT_A_FACTORY = 3
'''


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_code")
    (root / f"{MODULE}.py").write_text(USER_CODE)
    dist = root / "cnnlab_test_user_nets-0.1.dist-info"  # an installed package registering an entry point
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cnnlab-test-user-nets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[cnnlab.models]\nuser_entry_net = {MODULE}:make_net\n")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    sys.modules.pop(MODULE, None)


def test_import_path_factory_taking_only_num_classes(user_module):
    m = create_model(f"{MODULE}:make_net", num_classes=7)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 7)
    assert get_entry(f"{MODULE}:make_net").in_channels is None  # it takes no in_channels: none is passed
    c = create_model(f"{MODULE}:make_configurable", num_classes=3, in_channels=2, width=4)
    assert c.features[0].in_channels == 2 and c.features[0].out_channels == 4


def test_entry_point_names_resolve(user_module):
    m = create_model("user_entry_net", num_classes=5)
    assert m(torch.zeros(1, 1, 8, 8)).shape == (1, 5)


def test_bad_import_paths_are_clear(user_module):
    for name, msg in [(f"{MODULE}:missing", "has no attribute 'missing'"), ("no_such_pkg_xyz.mod:f", "cannot import module"),
                      (f"{MODULE}:NOT_A_FACTORY", "is not callable"), (":f", "package.module:factory")]:
        with pytest.raises(UnknownModelError, match=msg):
            create_model(name)


def test_user_factory_options_are_type_checked(user_module):
    with pytest.raises(ValueError, match="option 'batchnorm' must be true or false, got 'maybe'"):
        create_model(f"{MODULE}:make_configurable", batchnorm="maybe")
    with pytest.raises(ValueError, match="does not accept option.*'depth'"):
        create_model(f"{MODULE}:make_configurable", depth=3)


def _config(tmp_path, name, **model):
    cfg = {"name": "user", "seed": 0, "model": {"name": name, **model},
           "data": {"name": "digits", "subset": 64}, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
           "train": {"epochs": 1, "batch_size": 32, "device": "cpu"}}
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_explain_and_mi_with_a_user_model(user_module, tmp_path):
    cfg, out = _config(tmp_path, f"{MODULE}:make_net"), tmp_path / "run"
    res = runner.invoke(app, ["train", str(cfg), "--out", str(out), "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert (out / "result.json").exists()
    res = runner.invoke(app, ["explain", str(out), "--images", "0,1", "--methods", "gradcam,saliency", "--no-metrics", "--json"])
    assert res.exit_code == 0, res.output
    assert set(json.loads(res.stdout)["methods"]) == {"gradcam", "saliency"}
    res = runner.invoke(app, ["mi", str(out), "--keep", "0.5", "--masks", "2", "--examples", "64", "--bootstrap", "20",
                              "--out", str(tmp_path / "mi"), "--json"])
    assert res.exit_code == 0, res.output
    assert (out / "analysis" / "mi.json").exists()


def test_bad_model_options_in_a_run_config_name_the_key(user_module, tmp_path):
    cfg = _config(tmp_path, "tiny_cnn")
    for override, msg in [("model.options.batchnorm=maybe", "batchnorm"), ("model.options.widths=[-4]", "widths")]:
        res = runner.invoke(app, ["train", str(cfg), override, "--out", str(tmp_path / "bad"), "--no-progress"])
        assert res.exit_code != 0 and msg in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "bad" / "result.json").exists()


# --------------------------------------------------------------------------------------------- weights


def test_weights_load_strictly_and_mismatches_name_the_keys(tmp_path):
    torch.manual_seed(0)
    src = create_model("resnet20", num_classes=4).eval()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = create_model("resnet20", num_classes=4, weights=path).eval()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"shape mismatches: classifier.weight"):
        create_model("resnet20", num_classes=10, weights=path)
    with pytest.raises(ValueError, match=r"missing keys: .*layer1.0.conv1.bias.*unexpected keys: .*layer1.0.bn1.weight"):
        create_model("resnet20", num_classes=4, batchnorm=False, weights=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("resnet20", weights=tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch state_dict"):
        create_model("resnet20", weights=tmp_path / "junk.pt")


def test_run_config_weights_start_the_run_from_them(tmp_path):
    from cnnlab.engine.config import build_config
    from cnnlab.engine.setup import build_run

    torch.manual_seed(1)
    src = create_model("tiny_cnn", num_classes=10, in_channels=1)
    path = tmp_path / "start.pt"
    torch.save({"state_dict": src.state_dict()}, path)  # a wrapped state_dict is accepted too
    cfg = build_config({"model": {"name": "tiny_cnn", "weights": str(path)}, "data": {"name": "digits", "subset": 32},
                        "train": {"device": "cpu", "epochs": 1, "batch_size": 16}})
    parts = build_run(cfg)
    for k, v in src.state_dict().items():
        assert torch.equal(parts.model.state_dict()[k], v), k
    cfg_path = _config(tmp_path, "resnet20", weights=str(path))
    res = runner.invoke(app, ["train", str(cfg_path), "--out", str(tmp_path / "r"), "--no-progress"])
    assert res.exit_code != 0 and "model.weights" in res.output and "missing keys" in res.output, res.output
    cfg_path = _config(tmp_path, "tiny_cnn", weights=str(tmp_path / "absent.pt"))
    res = runner.invoke(app, ["train", str(cfg_path), "--out", str(tmp_path / "r2"), "--no-progress"])
    assert res.exit_code != 0 and "model.weights" in res.output and "Traceback" not in res.output


# ---------------------------------------------------------------------------------- seeds' helpers, CLI


def test_seed_helpers():
    a = seed_create_deterministic_model(master_seed=0, creator_func="construct_rn9", instance_id="m", num_classes=10)
    b = seed_create_deterministic_model(master_seed=0, creator_func="resnet9", instance_id="m", num_classes=10)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = seed_create_deterministic_model(master_seed=0, creator_func=lambda num_classes: nn.Linear(3, num_classes),
                                        instance_id="x", num_classes=4)
    assert c.out_features == 4
    info = get_model_info(a)
    assert info["total_params"] == 2_274_880 and info["params_millions"] == pytest.approx(2.27488)
    assert get_target_layer_for_gradcam(a) is a[6]
    with meta_device():
        assert model_info(create_model("resnet18_224")).total_params == model_info(create_model("resnet18")).total_params
    assert get_entry("resnet18_224").resolution == 224 and get_entry("resnet18").resolution is None
    assert get_entry("mobilenet_v2_small_224").defaults["width_mult"] == 0.75


def test_implied_resolution_serves_the_data_at_it():
    from cnnlab.engine.config import build_config
    from cnnlab.engine.setup import build_run

    parts = build_run(build_config({"model": {"name": "tiny_cnn_224"}, "data": {"name": "digits", "subset": 8},
                                    "train": {"device": "cpu", "epochs": 1, "batch_size": 8}}))
    x = parts.eval_images(parts.dataset.test.images, 0, 2)
    assert x.shape[-2:] == (224, 224)


def test_models_info_lists_options_and_refuses_bad_sizes(user_module):
    res = runner.invoke(app, ["models", "info", "resnet20", "--json"])
    assert res.exit_code == 0, res.output
    opts = json.loads(res.stdout)["options"]
    assert opts == {"batchnorm": {"type": "bool", "default": True}, "dropout": {"type": "float", "default": 0.0},
                    "shortcut": {"type": "str", "default": "B"}}
    for args, msg in [(["--resolution", "0"], "--resolution must be >= 1"), (["--num-classes", "0"], "--num-classes must be >= 1")]:
        res = runner.invoke(app, ["models", "info", "resnet20", *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["models", "info", "airbench94_adapted", "--resolution", "64"])
    assert res.exit_code == 2 and "above the maximum 48" in res.output
    res = runner.invoke(app, ["models", "info", f"{MODULE}:make_configurable", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["options"]["width"] == {"type": "int", "default": 8}
    res = runner.invoke(app, ["models", "list", "construct_*", "--aliases", "--json"])
    assert [r["name"] for r in json.loads(res.stdout)] == ["construct_resnet9", "construct_resnet9_paper", "construct_rn9"]


def test_profile_and_sweep_take_a_user_model(user_module, tmp_path, monkeypatch):
    import os

    from cnnlab.experiments.sweep import Sweep

    # sweep workers may be fresh processes: the user's code is found as users ship it, on PYTHONPATH
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(user_module), os.environ.get("PYTHONPATH")) if p))
    res = runner.invoke(app, ["profile", "--models", f"{MODULE}:make_configurable", "--resolutions", "8",
                              "--in-channels", "1", "--min-run-time", "0.01", "--out", str(tmp_path / "prof"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows"][0]["model"] == f"{MODULE}:make_configurable"
    res = runner.invoke(app, ["profile", "--models", "no_such_model_xyz", "--out", str(tmp_path / "p2")])
    assert res.exit_code == 2 and "unknown model" in res.output and "Traceback" not in res.output
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "user_sweep", "base": {
        "model": {"name": f"{MODULE}:make_configurable", "options": {"width": 4}}, "data": {"name": "digits", "subset": 32},
        "train": {"epochs": 1, "batch_size": 16, "device": "cpu"}},
        "grid": {"w": {"key": "model.options.width", "values": {"w4": 4, "w6": 6}}}}))
    runs = Sweep.load(sweep, root=tmp_path / "runs").runs()  # validated: the user factory is built on meta
    assert [r.config.model.options["width"] for r in runs] == [4, 6]
    res = runner.invoke(app, ["sweep", "run", str(sweep), "--root", str(tmp_path / "runs"), "--threads-per-worker", "1",
                              "--indices", "1"])
    assert res.exit_code == 0, res.output
    assert (runs[0].run_dir / "result.json").exists()
