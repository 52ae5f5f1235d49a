"""SGE and Slurm job arrays: the generated scripts, running each task with the scheduler's task variable set,
qsub/sbatch invocation, and (when a scheduler is running on this machine) real submissions."""

import json
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.experiments import Sweep, run_one

cli = CliRunner()
BASE = {"model": {"name": "tiny_cnn", "options": {"widths": [4, 8, 8]}}, "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 512}}


def cluster_sweep(tmp_path: Path, n: int = 3) -> Path:
    spec = {"name": "clu", "base": BASE, "grid": {"optim.lr": [0.05, 0.04, 0.03][:n]}, "root": str(tmp_path / "runs"),
            "executors": {"sge": {"options": ["-l h_vmem=1G"], "setup": ["export CNNLAB_TEST_SETUP=1"], "threads": 1},
                          "slurm": {"options": ["--mem=1G"], "threads": 1}}}
    path = tmp_path / "clu.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def submit(path: Path, executor: str, *extra: str) -> dict:
    res = cli.invoke(app, ["sweep", "submit", str(path), "--executor", executor, "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def run_task(script: str, var: str, task_id: int, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, var: str(task_id)}
    return subprocess.run(["bash", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_sge_script_has_the_array_options_and_task_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = submit(cluster_sweep(tmp_path), "sge", "--max-concurrent", "2", "--dry-run", "--set", "train.epochs=1")
    assert sub["indices"] == [1, 2, 3] and not sub["submitted"]
    text = Path(sub["script"]).read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for line in ("#$ -t 1-3", "#$ -tc 2", "#$ -l h_vmem=1G", "#$ -N clu", f"#$ -wd {tmp_path}", "export CNNLAB_TEST_SETUP=1",
                 "export OMP_NUM_THREADS=1"):
        assert line in lines, line
    task = lines[-1]
    assert task.startswith("exec ") and " -m cnnlab sweep run-one " in task and task.endswith('--index "$SGE_TASK_ID"')
    assert "--set train.epochs=1" in task and f"--root {tmp_path / 'runs'}" in task and "--threads 1" in task
    assert sub["command"] == ["qsub", "-terse", sub["script"]]


def test_slurm_script_lists_the_array_indices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = cluster_sweep(tmp_path)
    run_one(Sweep.load(path), 2)
    sub = submit(path, "slurm", "--max-concurrent", "2", "--dry-run")
    assert sub["indices"] == [1, 3]
    lines = Path(sub["script"]).read_text().splitlines()
    for line in ("#SBATCH --array=1,3%2", "#SBATCH --mem=1G", "#SBATCH --job-name=clu", "#SBATCH --cpus-per-task=1"):
        assert line in lines, line
    assert lines[-1].endswith('--index "$SLURM_ARRAY_TASK_ID"')
    assert sub["command"] == ["sbatch", "--parsable", sub["script"]]
    # SGE arrays are ranges: the pending runs 1 and 3 become tasks 1-2 through a table
    lines = Path(submit(path, "sge", "--dry-run")["script"]).read_text().splitlines()
    assert "#$ -t 1-2" in lines and "INDICES=(0 1 3)" in lines
    assert lines[-1].endswith('--index "${INDICES[$SGE_TASK_ID]}"')


@pytest.mark.slow
@pytest.mark.parametrize("executor, var, task_id", [("sge", "SGE_TASK_ID", 1), ("slurm", "SLURM_ARRAY_TASK_ID", 2)])
def test_each_task_of_the_generated_script_runs_its_run(tmp_path, monkeypatch, executor, var, task_id):
    """Execute the job script as the scheduler would: per array task, with the task variable set."""
    monkeypatch.chdir(tmp_path)
    path = cluster_sweep(tmp_path, n=2)
    sweep = Sweep.load(path)
    run_one(sweep, 1)  # already done: the array covers run 2 only
    sub = submit(path, executor, "--dry-run")
    assert sub["indices"] == [2]
    # SGE arrays are ranges: task 1 of "-t 1-1" maps to sweep index 2; Slurm array ids are sweep indices
    proc = run_task(sub["script"], var, task_id, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sweep.status()["counts"]["done"] == 2
    assert sweep.run(2).result()["name"] == sweep.run(2).name
    proc = subprocess.run(["bash", sub["script"]], env={k: v for k, v in os.environ.items() if k != var},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and var in proc.stderr


def _fake_tool(bin_dir: Path, name: str, output: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text(f'#!/bin/sh\necho "$@" > "{bin_dir}/{name}.args"\necho "{output}"\n')
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_submit_calls_qsub_and_sbatch_and_reads_the_job_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = cluster_sweep(tmp_path)
    bin_dir = tmp_path / "bin"
    _fake_tool(bin_dir, "qsub", "4242.1-3:1")
    _fake_tool(bin_dir, "sbatch", "77;cluster")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    sub = submit(path, "sge")
    assert (sub["job_id"], sub["submitted"]) == ("4242", True)
    assert (bin_dir / "qsub.args").read_text().split() == ["-terse", sub["script"]]
    sub = submit(path, "slurm", "--max-concurrent", "1")
    assert (sub["job_id"], sub["submitted"]) == ("77", True)


def test_submit_without_the_scheduler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    res = cli.invoke(app, ["sweep", "submit", str(cluster_sweep(tmp_path)), "--executor", "sge"])
    assert res.exit_code == 2 and "qsub not found" in res.output and "--dry-run" in res.output
    res = cli.invoke(app, ["sweep", "submit", str(cluster_sweep(tmp_path)), "--executor", "pbs"])
    assert res.exit_code == 2 and "unknown executor 'pbs'" in res.output


# ----------------------------------------------------------------------------- real schedulers
def _responds(*cmd: str) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (subprocess.TimeoutExpired, OSError):
        return False
    return proc.returncode == 0 and proc.stdout.strip() != ""


def slurm_ready() -> bool:
    """A Slurm controller answers and has a node that is up (idle, or busy with another test's job: the
    array then queues behind it)."""
    if not _responds("sinfo", "-h", "-o", "%t"):
        return False
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10).stdout.split()
    return any(s.rstrip("*") in ("idle", "mix", "alloc", "comp") for s in states)


def sge_ready() -> bool:
    """An SGE qmaster answers and has a queue instance that is not in alarm/disabled/error state."""
    if not _responds("qstat", "-f"):
        return False
    out = subprocess.run(["qstat", "-f"], capture_output=True, text=True, timeout=10).stdout
    rows = [ln.split() for ln in out.splitlines() if "@" in ln and not ln.startswith(" ")]
    return any(len(r) == 5 for r in rows)  # no states column: the queue instance is OK


def require_scheduler(executor: str) -> None:
    """Skip the calling test unless ``executor`` (slurm or sge) has a running scheduler here."""
    if not (slurm_ready() if executor == "slurm" else sge_ready()):
        pytest.skip(f"no running {executor} here (tests/test_experiments_cluster_setup.sh starts one)")


def _wait_done(sweep: Sweep, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        counts = sweep.status()["counts"]
        if counts["done"] + counts["failed"] + counts["diverged"] == len(sweep):
            return counts
        time.sleep(1)
    return sweep.status()["counts"]


@pytest.mark.slow
def test_real_slurm_array(tmp_path, monkeypatch):
    if not slurm_ready():  # probed here, not at collection: an installed but stopped scheduler answers slowly
        pytest.skip("no running Slurm here (tests/test_experiments_cluster_setup.sh starts one)")
    monkeypatch.chdir(tmp_path)
    path = cluster_sweep(tmp_path, n=2)
    sub = submit(path, "slurm", "--max-concurrent", "2")
    assert sub["submitted"] and sub["job_id"].isdigit()
    counts = _wait_done(Sweep.load(path))
    logs = "\n".join(p.read_text() for p in (tmp_path / "runs" / "_submit" / "logs").glob("*"))
    assert counts["done"] == 2, logs


@pytest.mark.slow
def test_real_sge_array(tmp_path, monkeypatch):
    if not sge_ready():
        pytest.skip("no running SGE here (tests/test_experiments_cluster_setup.sh starts one)")
    monkeypatch.chdir(tmp_path)
    path = cluster_sweep(tmp_path, n=2)
    sub = submit(path, "sge", "--max-concurrent", "2")
    assert sub["submitted"] and sub["job_id"].isdigit()
    counts = _wait_done(Sweep.load(path))
    logs = "\n".join(p.read_text() for p in (tmp_path / "runs" / "_submit" / "logs").glob("*"))
    assert counts["done"] == 2, logs
