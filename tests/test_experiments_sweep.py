"""Sweep files: grid/zip/seed expansion, templates and labels, validation before anything runs, `sweep plan`."""

import itertools
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.config import ConfigError
from cnnlab.experiments import Sweep

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps"
cli = CliRunner()


def write_sweep(tmp_path: Path, spec: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


BASE = {"model": {"name": "tiny_cnn"}, "data": {"name": "digits", "subset": 64}, "train": {"epochs": 1}}


def test_grid_zip_and_seeds_expand_to_the_cartesian_product(tmp_path):
    spec = {
        "name": "expand",
        "base": BASE,
        "grid": {
            "optim.lr": [0.1, 0.01, 0.001],
            "bn": {"key": "model.options.batchnorm", "values": {"bn": True, "no_bn": False}},
        },
        "zip": {"train.batch_size": [16, 32], "train.epochs": [1, 2]},
        "seeds": [3, 4],
        "run_name": "{model}_{bn}_lr{lr}_bs{batch_size}_e{epochs}_seed{seed}",
    }
    sweep = Sweep.load(write_sweep(tmp_path, spec), root=tmp_path / "runs")
    runs = sweep.runs()
    expected = [(seed, lr, bn, bs_ep) for seed in (3, 4)
                for lr, bn, bs_ep in itertools.product((0.1, 0.01, 0.001), (True, False), ((16, 1), (32, 2)))]
    got = [(r.seed, r.config.optim.lr, r.config.model.options["batchnorm"], (r.config.train.batch_size, r.config.train.epochs))
           for r in runs]
    assert got == expected  # seed-major order, factors in file order
    assert [r.index for r in runs] == list(range(1, 25))
    assert runs[0].name == "tiny_cnn_bn_lr0.1_bs16_e1_seed3"
    assert runs[0].config.name == runs[0].name and runs[0].config.seed == 3
    assert runs[0].labels == {"optim.lr": 0.1, "bn": "bn", "train.batch_size": 16, "train.epochs": 1}
    assert runs[0].factors["bn"] is True
    assert runs[0].overrides == {"optim.lr": 0.1, "model.options.batchnorm": True, "train.batch_size": 16,
                                 "train.epochs": 1, "seed": 3}
    assert len({r.run_dir for r in runs}) == 24
    assert all(r.status == "pending" for r in runs)
    assert [r.index for r in sweep.select("2-4,24")] == [2, 3, 4, 24]


def test_layout_dotted_fields_format_spec_and_default_name(tmp_path):
    spec = {"base": BASE, "grid": {"data.resolution": [8, 12]}, "seeds": 2,
            "layout": "{family}/{model}/{resolution}", "run_name": "r{index:03d}_m{optim.momentum}"}
    sweep = Sweep.load(write_sweep(tmp_path, spec), root=tmp_path / "runs")
    r = sweep.run(3)
    assert r.run_dir == tmp_path / "runs" / "small_cnn" / "tiny_cnn" / "8" / "r003_m0.9"
    assert sweep.name == "s"  # file stem when the sweep has no name
    default = Sweep.load(write_sweep(tmp_path, {"base": BASE, "grid": {"data.resolution": [8, 12]}, "seeds": 2}, "d.yaml"))
    assert [r.name for r in default.runs()] == ["8_seed0", "12_seed0", "8_seed1", "12_seed1"]
    assert default.root == Path("runs") / "d"


def test_exponent_floats_are_numbers(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text("base: {model: {name: tiny_cnn}}\ngrid:\n  optim.lr: [1e-3, 5.0e-2]\n"
                    "  wd: {key: optim.weight_decay, values: {hi: 5e-4, lo: 0}}\n")
    runs = Sweep.load(path).runs()
    assert runs[0].factors == {"optim.lr": 0.001, "wd": 0.0005} and runs[0].name == "0.001_hi"
    assert runs[0].config.optim.lr == 0.001


def test_set_overrides_apply_to_every_run_but_not_to_factors(tmp_path):
    path = write_sweep(tmp_path, {"base": BASE, "grid": {"optim.lr": [0.1, 0.2]}})
    sweep = Sweep.load(path, overrides=["train.epochs=3", "optim.momentum=0.5"])
    assert {(r.config.train.epochs, r.config.optim.momentum) for r in sweep.runs()} == {(3, 0.5)}
    with pytest.raises(ConfigError, match="optim.lr.*sweep factor"):
        Sweep.load(path, overrides=["optim.lr=0.3"])


@pytest.mark.parametrize("spec, match", [
    ({"grid": {"optim.wieght_decay": [0.1]}}, r"optim\.wieght_decay: unknown key; allowed here: .*weight_decay"),
    ({"grid": {"optim.lr": [0.1, -1.0]}}, r"run 2 .*optim\.lr"),
    ({"grid": {"model.name": ["tiny_cnn", "resnet_nope"]}}, r"run 2 .*model\.name.*resnet_nope"),
    ({"grid": {"model.options.widthz": [3]}}, r"model\.options.*widthz"),
    ({"grid": {"data.name": ["digitz"]}}, r"data\.name: unknown dataset 'digitz'"),
    ({"grdi": {"optim.lr": [0.1]}}, r"unknown key 'grdi'; allowed: .*grid"),
    ({"zip": {"optim.lr": [0.1, 0.2], "train.epochs": [1]}}, r"zip\[0\] lists must have equal lengths"),
    ({"grid": {"optim.lr": [0.1, 0.2]}, "run_name": "x_{nope}"}, r"run_name: unknown field \{nope\}"),
    ({"grid": {"optim.lr": [0.1, 0.2]}, "run_name": "same"}, r"runs 1 and 2 both map to .*optim\.lr"),
    ({"grid": {"seed": [1, 2]}}, r"seeds:"),
    ({"grid": {"optim.lr": []}}, r"grid\.optim\.lr: expected a non-empty list"),
    ({"grid": {"lr": {"key": "optim.lr", "vals": [1]}}}, r"grid\.lr: a named factor takes exactly 'key' and 'values', got extra \['vals'\]"),
    ({"grid": {"a": {"key": "optim.lr", "values": [0.1]}, "b": {"key": "optim", "values": [{}]}}}, r"set the same config key"),
    ({"seeds": [1, 1]}, r"seeds has duplicates"),
    ({"executors": {"sge": {"optoins": []}}}, r"executors\.sge\.optoins: unknown key"),
    ({"layout": "../escape"}, r"layout must be a relative path"),
])
def test_bad_sweeps_name_the_bad_key_before_anything_runs(tmp_path, spec, match):
    path = write_sweep(tmp_path, {"base": BASE, **spec})
    with pytest.raises(ConfigError, match=match):
        Sweep.load(path, root=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_cli_plan_json_and_clear_errors(tmp_path):
    path = write_sweep(tmp_path, {"name": "p", "base": BASE, "grid": {"optim.lr": [0.1, 0.2]}, "seeds": [0, 1]})
    res = cli.invoke(app, ["sweep", "plan", str(path), "--json", "--root", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["total"] == 4
    assert [(r["index"], r["seed"], r["overrides"]["optim.lr"]) for r in plan["runs"]] == [(1, 0, 0.1), (2, 0, 0.2), (3, 1, 0.1), (4, 1, 0.2)]
    res = cli.invoke(app, ["sweep", "plan", str(path)])
    assert res.exit_code == 0 and "4 runs" in res.output
    bad = write_sweep(tmp_path, {"base": BASE, "grid": {"optim.lrr": [0.1]}}, "bad.yaml")
    res = cli.invoke(app, ["sweep", "plan", str(bad)])
    assert res.exit_code == 2 and "optim.lrr" in res.output and "Traceback" not in res.output
    res = cli.invoke(app, ["sweep", "plan", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in res.output


ABLATIONS = {"ablation_resnet32.yaml": "resnet32", "ablation_resnet44.yaml": "resnet44",
             "ablation_resnet56.yaml": "resnet56", "ablation_vgg13.yaml": "vgg13_cifar"}


@pytest.mark.parametrize("fname, model", sorted(ABLATIONS.items()))
def test_shipped_ablation_sweeps(fname, model):
    sweep = Sweep.load(SWEEPS / fname)
    runs = sweep.runs()
    assert len(runs) == 64
    combos = {(r.config.optim.weight_decay, r.config.model.options["batchnorm"], r.config.data.crop_padding,
               r.config.data.flip, r.config.train.batch_size, r.seed) for r in runs}
    assert combos == set(itertools.product((5e-4, 0.0), (True, False), (4, 0), ("random", "none"), (8, 128), (0, 1)))
    c = runs[0].config
    assert (c.model.name, c.data.name, c.optim.name, c.optim.lr, c.schedule.name, c.train.epochs, c.train.clean_train_eval) == \
        (model, "cifar10", "adamw", 1e-3, "cosine", 500, True)
    assert runs[0].name == f"{model}_wd_bn_crop_flip_bs8_seed0"
    assert Sweep.load(SWEEPS / fname, overrides=["train.epochs=20"]).run(64).config.train.epochs == 20


def test_shipped_resolution_sweep():
    sweep = Sweep.load(SWEEPS / "resolution.yaml")
    models = ["vgg11", "vgg13", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "mobilenet_v2_075",
              "mobilenet_v3_small", "mobilenet_v3_large", "simple_cnn", "tiny_cnn"]
    assert {(r.config.model.name, r.config.data.resolution) for r in sweep.runs()} == \
        set(itertools.product(models, (224, 256, 320, 384, 512)))
    c = sweep.run(1).config
    assert (c.optim.name, c.optim.lr, c.train.batch_size, c.train.epochs, c.data.name) == ("adamw", 1e-3, 64, 50, "cifar10")
    assert c.callbacks.checkpoint.top_k == 3 and c.callbacks.early_stopping is not None
    assert sweep.run(1).run_dir == Path("runs/resolution/vgg/vgg11/224/seed0")


def test_tiny_sweeps_mirror_the_full_ones():
    tiny, full = Sweep.load(SWEEPS / "tiny_ablation.yaml"), Sweep.load(SWEEPS / "ablation_resnet32.yaml")
    assert [(f.name, f.key, f.labels) for f in tiny.factors] == [(f.name, f.key, f.labels) for f in full.factors]
    assert len(tiny) == len(full) == 64
    res = Sweep.load(SWEEPS / "tiny_resolution.yaml")
    assert len(res) == 6 and res.run(1).config.callbacks.checkpoint.top_k == 3
