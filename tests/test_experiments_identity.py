"""The run store never serves a stale or foreign result, and nothing escapes a run directory.

- a run is identified by its full resolved config: any changed key makes a finished run ``stale``
  (status, results, run), retrained only with ``--rerun-stale``;
- resuming a directory of another kind or config is refused, naming the keys, with nothing replaced;
- labels, run names and layouts resolving outside the root are config errors naming the key;
- symlinked ``checkpoints/`` / ``metrics.jsonl`` are never written or deleted through (sentinel files);
- a worker killed with SIGKILL leaves nothing behind: the surviving worker finishes its run.
"""

import copy
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.config import ConfigError, build_config
from cnnlab.engine.rundir import canonical, config_digest
from cnnlab.engine.trainer import Trainer
from cnnlab.experiments import Sweep, run_local, store, todo_runs
from cnnlab.experiments.results import collect
from cnnlab.utils.io import PathEscapeError, append_jsonl, write_json_atomic, write_text_atomic

cli = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 512}}


def sweep_file(tmp_path: Path, grid=None, seeds=(0,), base=None, **extra) -> Path:
    spec = {"name": "ident", "base": base or BASE, "grid": grid or {"optim.lr": [0.05]}, "seeds": list(seeds),
            "root": str(tmp_path / "runs"), **extra}
    path = tmp_path / "ident.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) with a hash of its content."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link->" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _changed(v):
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v + 1
    if isinstance(v, str):
        return v + "x"
    if isinstance(v, list):
        return v + [1]
    if isinstance(v, dict):
        return {"added": 1}
    return 1  # None


def _set(d, dotted, value):
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value


# ------------------------------------------------------------------------------- stale runs
def test_every_config_key_is_part_of_a_runs_identity(tmp_path):
    """Changing any leaf of the resolved config (not only swept ones) makes a finished run stale."""
    config = canonical(build_config(BASE).to_dict())
    run_dir = tmp_path / "run"
    store.write_run_record(run_dir, config)
    write_json_atomic(run_dir / store.RESULT_NAME, {"status": "completed", "epochs_completed": 1})
    assert store.run_state(run_dir, expected=config).status == "done"
    leaves = dict(_leaves(config))
    assert len(leaves) > 30  # the whole config, not a summary of it
    for key, value in leaves.items():
        other = copy.deepcopy(config)
        _set(other, key, _changed(value))
        st = store.run_state(run_dir, expected=other)
        assert st.status == "stale", key
        assert key in st.detail or len(st.detail) > 0
        assert config_digest(other) != config_digest(config), key


@pytest.mark.parametrize("override", ["train.epochs=2", "data.subset=96", "model.options.widths=[4,8,4]",
                                      "train.batch_size=16", "optim.momentum=0.5"])
def test_changing_a_key_after_a_finished_run_makes_it_stale_in_status_results_and_run(tmp_path, override):
    path = sweep_file(tmp_path)
    sweep = Sweep.load(path)
    assert [o.action for o in run_local(sweep)] == ["trained"]
    before = sweep.run(1).result()

    changed = Sweep.load(path, overrides=[override])
    key = override.split("=")[0]
    st = changed.status()
    assert st["counts"]["stale"] == 1 and st["counts"]["done"] == 0
    assert key in st["runs"][0]["detail"]
    assert todo_runs(changed) == []  # never silently reused, never silently retrained
    table = collect(changed)
    assert table.rows[0]["status"] == "stale" and "test_acc" not in table.rows[0] and table.done() == []
    assert key in table.stale_note()
    # `sweep run` skips it (saying so); the old result is untouched
    outs = run_local(changed)
    assert [(o.status, o.action) for o in outs] == [("stale", "skipped")]
    assert changed.run(1).result() == before
    res = cli.invoke(app, ["sweep", "status", str(path), "--set", override])
    assert res.exit_code == 0 and "stale 1" in res.output
    res = cli.invoke(app, ["results", str(path), "--set", override])
    assert res.exit_code == 0 and "skipped 1 stale run" in res.output and key in res.output and "0/1" in res.output
    res = cli.invoke(app, ["sweep", "run", str(path), "--set", override])
    assert res.exit_code == 0 and "0 of 1 runs to do" in res.output and "--rerun-stale" in res.output
    # --rerun-stale retrains it under the new config
    res = cli.invoke(app, ["sweep", "run", str(path), "--set", override, "--rerun-stale", "--json"])
    assert res.exit_code == 0, res.output
    assert [(o["status"], o["action"]) for o in json.loads(res.stdout)["outcomes"]] == [("done", "trained")]
    assert changed.status()["counts"]["done"] == 1
    assert Sweep.load(path).status()["counts"]["stale"] == 1  # and now the old request is the stale one
    rec = json.loads((changed.run(1).run_dir / store.RUN_RECORD).read_text())
    assert rec["digest"] == changed.run(1).digest


def test_a_run_trained_outside_the_store_is_judged_by_its_config_yaml(tmp_path):
    sweep = Sweep.load(sweep_file(tmp_path))
    run = sweep.run(1)
    Trainer(run.config, run.run_dir, progress=False).fit()  # writes config.yaml, no run.json
    assert run.state().status == "done"
    other = Sweep.load(sweep.path, overrides=["train.epochs=2"]).run(1)
    assert other.state().status == "stale" and "train.epochs" in other.state().detail


def test_resume_into_a_directory_of_another_config_or_kind_is_refused_and_nothing_changes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    out = tmp_path / "run"
    res = cli.invoke(app, ["train", str(cfg), "--out", str(out), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    before = snapshot(out)
    res = cli.invoke(app, ["train", str(cfg), "train.epochs=2", "optim.lr=0.1", "--out", str(out), "--resume", "--no-progress"])
    assert res.exit_code == 2 and "train.epochs" in res.output and "optim.lr" in res.output
    assert snapshot(out) == before
    # a population run directory: refused as another kind, nothing replaced
    pop = tmp_path / "pop"
    pop.mkdir()
    pop_cfg = {**canonical(build_config(BASE).to_dict()), "population": {"size": 4}}
    (pop / "config.yaml").write_text(yaml.safe_dump(pop_cfg))
    (pop / "members.pt").write_bytes(b"members")
    (pop / "result.json").write_text("{}")
    before = snapshot(pop)
    for extra in (["--resume"], []):
        res = cli.invoke(app, ["train", str(cfg), "--out", str(pop), "--no-progress", *extra])
        assert res.exit_code == 2 and "population run" in res.output, res.output
        assert snapshot(pop) == before


# ------------------------------------------------------------------------------- path escapes
@pytest.mark.parametrize("spec,key", [
    ({"grid": {"optim.lr": {"..": 0.05}}, "run_name": "{lr}"}, "run_name"),
    ({"grid": {"optim.lr": {".": 0.05}}, "run_name": "{lr}"}, "run_name"),
    ({"grid": {"optim.lr": {"": 0.05}}, "run_name": "{lr}"}, "optim.lr"),
    ({"grid": {"optim.lr": {" ": 0.05}}, "run_name": "{lr}"}, "optim.lr"),
    ({"grid": {"optim.lr": {"..": 0.05}}, "layout": "{lr}", "run_name": "r"}, "layout"),
    ({"grid": {"optim.lr": {"x": 0.05}}, "layout": "{lr}/.", "run_name": "r"}, "layout"),
    ({"grid": {"optim.lr": {"x": 0.05}}, "layout": "/{lr}", "run_name": "r"}, "layout"),
    ({"grid": {"optim.lr": {"x": 0.05}}, "layout": "a/../..", "run_name": "r"}, "layout"),
])
def test_names_and_layouts_outside_the_root_are_config_errors_naming_the_key(tmp_path, spec, key):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep")
    path = sweep_file(tmp_path, grid=spec["grid"], **{k: v for k, v in spec.items() if k != "grid"})
    with pytest.raises(ConfigError, match=key):
        Sweep.load(path)
    res = cli.invoke(app, ["sweep", "run", str(path)])
    assert res.exit_code == 2 and key in res.output
    assert sentinel.read_text() == "keep" and not (tmp_path / "runs").exists()


def test_slashes_in_labels_are_made_path_safe_and_stay_inside_the_root(tmp_path):
    path = sweep_file(tmp_path, grid={"optim.lr": {"a/../..": 0.05, "/abs": 0.04}}, run_name="{lr}", layout="{lr}")
    root = (tmp_path / "runs").resolve()
    for run in Sweep.load(path).runs():
        assert root in run.run_dir.resolve().parents


def test_a_layout_through_a_symlink_out_of_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "grp").symlink_to(outside)
    path = sweep_file(tmp_path, layout="grp")
    with pytest.raises(ConfigError, match="outside the run-store root"):
        Sweep.load(path)
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("link", ["checkpoints", "metrics.jsonl", "result.json"])
def test_sweep_run_never_writes_or_deletes_through_a_symlink(tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.pt").write_bytes(b"precious")
    (outside / "log.jsonl").write_text("precious\n")
    sweep = Sweep.load(sweep_file(tmp_path))
    run_dir = sweep.run(1).run_dir
    run_dir.mkdir(parents=True)
    target = outside if link == "checkpoints" else outside / "log.jsonl"
    (run_dir / link).symlink_to(target)
    before = snapshot(outside)
    outs = run_local(sweep)
    assert [(o.status, o.action) for o in outs] == [("failed", "refused")]
    assert "outside the run directory" in outs[0].error
    assert snapshot(outside) == before
    with pytest.raises(PathEscapeError):  # the engine on its own refuses too
        Trainer(sweep.run(1).config, run_dir, progress=False).fit()
    assert snapshot(outside) == before


def test_writers_do_not_follow_links_and_respect_the_umask(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    link = tmp_path / "metrics.jsonl"
    link.symlink_to(outside)
    with pytest.raises(PathEscapeError):
        append_jsonl(link, {"a": 1})
    assert outside.read_text() == "precious\n"
    write_text_atomic(link, "new\n")  # replaces the link itself, never writes through it
    assert not link.is_symlink() and link.read_text() == "new\n" and outside.read_text() == "precious\n"
    old = os.umask(0o027)
    try:
        write_json_atomic(tmp_path / "r.json", {"x": 1})
        assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    write_json_atomic(tmp_path / "r2.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "r2.json").stat().st_mode) == 0o666 & ~old


def test_runs_clean_removes_a_symlinked_checkpoints_link_not_its_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.pt").write_bytes(b"precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(BASE))
    (run / "checkpoints").symlink_to(outside)
    before = snapshot(outside)
    res = cli.invoke(app, ["runs", "clean", str(run)])  # default (scratch): never globs through the link
    assert res.exit_code == 0, res.output
    assert (run / "checkpoints").is_symlink() and snapshot(outside) == before
    res = cli.invoke(app, ["runs", "clean", str(run), "--what", "checkpoints"])
    assert res.exit_code == 0, res.output
    assert not (run / "checkpoints").exists() and snapshot(outside) == before


# ------------------------------------------------------------------------------- no run left behind
def _lock_pids(run_dirs):
    pids = {}
    for d in run_dirs:
        rec = store.read_json(d / store.LOCK_NAME)
        if rec:
            pids[d] = rec["pid"]
    return pids


def _start_two_workers(tmp_path):
    base = {**BASE, "data": {"name": "digits", "subset": 256}, "train": {**BASE["train"], "epochs": 60, "batch_size": 16}}
    path = sweep_file(tmp_path, grid={"optim.lr": [0.05, 0.04]}, base=base)
    sweep = Sweep.load(path)
    dirs = [r.run_dir for r in sweep.runs()]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_PROGRESS_INTERVAL": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "sweep", "run", str(path), "--workers", "2",
                             "--threads-per-worker", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        pids = _lock_pids(dirs)
        if len(set(pids.values())) == 2:
            return sweep, proc, pids
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"two workers never held the two runs: {proc.communicate()}")


@pytest.mark.slow
def test_a_sigkilled_worker_s_run_is_finished_by_the_survivor_in_the_same_invocation(tmp_path):
    sweep, proc, pids = _start_two_workers(tmp_path)
    victim_dir, victim = next((d, p) for d, p in pids.items() if p != proc.pid)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert sweep.status()["counts"]["done"] == 2, sweep.status()
    assert not (victim_dir / store.LOCK_NAME).exists()
    lines = out.decode()
    assert "2/2" in lines and "ETA" in lines and "1/2" in lines


@pytest.mark.slow
def test_killing_the_main_sweep_process_stops_its_workers(tmp_path):
    sweep, proc, pids = _start_two_workers(tmp_path)
    worker = next(p for p in pids.values() if p != proc.pid)
    proc.kill()
    proc.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the spawned worker outlived the main sweep process")
    states = [r.state() for r in sweep.runs()]
    assert all(s.status == "pending" for s in states), states  # released or interrupted: resumable next time
