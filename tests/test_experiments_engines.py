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
from cnnlab.experiments.executors.array import ArrayExecutor, ArrayJob

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
