"""Loggers and callbacks from configs: CSV and TensorBoard hold the epoch metrics of metrics.jsonl,
curves.png is drawn when there is a curve, and a callback from the user's module is attached by import path."""

import csv
import json
import textwrap

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.config import ConfigError, build_config
from cnnlab.engine.run import train
from cnnlab.utils.io import read_jsonl

runner = CliRunner()
BASE = {"name": "log", "model": {"name": "tiny_cnn", "options": {"widths": [4, 8]}},
        "train": {"epochs": 2, "batch_size": 256, "device": "cpu"}}


def _cfg(**callbacks):
    return build_config({**BASE, "callbacks": callbacks})


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    run = tmp_path_factory.mktemp("logged") / "run"
    train(_cfg(loggers=["csv", "tensorboard"]), run, progress=False)
    return run


def test_csv_rows_are_the_epoch_records(logged_run):
    records = read_jsonl(logged_run / "metrics.jsonl")
    with open(logged_run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) == 2
    for row, rec in zip(rows, records):
        for key in ("epoch", "train_loss", "test_loss", "test_acc"):
            assert float(row[key]) == pytest.approx(rec[key], rel=1e-12)


def test_tensorboard_events_hold_the_epoch_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logged_run / "tb"))
    acc.Reload()
    records = read_jsonl(logged_run / "metrics.jsonl")
    events = acc.Scalars("epoch/test_acc")
    assert [e.step for e in events] == [r["epoch"] for r in records]
    assert [e.value for e in events] == pytest.approx([r["test_acc"] for r in records], rel=1e-6)
    assert len(acc.Scalars("step/train_loss")) >= 2 and "step/lr" in acc.Tags()["scalars"]


def test_curves_png_only_when_there_is_a_curve(logged_run, tmp_path):
    assert (logged_run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    one = tmp_path / "one_epoch"
    train(build_config({**BASE, "train": {**BASE["train"], "epochs": 1}}), one, progress=False)
    assert not (one / "curves.png").exists()  # one point per curve: nothing drawn
    off = tmp_path / "off"
    train(_cfg(curves=False), off, progress=False)
    assert not (off / "curves.png").exists()


def test_a_callback_from_the_users_module_by_import_path(tmp_path, monkeypatch):
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "cbs.py").write_text(textwrap.dedent("""
        import json
        from cnnlab.engine.callbacks import Callback

        class Record(Callback):
            def __init__(self, filename):
                self.filename, self.seen = filename, []

            def on_epoch_end(self, trainer, epoch, metrics):
                self.seen.append([epoch, metrics["test_acc"]])
                (trainer.run_dir / self.filename).write_text(json.dumps(self.seen))

        def not_a_callback():
            return 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    train(_cfg(custom=[{"class_path": "userpkg.cbs:Record", "init_args": {"filename": "seen.json"}}], curves=False),
          run, progress=False)
    seen = json.loads((run / "seen.json").read_text())
    assert [s[1] for s in seen] == pytest.approx([r["test_acc"] for r in read_jsonl(run / "metrics.jsonl")])

    bad = {
        "userpkg.cbs:Nope": "has no attribute",
        "nopkg_xyz.mod:Thing": "cannot import module",
        "userpkg.cbs:not_a_callback": "not a cnnlab.engine.callbacks.Callback",
    }
    for path, needle in bad.items():
        with pytest.raises(ConfigError, match=needle) as e:
            train(_cfg(custom=[{"class_path": path}]), tmp_path / "bad", progress=False)
        assert "callbacks.custom[0].class_path" in str(e.value)
    with pytest.raises(ConfigError, match=r"callbacks.custom\[0\].init_args"):
        train(_cfg(custom=[{"class_path": "userpkg.cbs:Record", "init_args": {"wrong": 1}}]), tmp_path / "bad2", progress=False)
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad2").exists()  # refused before any compute


def test_bad_logger_names_are_config_errors(tmp_path):
    res = runner.invoke(app, ["train", "callbacks.loggers=[wandb]", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "callbacks.loggers" in res.output and "Traceback" not in res.output
