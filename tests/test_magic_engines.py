"""MAGIC over chunks of targets as executor tasks (local, SGE/Slurm job arrays, Ray) over one run directory:
every path merges to scores bit for bit those of one unchunked `cnnlab magic` run; tasks resume; chunks
computed under another request are refused."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from cnnlab.attribution.chunks import CHUNK_DIR, split_targets
from cnnlab.cli import app

cli = CliRunner()
TINY = {"name": "tiny", "seed": 0,
        "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "digits", "subset": 48},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle"}, "train": {"epochs": 2, "batch_size": 16, "device": "cpu"}}
ARGS = ["--targets", "0-4", "--plot-targets", "0", "--threads", "1"]
CHUNKED = [*ARGS, "--chunk", "2"]  # chunks [0, 1], [2, 3], [4]: the last one takes the single-target VJP


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("magic_engines") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """One unchunked `cnnlab magic` (the training run's own states, 1 torch thread): scores.pt and the run."""
    out = tmp_path_factory.mktemp("ref") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = cli.invoke(app, ["magic", str(config), *ARGS[:-2], "--out", str(out), "--json"])
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    return out, torch.load(out / "scores.pt", weights_only=True)


def trained_run(reference, dest: Path) -> Path:
    """A copy of the reference's trained run without its scores (training is not what these tests vary)."""
    run = dest / "run"
    shutil.copytree(reference[0], run, ignore=shutil.ignore_patterns("scores.*", "magic.json", "plots"))
    return run


def assert_same_scores(run: Path, reference) -> None:
    ref = reference[1]
    got = torch.load(run / "scores.pt", weights_only=True)
    assert torch.equal(got["scores"], ref["scores"])  # bit for bit
    assert torch.equal(got["phi"], ref["phi"])
    assert torch.equal(got["target_indices"], ref["target_indices"]) and torch.equal(got["train_indices"], ref["train_indices"])
    meta = json.loads((run / "magic.json").read_text())
    assert meta["target_indices"] == [0, 1, 2, 3, 4] and meta["settings"]["chunks"] == 3


def said(res, *needles: str) -> bool:
    """Every needle is in the command's output, whatever rich's line wrapping did (whitespace ignored)."""
    text = "".join(res.output.split())
    return all("".join(n.split()) in text for n in needles)


def test_split_targets_keeps_order_and_the_short_last_chunk():
    assert split_targets([0, 1, 2, 3, 4], 2) == [[0, 1], [2, 3], [4]]
    assert split_targets([7], 10) == [[7]]
    with pytest.raises(ValueError, match="--chunk"):
        split_targets([1, 2], 0)


def test_chunked_local_executor_equals_one_unchunked_run(config, reference, tmp_path):
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", "local", "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["targets"] == [0, 1, 2, 3, 4] and not summary["reused_scores"]
    assert summary["matches_trained_run"] is True  # every chunk's replay ended on the trained run's weights
    assert_same_scores(run, reference)
    assert sorted(p.name for p in (run / CHUNK_DIR).glob("chunk-*.pt")) == [f"chunk-0000{k}.pt" for k in (1, 2, 3)]
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", "local", "--out", str(run), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["reused_scores"]  # the merged scores are served again


def test_a_partial_run_resumes_and_only_computes_the_missing_chunks(config, reference, tmp_path):
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--index", "2"])  # one task, then killed
    assert res.exit_code == 0 and "MAGIC chunk 2/3: computed" in res.output, res.output
    (run / CHUNK_DIR / "chunk-00003.pt.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves at most
    stamp = (run / CHUNK_DIR / "chunk-00002.pt").stat().st_mtime_ns
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--json"])  # --chunk alone: local
    assert res.exit_code == 0, res.output
    assert (run / CHUNK_DIR / "chunk-00002.pt").stat().st_mtime_ns == stamp
    assert_same_scores(run, reference)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--index", "2"])
    assert res.exit_code == 0 and "MAGIC chunk 2/3: skipped" in res.output


def test_mismatched_chunks_and_requests_are_refused(config, reference, tmp_path):
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", "local", "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    (run / "magic.json").unlink()
    path = run / CHUNK_DIR / "chunk-00002.pt"
    good = torch.load(path, weights_only=True)
    torch.save({**good, "provenance": {**good["provenance"], "config": "0" * 16}}, path)  # from another run config
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run)])
    assert res.exit_code == 2 and said(res, "chunk-00002.pt", "config", "never")
    torch.save({**good, "target_indices": torch.tensor([2, 9])}, path)  # other targets
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run)])
    assert res.exit_code == 2 and said(res, "chunk-00002.pt", "targets [2, 3]")
    torch.save({**good, "scores": good["scores"][:-1]}, path)  # a row short
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run)])
    assert res.exit_code == 2 and said(res, "shape")
    torch.save(good, path)
    res = cli.invoke(app, ["magic", str(config), *ARGS, "--chunk", "3", "--out", str(run)])  # another chunking
    assert res.exit_code == 2 and said(res, "another request", "chunk (2 there, 3 asked)")
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--measure", "margin", "--out", str(run), "--index", "1"])
    assert res.exit_code == 2 and said(res, "measurement")
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--index", "1", "--set", "train.epochs=1"])
    assert res.exit_code == 2 and said(res, "train.epochs", "cannot compute MAGIC chunks")
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--index", "4"])
    assert res.exit_code == 2 and said(res, "1..3")
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--out", str(run), "--executor", "pbs"])
    assert res.exit_code == 2 and said(res, "--executor must be one of")


@pytest.mark.parametrize("executor, var", [("slurm", "SLURM_ARRAY_TASK_ID"), ("sge", "SGE_TASK_ID")])
def test_array_script_tasks_resume_and_merge_to_the_unchunked_scores(config, reference, tmp_path, monkeypatch,
                                                                      executor, var):
    """Run the job script's tasks as the scheduler would (task variable set), one of them twice, then merge."""
    monkeypatch.chdir(tmp_path)
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", executor, "--dry-run", "--max-concurrent", "2",
                           "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    sub = json.loads(res.stdout)
    assert sub["tasks"] == 3 and sub["chunks"] == [1, 2, 3] and not sub["submitted"]
    text = Path(sub["script"]).read_text()
    assert ("#SBATCH --array=1-3%2" in text) if executor == "slurm" else ("#$ -t 1-3" in text and "#$ -tc 2" in text)
    task = text.splitlines()[-1]
    assert " -m cnnlab magic " in task and "--chunk 2" in task and "--targets 0-4" in task and "--index" in task
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    seen = set()
    for k in (1, 3, 3, 2):  # task 3 twice: a rerun task finds its chunk and computes nothing
        proc = subprocess.run(["bash", sub["script"]], env={**env, var: str(k)}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"MAGIC chunk {k}/3: {'skipped' if k in seen else 'computed'}" in proc.stdout
        seen.add(k)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", executor, "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output  # nothing pending: merged, nothing submitted
    assert_same_scores(run, reference)


def test_chunks_on_a_local_ray_equal_the_unchunked_scores(config, reference, tmp_path):
    pytest.importorskip("ray")
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", "ray", "--workers", "2", "--out", str(run),
                           "--json"])
    assert res.exit_code == 0, res.output
    assert_same_scores(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["slurm", "sge"])
def test_chunks_on_a_real_scheduler_equal_the_unchunked_scores(config, reference, tmp_path, monkeypatch, executor):
    from test_experiments_cluster import require_scheduler

    require_scheduler(executor)
    monkeypatch.chdir(tmp_path)
    run = trained_run(reference, tmp_path)
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", executor, "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    sub = json.loads(res.stdout)
    assert sub["submitted"]
    deadline = time.time() + 400
    while len(list((run / CHUNK_DIR).glob("chunk-*.pt"))) < 3 and time.time() < deadline:
        time.sleep(1)
    assert len(list((run / CHUNK_DIR).glob("chunk-*.pt"))) == 3, list((Path(sub["script"]).parent / "logs").glob("*"))
    res = cli.invoke(app, ["magic", str(config), *CHUNKED, "--executor", executor, "--out", str(run), "--json"])
    assert res.exit_code == 0, res.output
    assert_same_scores(run, reference)


def test_a_new_array_engine_module_is_an_attribution_executor(monkeypatch):
    """A job-array scheduler registered in one module (here, in the test) is accepted by lds/magic --executor."""
    from cnnlab.experiments.attribution_jobs import attribution_executors, check_attribution_executor
    from cnnlab.experiments.executors.array import ArrayExecutor
    from cnnlab.experiments.executors.base import EXECUTORS

    class PBSExecutor(ArrayExecutor):
        name = "pbs"
        tool = "PBS"
        description = "PBS job array"
        task_var = "PBS_ARRAY_INDEX"
        submit_argv = ("qsub",)
        directive = "#PBS"

    monkeypatch.setattr(EXECUTORS, "_entries", {**EXECUTORS._entries, "pbs": PBSExecutor})
    assert {"local", "sge", "slurm", "ray", "pbs"} <= set(attribution_executors())
    check_attribution_executor("pbs")
    with pytest.raises(ValueError, match="--executor must be one of .*pbs.*got 'kube'"):
        check_attribution_executor("kube")
