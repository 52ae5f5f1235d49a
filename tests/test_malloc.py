"""The Trainer's C-allocator choice: CPU runs keep freed memory for reuse (glibc), CNNLAB_MALLOC overrides it,
and result.json says which allocator ran and why."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import torch

from cnnlab.engine import Trainer, load_config
from cnnlab.engine.config import ConfigError
from cnnlab.engine.setup import MALLOC_ENV, apply_malloc

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"

FAULTS = textwrap.dedent("""
    import resource, sys, torch
    from cnnlab.utils.memory import retain_freed_memory
    if sys.argv[1] == "retain":
        assert retain_freed_memory()[0]
    for _ in range(10):  # 64 MiB blocks, touched and freed (glibc needs a few to coalesce the freed ones)
        torch.empty(1 << 24).fill_(1.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.empty(1 << 24).fill_(1.0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (mallopt)")
def test_retained_memory_is_reused_without_faulting_it_in_again():
    pages = 5 * (64 << 20) // 4096  # what five fresh 64 MiB blocks fault in
    system, retained = _page_faults("system"), _page_faults("retain")
    assert system > pages // 2, system  # glibc's default: each block is a fresh mmap
    assert retained < pages // 20, (retained, system)  # retained: the same heap pages, already resident


def test_cpu_runs_retain_unless_the_environment_says_system(monkeypatch):
    monkeypatch.delenv(MALLOC_ENV, raising=False)
    allocator, why = apply_malloc(torch.device("cpu"))
    assert allocator == ("retain" if GLIBC else "system") and why.startswith("auto:")
    assert apply_malloc(torch.device("cuda")) == ("system", "auto: left as it is for a cuda run")
    monkeypatch.setenv(MALLOC_ENV, "system")
    assert apply_malloc(torch.device("cpu")) == ("system", f"set by {MALLOC_ENV}=system")
    monkeypatch.setenv(MALLOC_ENV, "Retain")
    assert apply_malloc(torch.device("meta"))[1].startswith(f"set by {MALLOC_ENV}=retain")


def test_a_bad_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv(MALLOC_ENV, "jemalloc")
    with pytest.raises(ConfigError, match=f"{MALLOC_ENV}='jemalloc': expected retain, system or auto"):
        apply_malloc(torch.device("cpu"))
    cfg = load_config(None, ["train.epochs=1", "train.device=cpu", "model.options.widths=[8,16]"])
    with pytest.raises(ConfigError, match=MALLOC_ENV):
        Trainer(cfg, None, progress=False)


def test_result_records_the_allocator(monkeypatch, tmp_path):
    monkeypatch.setenv(MALLOC_ENV, "system")
    cfg = load_config(None, ["train.epochs=1", "train.batch_size=64", "train.threads=1", "train.device=cpu",
                             "model.options.widths=[8,16]", "callbacks.curves=false", "data.subset=256"])
    result = Trainer(cfg, tmp_path / "run", progress=False).fit()
    assert result["malloc"] == {"allocator": "system", "reason": f"set by {MALLOC_ENV}=system"}


@pytest.mark.filterwarnings("ignore:not used by:UserWarning")
def test_es_runs_choose_and_record_the_allocator_too(monkeypatch):
    from pathlib import Path

    from cnnlab.population.config import ESRunConfig, load
    from cnnlab.population.es_run import ESRun

    cfg = load(ESRunConfig, Path(__file__).resolve().parent.parent / "configs" / "es_digits.yaml",
               ["es.generations=1", "es.batch_size=16", "es.population=4", "es.eval_batch_size=400",
                "es.bn_calibration_batches=1", "model.options.widths=[4,8]", "es.threads=1"])
    monkeypatch.setenv(MALLOC_ENV, "system")
    assert ESRun(cfg).run(progress=False)["malloc"] == {"allocator": "system", "reason": f"set by {MALLOC_ENV}=system"}
    monkeypatch.setenv(MALLOC_ENV, "tcmalloc")
    with pytest.raises(ConfigError, match=MALLOC_ENV):
        ESRun(cfg)  # refused before anything runs


def test_cli_refusal_is_one_line_and_leaves_no_run_directory(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from cnnlab.cli import app

    monkeypatch.setenv(MALLOC_ENV, "jemalloc")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--set", "train.epochs=1", "--set", "train.device=cpu", "--out", str(out)])
    assert res.exit_code == 2 and f"{MALLOC_ENV}='jemalloc'" in res.output and "Traceback" not in res.output
    assert not out.exists()  # created for the run's lock, removed again: nothing was written
