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


def test_cli_bare_mlflow_flag_uses_a_store_under_the_run_store(tmp_path, monkeypatch, empty_store):
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copy(empty_store, tmp_path / "runs" / "mlflow.db")  # an initialised store where the default points
    shutil.copy(empty_store, tmp_path / "other.db")
    res = cli.invoke(app, ["sweep", "run", str(path), "--indices", "1", "--mlflow", "--json"])
    assert res.exit_code == 0, res.output
    runs = runs_of(MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"))
    assert list(runs) == [Sweep.load(path).run(1).name]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()  # nothing in the cwd
    other = f"sqlite:///{tmp_path / 'other.db'}"
    res = cli.invoke(app, ["sweep", "run", str(path), "--mlflow", other, "--json"])
    assert res.exit_code == 0, res.output
    assert len(runs_of(MlflowClient(tracking_uri=other))) == 1  # only run 2 was left to do


def test_cli_train_mlflow_logs_epochs_and_the_model(tmp_path, monkeypatch, empty_store):
    import torch

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "store" / "run"
    out.parent.mkdir()
    shutil.copy(empty_store, out.parent / "mlflow.db")
    res = cli.invoke(app, ["train", "--mlflow", "train.epochs=2", "data.subset=64", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=f"sqlite:///{out.parent / 'mlflow.db'}")
    from cnnlab.engine.run import read_run_config

    (run,) = runs_of(client, read_run_config(out).name).values()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [1, 2]
    assert run.data.params["train.epochs"] == "2"
    local = client.download_artifacts(run.info.run_id, "model/state_dict.pt", str(tmp_path))
    from cnnlab.engine.run import load_run

    weights = torch.load(local, weights_only=True)
    expected = load_run(out, device="cpu").model.state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not (tmp_path / "mlflow.db").exists()


def test_log_run_dir_records_a_finished_directory(tmp_path, store_uri):
    from cnnlab.experiments.tracking import log_run_dir

    run = tmp_path / "pop"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "pop", "population": {"size": 4}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "mean_test_acc": 0.5 + e / 10}) + "\n" for e in (1, 2)))
    (run / "result.json").write_text(json.dumps({"status": "completed", "mean_test_acc": 0.7, "members": [1, 2]}))
    (run / "accuracy.png").write_bytes(b"\x89PNG")
    run_id = log_run_dir(store_uri, run, experiment="pops")
    client = MlflowClient(tracking_uri=store_uri)
    mr = client.get_run(run_id)
    assert mr.data.params["population.size"] == "4" and mr.data.metrics["mean_test_acc"] == pytest.approx(0.7)
    assert [m.value for m in client.get_metric_history(run_id, "mean_test_acc")][:2] == pytest.approx([0.6, 0.7])
    assert {a.path for a in client.list_artifacts(run_id)} >= {"config.yaml", "metrics.jsonl", "result.json", "accuracy.png"}
    assert mr.info.status == "FINISHED" and mr.data.tags["cnnlab.status"] == "completed"


def test_cli_es_mlflow_logs_the_finished_run(tmp_path, empty_store):
    out = tmp_path / "store" / "es"
    out.parent.mkdir()
    shutil.copy(empty_store, out.parent / "mlflow.db")
    configs = Path(__file__).resolve().parent.parent / "configs"
    res = cli.invoke(app, ["population", "es", str(configs / "es_digits.yaml"), "es.generations=2", "es.population=4",
                           "es.batch_size=32", "es.eval_every=2", "es.eval_batch_size=400", "es.bn_calibration_batches=1",
                           "model.options.widths=[4,8]", "--out", str(out), "--mlflow", "--json"])
    assert res.exit_code == 0, res.output
    client = MlflowClient(tracking_uri=f"sqlite:///{out.parent / 'mlflow.db'}")
    (run,) = runs_of(client, yaml.safe_load((out / "config.yaml").read_text())["name"]).values()
    assert run.data.params["es.generations"] == "2"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"result.json", "model.pt", "fitness.png"}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "mean_fitness")][:2] == [1, 2]


def test_mlflow_extra_gives_a_working_ui(tmp_path, monkeypatch):
    pytest.importorskip("flask", reason="mlflow-skinny has no UI server")
    monkeypatch.setenv("_MLFLOW_SERVER_FILE_STORE", f"sqlite:///{tmp_path / 'ui.db'}")
    from mlflow.server import app as ui

    client = ui.test_client()
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200


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
