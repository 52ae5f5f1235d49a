"""`cnnlab population train | es`: configs, run directories, resume, clear errors."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.population.config import ESRunConfig, PopulationRunConfig, build, load
from cnnlab.population.es_run import ESRun, run_es
from cnnlab.population.run import load_population

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
runner = CliRunner()

# A few generations of a very small CNN on digits: enough to exercise every path in a second or two.
ES_SMALL = ["es.generations=4", "es.population=8", "es.batch_size=32", "es.eval_every=2", "es.checkpoint_every=2",
            "es.eval_batch_size=400", "es.bn_calibration_batches=2", "model.options.widths=[4,8]"]


@pytest.mark.parametrize("name", ["es_digits.yaml", "es_emnist_simple_resnet.yaml"])
def test_shipped_es_configs_validate(name):
    from cnnlab.engine.setup import validate_names
    from cnnlab.population.es_run import _run_config

    validate_names(_run_config(load(ESRunConfig, CONFIGS / name)))


@pytest.mark.parametrize("name", ["population_digits.yaml", "population_mnist_subsets.yaml"])
def test_shipped_population_configs_validate(name):
    from cnnlab.engine.config import RunConfig
    from cnnlab.engine.setup import validate_names

    cfg = load(PopulationRunConfig, CONFIGS / name)
    validate_names(RunConfig.model_validate(cfg.model_dump(exclude={"population"})))


def test_es_cli_writes_run_directory(tmp_path):
    out = tmp_path / "es"
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), *ES_SMALL, "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["generations"] == 4 and result["population"] == 8
    assert [h["generation"] for h in result["history"]] == [1, 2, 3, 4]
    assert "test_acc" in result["history"][1] and "test_acc" not in result["history"][0]
    for f in ("result.json", "config.yaml", "metrics.jsonl", "fitness.png", "model.pt", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    assert (out / "fitness.png").read_bytes()[:4] == b"\x89PNG"
    # the saved mean is an ordinary state_dict whose test accuracy is the reported one
    from cnnlab.data import load_dataset
    from cnnlab.models import create_model

    saved = torch.load(out / "model.pt", weights_only=True)
    model = create_model("tiny_cnn", num_classes=10, in_channels=1, widths=[4, 8])
    model.load_state_dict(saved["state_dict"])
    ds = load_dataset("digits")
    from cnnlab.data.augment import normalize

    with torch.no_grad():
        x = normalize(ds.test.images, ds.mean, ds.std)
        acc = float((model.eval()(x).argmax(1) == ds.test.labels).float().mean())
    assert acc == pytest.approx(result["final"]["test_acc"], abs=1e-6)
    # an existing run is not overwritten
    again = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), *ES_SMALL, "--out", str(out)])
    assert again.exit_code == 2 and "--resume" in _text(again)


def test_es_resume_continues_bitwise(tmp_path):
    cfg6 = load(ESRunConfig, CONFIGS / "es_digits.yaml", [*ES_SMALL, "es.generations=6", "es.checkpoint_every=3"])
    straight = ESRun(cfg6, tmp_path / "straight")
    straight.run(progress=False)
    cfg3 = load(ESRunConfig, CONFIGS / "es_digits.yaml", [*ES_SMALL, "es.generations=3", "es.checkpoint_every=3"])
    run_es(cfg3, tmp_path / "resumed", progress=False)
    resumed = ESRun(cfg6, tmp_path / "resumed")
    result = resumed.run(resume=True, progress=False)
    assert torch.equal(resumed.strategy.mean, straight.strategy.mean)
    assert resumed.strategy.opt_state["mean"]["exp_avg"].equal(straight.strategy.opt_state["mean"]["exp_avg"])
    assert [h["fitness_mean"] for h in result["history"]] == [h["fitness_mean"] for h in straight.history]
    # a resumed run may not change what shapes the trajectory
    bad = load(ESRunConfig, CONFIGS / "es_digits.yaml", [*ES_SMALL, "es.generations=8", "es.sigma=0.1"])
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), *ES_SMALL, "es.generations=8",
                              "es.sigma=0.1", "--out", str(tmp_path / "resumed"), "--resume"])
    assert res.exit_code == 2 and "es.sigma" in _text(res)
    assert bad.es.sigma == 0.1


def test_es_improves_the_mean_on_digits():
    cfg = load(ESRunConfig, CONFIGS / "es_digits.yaml", ["es.generations=30", "es.population=16", "es.batch_size=64",
                                                        "es.eval_every=30", "es.lr=0.05"])
    result = ESRun(cfg).run(progress=False)
    h = result["history"]
    first = sum(x["mean_fitness"] for x in h[:5]) / 5
    last = sum(x["mean_fitness"] for x in h[-5:]) / 5
    assert last > first + 0.15, (first, last)  # cross-entropy down by > 0.15 nats
    assert result["final"]["test_acc"] > 0.2  # chance is 0.1


def test_population_train_cli_and_load(tmp_path):
    out = tmp_path / "pop"
    res = runner.invoke(app, ["population", "train", str(CONFIGS / "population_digits.yaml"), "population.size=3",
                              "population.lr=[0.02,0.05,0.1]", "train.epochs=1", "data.subset=192",
                              "population.backend=loop", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["backend"] == "loop" and result["backend_choice"] is None
    assert [m["lr"] for m in result["members"]] == [0.02, 0.05, 0.1]
    assert all(m["examples_kept"] == round(0.8 * 192) for m in result["members"])
    for f in ("result.json", "members.pt", "metrics.jsonl", "accuracy.png", "config.yaml"):
        assert (out / f).is_file(), f
    pop, cfg, saved = load_population(out)
    assert len(pop) == 3 and cfg.population.size == 3 and saved["size"] == 3
    # independent check: each unstacked member's accuracy on the test split is the reported one
    from cnnlab.data import load_dataset
    from cnnlab.data.augment import normalize

    ds = load_dataset("digits")
    x = normalize(ds.test.images, ds.mean, ds.std)
    for m, member in zip(result["members"], pop.unstack()):
        with torch.no_grad():
            acc = int((member(x).argmax(1) == ds.test.labels).sum()) / len(ds.test.labels)
        assert acc == pytest.approx(m["test_acc"], abs=1e-12)


def _text(res) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def test_config_errors_are_clear(tmp_path):
    res = runner.invoke(app, ["population", "train", str(CONFIGS / "population_digits.yaml"), "population.sizee=3"])
    assert res.exit_code == 2 and "population.sizee" in _text(res) and "allowed here" in _text(res)
    res = runner.invoke(app, ["population", "train", str(CONFIGS / "population_digits.yaml"), "population.size=3"])
    assert res.exit_code == 2 and "one per member (size = 3)" in _text(res)
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), "es.population=7"])
    assert res.exit_code == 2 and "even with antithetic" in _text(res) and "Traceback" not in _text(res)
    res = runner.invoke(app, ["population", "es", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "does not exist" in _text(res)
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), "--resume"])
    assert res.exit_code == 2 and "--resume needs --out" in _text(res)
    with pytest.raises(Exception, match="train.ema"):
        build(PopulationRunConfig, {"train": {"ema": {"decay": 0.9}}})


def test_population_train_resume_flags(tmp_path):
    out = tmp_path / "pop"
    args = ["population", "train", str(CONFIGS / "population_digits.yaml"), "population.size=2",
            "population.lr=[0.02,0.05]", "train.epochs=2", "data.subset=128", "population.backend=loop", "--out", str(out)]
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    first = json.loads(res.stdout)
    ckpt = torch.load(out / "checkpoints" / "members_0-1_of_2.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "already holds a result" in _text(res)
    res = runner.invoke(app, [*args, "--resume", "--json"])  # a finished run: its result as it is
    assert res.exit_code == 0 and json.loads(res.stdout) == first
    (out / "result.json").unlink()  # as if killed after the last checkpoint
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "use --resume" in _text(res)
    res = runner.invoke(app, [*args, "--resume", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert [m["test_acc"] for m in again["members"]] == [m["test_acc"] for m in first["members"]]
    res = runner.invoke(app, [*args[:-2], "train.epochs=3", "--out", str(out), "--resume"])
    assert res.exit_code == 2 and "differs from this one at train.epochs (2 -> 3)" in _text(res)
    res = runner.invoke(app, [*args[:-2], "--resume"])
    assert res.exit_code == 2 and "--resume needs --out" in _text(res)
    (out / "result.json").unlink()
    (out / "checkpoints" / "members_0-1_of_2.pt").write_bytes(b"truncated")
    res = runner.invoke(app, [*args, "--resume"])
    assert res.exit_code == 2 and "cannot read population checkpoint" in _text(res) and "Traceback" not in _text(res)
