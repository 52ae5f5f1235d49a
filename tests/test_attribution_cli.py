"""`cnnlab magic`, `cnnlab lds` and `cnnlab runs` end to end on a tiny digits run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()


def flat(res) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(res.output.split())

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
    "data": {"name": "digits", "subset": 48},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "schedule": {"name": "onecycle"},
    "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
}


@pytest.fixture(scope="module")
def magic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "runs" / "tiny"
    res = runner.invoke(app, ["magic", str(cfg), "--targets", "0-3", "--out", str(out), "--checkpointing", "sqrt",
                              "--plot-targets", "2", "--json"])
    assert res.exit_code == 0, res.output
    return cfg, out, json.loads(res.stdout)


def test_magic_writes_scores_metadata_and_plots(magic_run):
    cfg, out, summary = magic_run
    # trained by this command: the replay started from the run's own states, so there is nothing to compare
    assert summary["reused_scores"] is False and summary["matches_trained_run"] is None
    assert summary["targets"] == [0, 1, 2, 3] and summary["num_train"] == 48
    blob = torch.load(out / "scores.pt", weights_only=True)
    assert blob["scores"].shape == (48, 4) and blob["train_indices"].tolist() == list(range(48))
    np.testing.assert_array_equal(np.load(out / "scores.npy"), blob["scores"].numpy())
    meta = json.loads((out / "magic.json").read_text())
    assert meta["measurement"] == "loss" and meta["target_indices"] == [0, 1, 2, 3]
    assert meta["stats"]["checkpointing"] == "sqrt" and meta["stats"]["reverse_steps"] == 6
    # the run was trained by this command, so its states seeded the replay (sqrt: chunks of ceil(sqrt 6) = 3 steps, starts 0 and 3, + the final state)
    assert meta["stats"]["reused_states"] == 3 and meta["stats"]["forward_steps"] == meta["stats"]["recomputed_steps"]
    assert (out / "plots" / "proponents.png").stat().st_size > 1000
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["bn_stats"] == "explicit"
    # a second call reuses the run and the scores
    res = runner.invoke(app, ["magic", str(cfg), "--targets", "0-3", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["reused_scores"] is True
    # recomputed on the run trained earlier: the replay runs its own first pass and reproduces the checkpoint
    res = runner.invoke(app, ["magic", str(cfg), "--targets", "0-3", "--out", str(out), "--checkpointing", "sqrt",
                              "--force", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["matches_trained_run"] is True and again["stats"]["reused_states"] == 0
    assert torch.equal(torch.load(out / "scores.pt", weights_only=True)["scores"], blob["scores"])


def test_lds_validates_magic_tracin_and_external_scores(magic_run, tmp_path):
    _, out, _ = magic_run
    scores = torch.load(out / "scores.pt", weights_only=True)["scores"]
    ext = tmp_path / "mine.npy"
    np.save(ext, scores.numpy())
    args = ["lds", str(out), "--drop", "0.25", "--num-models", "5", "--baselines", "tracin", "--engine", "step",
            "--scores", str(ext), "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    methods = summary["methods"]
    assert set(methods) == {"magic", "tracin", "external:mine"}
    assert methods["external:mine"]["spearman_per_target"] == methods["magic"]["spearman_per_target"]
    assert methods["magic"]["models"] == 5 and len(methods["magic"]["spearman_per_target"]) == 4
    regime = out / "lds" / "drop0.25-m5-s0"
    assert (regime / "scatter_magic.png").is_file() and len(list((regime / "models").glob("*.json"))) == 5
    stamp = (regime / "models" / "00000.json").stat().st_mtime_ns
    res = runner.invoke(app, args)  # finished: nothing retrained
    assert res.exit_code == 0 and (regime / "models" / "00000.json").stat().st_mtime_ns == stamp
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((47, 4)))
    res = runner.invoke(app, ["lds", str(out), "--drop", "0.25", "--num-models", "5", "--baselines", "none", "--scores", str(bad)])
    assert res.exit_code == 2 and "shape (47, 4), expected (48, 4)" in flat(res) and "Traceback" not in res.output

    res = runner.invoke(app, ["runs", "info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["magic"]["targets"] == 4 and info["lds"][0]["drop"] == 0.25 and info["status"] == "completed"
    res = runner.invoke(app, ["runs", "list", str(out.parent), "--json"])
    assert res.exit_code == 0 and [r["run"] for r in json.loads(res.stdout)] == [str(out)]
    res = runner.invoke(app, ["runs", "clean", str(out)])  # default: the trained weights stay
    assert res.exit_code == 0 and "kept the trained weights" in flat(res) and (out / "checkpoints" / "last.pt").is_file()
    res = runner.invoke(app, ["runs", "clean", str(out), "--what", "checkpoints"])
    assert res.exit_code == 0 and "checkpoints" in res.output
    assert not (out / "checkpoints").exists() and (out / "scores.pt").is_file() and (regime / "summary.json").is_file()


def test_clear_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "train": {**TINY["train"], "precision": "bf16"}}))
    res = runner.invoke(app, ["magic", str(cfg), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "train.precision" in flat(res) and "Traceback" not in res.output
    res = runner.invoke(app, ["magic", str(cfg), "--measure", "accuracy"])
    assert res.exit_code == 2 and "--measure must be one of" in flat(res)
    res = runner.invoke(app, ["magic", str(cfg), "--compile", "--compile-chunk", "0"])
    assert res.exit_code == 2 and "--compile-chunk must be >= 1" in flat(res)
    cfg.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(app, ["magic", str(cfg), "--targets", "0-9999", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "targets (test split)" in flat(res) and "is outside [0," in flat(res)
    res = runner.invoke(app, ["lds", str(tmp_path)])
    assert res.exit_code == 2 and "no MAGIC scores" in flat(res)
    res = runner.invoke(app, ["runs", "info", str(tmp_path)])
    assert res.exit_code == 2 and "not a run directory" in flat(res)


def test_magic_compile_flag_reaches_the_replay(tmp_path, monkeypatch):
    """--compile builds the compiled reverse step (here made to fail, so the run is fast): the summary
    reports the eager fallback and why."""
    from cnnlab.attribution import compiled as compiled_mod

    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("inductor unavailable")
        return call

    monkeypatch.setattr(compiled_mod.torch, "compile", broken)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    res = runner.invoke(app, ["magic", str(cfg), "--targets", "0-1", "--out", str(tmp_path / "r"), "--compile",
                              "--plot-targets", "0", "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.stdout)["stats"]
    assert stats["vjp_path"] == "looped (compiling failed: RuntimeError: inductor unavailable)"
