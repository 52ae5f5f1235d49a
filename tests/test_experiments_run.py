"""Executing sweeps locally: claims, skip-if-done, failures + --retry-failed, diverged status, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.trainer import Trainer
from cnnlab.experiments import Sweep, run_local, run_one, todo_runs
from cnnlab.utils.io import read_jsonl

cli = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 512}}


def tiny_sweep(tmp_path: Path, grid=None, seeds=(0, 1), base=None, name="tiny") -> Path:
    spec = {"name": name, "base": base or BASE, "grid": grid or {"optim.lr": [0.05, 0.02]}, "seeds": list(seeds),
            "root": str(tmp_path / "runs")}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class Boom(Callback):
    """Raise ``exc`` at the end of epoch ``at`` (0-based), after that epoch's checkpoint of the previous one."""

    def __init__(self, exc: BaseException, at: int = 0):
        self.exc, self.at = exc, at

    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == self.at:
            raise self.exc


def test_run_local_trains_each_run_once_and_matches_a_direct_run(tmp_path):
    sweep = Sweep.load(tiny_sweep(tmp_path))
    outcomes = run_local(sweep)
    assert [(o.index, o.status, o.action) for o in outcomes] == [(i, "done", "trained") for i in (1, 2, 3, 4)]
    assert sweep.status()["counts"]["done"] == 4
    # the sweep's run is exactly the run the engine trains on its own (dataset cache, callbacks change nothing)
    direct = Trainer(sweep.run(3).config, tmp_path / "direct", progress=False).fit()
    got = sweep.run(3).result()
    assert got["final"]["train_loss"] == direct["final"]["train_loss"]
    assert got["final"]["test_acc"] == direct["final"]["test_acc"]
    assert got["seeds"]["master"] == 1 and got["name"] == sweep.run(3).name
    # a second pass does nothing
    again = run_local(sweep)
    assert {o.action for o in again} == {"skipped"}
    assert todo_runs(sweep) == []


def test_failures_are_recorded_do_not_stop_the_sweep_and_can_be_retried(tmp_path):
    sweep = Sweep.load(tiny_sweep(tmp_path))
    out = run_one(sweep, 2, callbacks=(Boom(RuntimeError("disk on fire")),))
    assert (out.status, out.error) == ("failed", "RuntimeError: disk on fire")
    rec = json.loads((sweep.run(2).run_dir / "failure.json").read_text())
    assert rec["attempts"] == 1 and "disk on fire" in (sweep.run(2).run_dir / "traceback.txt").read_text()
    outcomes = run_local(sweep)  # the others still run; the failed one is skipped
    assert {o.index: o.status for o in outcomes} == {1: "done", 2: "failed", 3: "done", 4: "done"}
    assert [o.action for o in outcomes if o.index == 2] == ["skipped"]
    assert [r.index for r in sweep.runs("failed")] == [2]
    assert [r.index for r in todo_runs(sweep, retry_failed=True)] == [2]
    retried = run_local(sweep, retry_failed=True)
    assert {o.index: (o.status, o.action) for o in retried}[2] == ("done", "trained")
    assert sweep.status()["counts"] == {"done": 4, "running": 0, "failed": 0, "diverged": 0, "stale": 0, "pending": 0}
    assert json.loads((sweep.run(2).run_dir / "failure.prev.json").read_text())["attempts"] == 1


def test_cli_run_reports_failures_with_exit_code_and_retry(tmp_path):
    path = tiny_sweep(tmp_path, grid={"data.subset": [64, 100000]}, seeds=[0])  # run 2 asks for more data than exists
    res = cli.invoke(app, ["sweep", "run", str(path)])
    assert res.exit_code == 1, res.output
    assert "failed" in res.output and "100000" in res.output
    res = cli.invoke(app, ["sweep", "status", str(path), "--json"])
    st = json.loads(res.stdout)
    assert st["counts"]["done"] == 1 and st["counts"]["failed"] == 1
    assert "data.subset" in [r for r in st["runs"] if r["status"] == "failed"][0]["detail"]
    res = cli.invoke(app, ["sweep", "run", str(path), "--json"])  # failures are not retried by default
    assert res.exit_code == 0 and json.loads(res.stdout)["outcomes"] == []
    res = cli.invoke(app, ["sweep", "run", str(path), "--retry-failed", "--json"])
    assert res.exit_code == 1
    assert json.loads((Sweep.load(path).run(2).run_dir / "failure.json").read_text())["attempts"] == 2


def test_diverged_is_a_status_not_a_failure(tmp_path):
    base = {**BASE, "model": {"name": "tiny_cnn", "options": {"batchnorm": False}}, "train": {**BASE["train"], "log_every": 1}}
    path = tiny_sweep(tmp_path, grid={"optim.lr": [0.05, 1.0e10]}, seeds=[0], base=base)
    res = cli.invoke(app, ["sweep", "run", str(path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [o["status"] for o in out["outcomes"]] == ["done", "diverged"]
    assert out["counts"]["diverged"] == 1 and out["counts"]["failed"] == 0
    sweep = Sweep.load(path)
    assert sweep.run(2).result()["status"] == "diverged"
    assert todo_runs(sweep, retry_failed=True) == []  # --retry-failed does not rerun diverged runs


def test_interrupted_run_resumes_from_its_checkpoint_and_equals_an_uninterrupted_one(tmp_path):
    base = {**BASE, "train": {**BASE["train"], "epochs": 3}}
    sweep = Sweep.load(tiny_sweep(tmp_path, seeds=[0], base=base))
    with pytest.raises(KeyboardInterrupt):
        run_one(sweep, 1, callbacks=(Boom(KeyboardInterrupt(), at=1),))
    st = sweep.run(1).state()
    assert (st.status, st.resumable) == ("pending", True)  # lock released, checkpoint of epoch 1 kept
    out = run_one(sweep, 1)
    assert (out.status, out.action) == ("done", "resumed")
    ref = Trainer(sweep.run(1).config, tmp_path / "ref", progress=False).fit()
    got = sweep.run(1).result()
    assert got["epochs_completed"] == 3
    assert got["final"]["train_loss"] == ref["final"]["train_loss"] and got["final"]["test_loss"] == ref["final"]["test_loss"]
    assert [m["epoch"] for m in read_jsonl(sweep.run(1).run_dir / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.slow
def test_sigkilled_worker_leaves_a_stale_claim_that_the_next_worker_resumes(tmp_path):
    base = {**BASE, "data": {"name": "digits", "subset": 256}, "train": {**BASE["train"], "epochs": 30, "batch_size": 16}}
    path = tiny_sweep(tmp_path, seeds=[0], base=base)
    sweep = Sweep.load(path)
    run_dir = sweep.run(1).run_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "sweep", "run-one", str(path), "--index", "1", "--threads", "1"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    def epoch_recorded():  # the checkpoint is written just before its epoch's metrics line: wait for both
        log = run_dir / "metrics.jsonl"
        return (run_dir / "checkpoints" / "last.pt").exists() and log.exists() and len(read_jsonl(log)) >= 1

    while not epoch_recorded() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()
    assert sweep.run(1).status == "running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = sweep.run(1).state()
    assert st.status == "pending" and st.resumable and "interrupted" in st.detail
    lines_before = len(read_jsonl(run_dir / "metrics.jsonl"))
    assert 1 <= lines_before < 30
    out = run_one(sweep, 1)
    assert (out.status, out.action) == ("done", "resumed")
    assert [m["epoch"] for m in read_jsonl(run_dir / "metrics.jsonl")] == list(range(1, 31))


@pytest.mark.slow
def test_two_local_worker_processes_share_the_runs(tmp_path):
    path = tiny_sweep(tmp_path, grid={"optim.lr": [0.05, 0.04, 0.03]}, seeds=[0, 1])
    res = cli.invoke(app, ["sweep", "run", str(path), "--workers", "2", "--threads", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert sorted(o["index"] for o in out["outcomes"]) == [1, 2, 3, 4, 5, 6]  # each run trained exactly once
    assert out["counts"]["done"] == 6
    sweep = Sweep.load(path)
    for r in sweep.runs():
        assert [m["epoch"] for m in read_jsonl(r.run_dir / "metrics.jsonl")] == [1]
        assert not (r.run_dir / ".lock").exists()


def test_cli_status_run_one_submit_local_and_bad_indices(tmp_path):
    path = tiny_sweep(tmp_path)
    res = cli.invoke(app, ["sweep", "run-one", str(path), "--index", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "done"
    res = cli.invoke(app, ["sweep", "status", str(path)])
    assert res.exit_code == 0 and "done 1" in res.output and "pending 3" in res.output and "not started" in res.output
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", "local", "--indices", "1-2", "--json"])
    assert res.exit_code == 0, res.output
    assert [o["index"] for o in json.loads(res.stdout)["outcomes"]] == [1, 2]
    res = cli.invoke(app, ["sweep", "run-one", str(path), "--index", "9"])
    assert res.exit_code == 2 and "runs 1..4" in res.output
    res = cli.invoke(app, ["sweep", "run", str(path), "--indices", "2-x"])
    assert res.exit_code == 2 and "--indices" in res.output
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", "sge", "--dry-run"])
    assert res.exit_code == 0 and "job script for 1 array task(s)" in res.output  # only run 4 is left
    run_one(Sweep.load(path), 4)
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", "slurm"])
    assert res.exit_code == 0 and "nothing to submit" in res.output


def test_sigterm_releases_the_claim_and_leaves_the_run_resumable(tmp_path):
    from cnnlab.experiments.runner import exit_on_sigterm

    class Term(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # e.g. a scheduler's time limit

    base = {**BASE, "train": {**BASE["train"], "epochs": 3}}
    sweep = Sweep.load(tiny_sweep(tmp_path, seeds=[0], base=base))
    previous = signal.getsignal(signal.SIGTERM)
    exit_on_sigterm()
    try:
        with pytest.raises(SystemExit) as exc:
            run_one(sweep, 1, callbacks=(Term(),))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert exc.value.code == 128 + signal.SIGTERM
    assert not (sweep.run(1).run_dir / ".lock").exists()  # released at once, not left to go stale
    st = sweep.run(1).state()
    assert (st.status, st.resumable, st.detail) == ("pending", True, "resumable from checkpoints/last.pt")
    assert run_one(sweep, 1).action == "resumed"
