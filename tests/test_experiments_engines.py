"""Executors as one module each (the job-array base), and attribution (LDS subset models, MAGIC target chunks)
through the same executors as sweeps, bit for bit the local path."""

import ast
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.experiments import Sweep
from cnnlab.experiments.executors import EXECUTORS, SubmitRequest
from cnnlab.experiments.executors.array import ArrayExecutor

cli = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src" / "cnnlab" / "experiments" / "executors"
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 512}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_each_scheduler_is_one_module_on_the_array_base():
    assert "cnnlab.experiments.executors.sge" not in _imports(SRC / "slurm.py")
    assert "cnnlab.experiments.executors.slurm" not in _imports(SRC / "sge.py")
    assert issubclass(EXECUTORS["sge"], ArrayExecutor) and issubclass(EXECUTORS["slurm"], ArrayExecutor)


def test_a_new_array_engine_is_one_small_subclass(tmp_path, monkeypatch):
    """E.g. PBS: its directives and job-id parsing; script body, index table and submission are inherited."""
    monkeypatch.chdir(tmp_path)

    class PBS(ArrayExecutor):
        name, tool, task_var, submit_argv, uses_table = "pbs", "PBS", "PBS_ARRAY_INDEX", ("qsub",), True

        def header(self, job, opts, k, threads):
            return ["#!/bin/bash", f"#PBS -N {job.name}", f"#PBS -J 1-{len(job.ids)}"]

        def job_id(self, stdout):
            return stdout.split(".")[0]

    spec = {"name": "eng", "base": BASE, "grid": {"optim.lr": [0.05, 0.04, 0.03]}, "root": str(tmp_path / "runs")}
    path = tmp_path / "eng.yaml"
    path.write_text(yaml.safe_dump(spec))
    sweep = Sweep.load(path)
    sub = PBS().submit(sweep, SubmitRequest([sweep.run(1), sweep.run(3)], dry_run=True))
    lines = sub.script.read_text().splitlines()
    assert "#PBS -J 1-2" in lines and "INDICES=(0 1 3)" in lines
    assert lines[-1].endswith('--index "${INDICES[$PBS_ARRAY_INDEX]}"') and " sweep run-one " in lines[-1]
    assert sub.indices == [1, 3] and not sub.submitted


# ------------------------------------------------------------------------------- LDS on the engines
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

TINY = {"name": "tiny", "seed": 0,
        "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "digits", "subset": 48},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle"}, "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}}
LDS_ARGS = ["--models", "4", "--drop", "0.25", "--baselines", "none", "--threads", "1"]


@pytest.fixture(scope="module")
def magic_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lds_engines")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = root / "magic"
    res = cli.invoke(app, ["magic", str(cfg), "--targets", "0-2", "--out", str(out), "--plot-targets", "0", "--json"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def reference(magic_dir, tmp_path_factory):
    """The local path: `cnnlab lds RUN --engine step` in this process (1 torch thread)."""
    run = copy_run(magic_dir, tmp_path_factory.mktemp("ref"))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = cli.invoke(app, ["lds", str(run), "--engine", "step", *LDS_ARGS[:-2], "--json"])
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    return run, json.loads(res.stdout)


def copy_run(src: Path, dest_parent: Path) -> Path:
    dest = dest_parent / "run"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("lds"))
    return dest


def records(run: Path) -> list[list[float]]:
    files = sorted((run / "lds").glob("*/models/*.json"))
    return [json.loads(f.read_text())["phi"] for f in files]


def assert_same(run: Path, summary: dict, reference) -> None:
    ref_run, ref_summary = reference
    assert len(records(run)) == 4 and records(run) == records(ref_run)  # bit for bit (JSON floats round-trip exactly)
    assert summary["methods"]["magic"]["lds"] == ref_summary["methods"]["magic"]["lds"]
    assert summary["methods"]["magic"]["spearman_per_target"] == ref_summary["methods"]["magic"]["spearman_per_target"]


def test_lds_through_local_worker_tasks_equals_the_local_path(magic_dir, reference, tmp_path):
    run = copy_run(magic_dir, tmp_path)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", "local", "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert_same(run, json.loads(res.stdout), reference)


@pytest.mark.parametrize("executor, var", [("slurm", "SLURM_ARRAY_TASK_ID"), ("sge", "SGE_TASK_ID")])
def test_lds_array_script_tasks_are_resumable_and_merge_to_the_local_result(magic_dir, reference, tmp_path,
                                                                            monkeypatch, executor, var):
    """Run the job script's tasks as the scheduler would (task variable set), one of them twice, then merge."""
    monkeypatch.chdir(tmp_path)
    run = copy_run(magic_dir, tmp_path)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", executor, "--dry-run", "--max-concurrent", "2", "--json"])
    assert res.exit_code == 0, res.output
    sub = json.loads(res.stdout)
    assert sub["tasks"] == 4 and not sub["submitted"] and sub["models"] == [0, 1, 2, 3]
    text = Path(sub["script"]).read_text()
    assert ("#SBATCH --array=1-4%2" in text) if executor == "slurm" else ("#$ -t 1-4" in text and "#$ -tc 2" in text)
    assert " -m cnnlab lds " in text.splitlines()[-1] and "--models 4" in text
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen = set()
    for task in (1, 2, 2, 3, 4):  # task 2 twice: a rerun task finds its record and trains nothing
        proc = subprocess.run(["bash", sub["script"]], env={**env, var: str(task)}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"subset model {task}/4: {'skipped' if task in seen else 'trained'}" in proc.stdout
        seen.add(task)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", executor, "--json"])  # nothing pending: merge
    assert res.exit_code == 0, res.output
    assert_same(run, json.loads(res.stdout), reference)


def test_merge_checks_index_shape_and_provenance_of_each_record(magic_dir, tmp_path):
    run = copy_run(magic_dir, tmp_path)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", "local", "--json"])
    assert res.exit_code == 0, res.output
    files = sorted((run / "lds").glob("*/models/*.json"))
    rec = json.loads(files[1].read_text())
    bad = {**rec, "provenance": {**rec["provenance"], "config": "0" * 16}}
    files[1].write_text(json.dumps(bad))
    (run / "lds" / files[1].parent.parent.name / "summary.json").unlink()
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS])
    assert res.exit_code == 2 and files[1].name in res.output and "config" in res.output
    files[1].write_text(json.dumps({**rec, "phi": rec["phi"][:-1]}))
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS])
    assert res.exit_code == 2 and "phi values" in res.output
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--index", "9"])
    assert res.exit_code == 2 and "1..4" in res.output


def test_lds_on_a_local_ray_equals_the_local_path(magic_dir, reference, tmp_path):
    pytest.importorskip("ray")
    run = copy_run(magic_dir, tmp_path)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", "ray", "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert_same(run, json.loads(res.stdout), reference)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["slurm", "sge"])
def test_lds_on_a_real_scheduler_equals_the_local_path(magic_dir, reference, tmp_path, monkeypatch, executor):
    from test_experiments_cluster import require_scheduler

    require_scheduler(executor)
    monkeypatch.chdir(tmp_path)
    run = copy_run(magic_dir, tmp_path)
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", executor, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["submitted"]
    deadline = time.time() + 400
    while len(records(run)) < 4 and time.time() < deadline:
        time.sleep(1)
    assert len(records(run)) == 4, list((Path(json.loads(res.stdout)["script"]).parent / "logs").glob("*"))
    res = cli.invoke(app, ["lds", str(run), *LDS_ARGS, "--executor", executor, "--json"])
    assert res.exit_code == 0, res.output
    assert_same(run, json.loads(res.stdout), reference)
