"""MLflow sink against a real local sqlite tracking store: params, per-epoch metrics, result, artifacts, resume."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("mlflow")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")
from mlflow.tracking import MlflowClient  # noqa: E402

from cnnlab.cli import app  # noqa: E402
from cnnlab.engine.callbacks import Callback  # noqa: E402
from cnnlab.experiments import Sweep, run_local, run_one  # noqa: E402
from cnnlab.utils.io import read_jsonl  # noqa: E402

cli = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 512}}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An initialised sqlite tracking store (creating one runs MLflow's schema migrations: seconds), copied per test."""
    path = tmp_path_factory.mktemp("mlflow") / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store_uri(tmp_path, empty_store):
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def sweep_file(tmp_path: Path, epochs: int = 2) -> Path:
    spec = {"name": "tracked", "base": {**BASE, "train": {**BASE["train"], "epochs": epochs}},
            "grid": {"wd": {"key": "optim.weight_decay", "values": {"wd": 5e-4, "no_wd": 0.0}}}, "root": str(tmp_path / "runs")}
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def runs_of(client: MlflowClient, experiment: str = "tracked"):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_sweep_runs_are_logged_to_a_sqlite_store(tmp_path, store_uri):
    uri = store_uri
    sweep = Sweep.load(sweep_file(tmp_path))
    outcomes = run_local(sweep, mlflow_uri=uri)
    assert [o.status for o in outcomes] == ["done", "done"]
    client = MlflowClient(tracking_uri=uri)
    runs = runs_of(client)
    assert set(runs) == {r.name for r in sweep.runs()}
    for run in sweep.runs():
        mr = runs[run.name]
        assert mr.info.status == "FINISHED"
        assert mr.data.params["optim.weight_decay"] == str(run.config.optim.weight_decay)
        assert mr.data.params["model.name"] == "tiny_cnn" and mr.data.params["seed"] == "0"
        assert mr.data.tags["factor.wd"] == run.labels["wd"] and mr.data.tags["cnnlab.status"] == "completed"
        # per-epoch metrics equal the run's own metrics log
        logged = read_jsonl(run.run_dir / "metrics.jsonl")
        hist = client.get_metric_history(mr.info.run_id, "test_acc")
        assert [(m.step, m.value) for m in hist] == [(e["epoch"], pytest.approx(e["test_acc"])) for e in logged]
        assert mr.data.metrics["epochs_completed"] == 2
        assert mr.data.metrics["time_train_s"] == pytest.approx(run.result()["timings"]["train_s"])
        artifacts = {a.path for a in client.list_artifacts(mr.info.run_id)}
        assert {"result.json", "config.yaml", "metrics.jsonl"} <= artifacts
        assert json.loads((run.run_dir / "mlflow.json").read_text())["run_id"] == mr.info.run_id
    assert (tmp_path / "mlartifacts").is_dir()  # artifacts next to the database, not in the cwd


class Interrupt(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt


def test_a_resumed_run_continues_its_mlflow_run_without_relogging(tmp_path, store_uri):
    uri = store_uri
    sweep = Sweep.load(sweep_file(tmp_path, epochs=3))
    with pytest.raises(KeyboardInterrupt):
        run_one(sweep, 1, mlflow_uri=uri, callbacks=(Interrupt(),))
    client = MlflowClient(tracking_uri=uri)
    first = runs_of(client)[sweep.run(1).name]
    assert first.info.status == "KILLED"
    # epoch 2 was logged by the killed attempt but its checkpoint was not saved: resuming reruns it, logs it once
    assert [m.step for m in client.get_metric_history(first.info.run_id, "train_loss")] == [1, 2]
    client.log_param(first.info.run_id, "note", "kept")
    out = run_one(sweep, 1, mlflow_uri=uri)
    assert (out.status, out.action) == ("done", "resumed")
    runs = runs_of(client)
    assert len(runs) == 1  # the same MLflow run, not a second one
    mr = runs[sweep.run(1).name]
    assert mr.info.run_id == first.info.run_id and mr.info.status == "FINISHED"
    assert mr.data.params["note"] == "kept" and mr.data.params["optim.lr"] == "0.05"
    assert [m.step for m in client.get_metric_history(mr.info.run_id, "train_loss")] == [1, 2, 3]


def test_conflicting_params_are_never_relogged(tmp_path, store_uri):
    import sqlite3

    from cnnlab.engine.trainer import Trainer
    from cnnlab.experiments.tracking import MLflowCallback

    uri = store_uri
    sweep = Sweep.load(sweep_file(tmp_path, epochs=3))
    with pytest.raises(KeyboardInterrupt):
        run_one(sweep, 1, mlflow_uri=uri, callbacks=(Interrupt(),))
    client = MlflowClient(tracking_uri=uri)
    run_id = runs_of(client)[sweep.run(1).name].info.run_id
    with pytest.raises(Exception, match="(?i)param"):  # MLflow refuses to change a logged param
        client.log_param(run_id, "optim.lr", "999")
    # a stored value that differs from the config (e.g. logged by an older cnnlab): written into the store directly
    con = sqlite3.connect(tmp_path / "mlflow.db")
    con.execute("UPDATE params SET value='999' WHERE key='optim.lr' AND run_uuid=?", (run_id,))
    con.commit()
    con.close()
    tracker = MLflowCallback(uri, experiment="tracked", run_name=sweep.run(1).name)
    Trainer(sweep.run(1).config, sweep.run(1).run_dir, callbacks=[tracker], progress=False).fit(resume=True)
    assert tracker.skipped_params == ["optim.lr"]
    mr = client.get_run(run_id)
    assert mr.data.params["optim.lr"] == "999" and mr.data.tags["cnnlab.param_conflicts"] == "optim.lr"
    assert mr.info.status == "FINISHED"


def test_cli_bare_mlflow_flag_uses_the_local_sqlite_default(tmp_path, monkeypatch, store_uri):
    monkeypatch.chdir(tmp_path)  # store_uri put an initialised mlflow.db here: the default URI must find it
    shutil.copy(tmp_path / "mlflow.db", tmp_path / "other.db")
    path = sweep_file(tmp_path)
    res = cli.invoke(app, ["sweep", "run", str(path), "--indices", "1", "--mlflow", "--json"])
    assert res.exit_code == 0, res.output
    runs = runs_of(MlflowClient(tracking_uri="sqlite:///mlflow.db"))
    assert list(runs) == [Sweep.load(path).run(1).name]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    res = cli.invoke(app, ["sweep", "run", str(path), "--mlflow", other, "--json"])
    assert res.exit_code == 0, res.output
    assert len(runs_of(MlflowClient(tracking_uri=other))) == 1  # only run 2 was left to do


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_store(tmp_path, store_uri):
    spec = yaml.safe_load(sweep_file(tmp_path).read_text())
    spec["seeds"] = [0, 1, 2]  # 6 runs, 2 epochs each, logged by two processes into one sqlite file
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = Sweep.load(path)
    outcomes = run_local(sweep, workers=2, threads_per_worker=1, mlflow_uri=store_uri)
    assert sorted(o.index for o in outcomes if o.status == "done") == [1, 2, 3, 4, 5, 6]
    client = MlflowClient(tracking_uri=store_uri)
    runs = runs_of(client)
    assert set(runs) == {r.name for r in sweep.runs()} and all(r.info.status == "FINISHED" for r in runs.values())
    for r in runs.values():
        assert [m.step for m in client.get_metric_history(r.info.run_id, "test_loss")] == [1, 2]
