"""Every bad input a clear error: one table of user mistakes across the CLI, each asserting exit code 2,
no traceback, and a message naming the key or file; plus the results that must not be lost."""

import json
import os
import pathlib
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnlab.cli import app

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
FAST = ["train.epochs=1", "train.batch_size=64", "train.threads=1", "model.options.widths=[4,8]"]
POP = ["population.size=2", "population.lr=[0.05,0.05]", "population.backend=loop", "train.epochs=1",
       "model.options.widths=[4,8]"]


def flat(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny fixtures built once: a one-epoch trained run and a few bad files."""
    d = tmp_path_factory.mktemp("bad")
    run = d / "run"
    res = runner.invoke(app, ["train", *FAST, "--out", str(run), "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    (d / "notutf8.yaml").write_bytes(b"name: caf\xe9\n")
    (d / "file.txt").write_text("not a directory\n")
    (d / "empty").mkdir()
    (d / "locked.yaml").write_text("name: x\n")
    (d / "inf.yaml").write_text("optim: {lr: .inf}\n")
    (d / "nan.yaml").write_text("optim: {lr: .nan}\n")
    (d / "bad.yaml").write_text("train: {epochs: [\n")
    (d / "magic.yaml").write_text(yaml.safe_dump({"train": {"epochs": 1, "batch_size": 64, "threads": 1,
                                                            "deterministic": True, "bn_stats": "explicit"},
                                                  "model": {"options": {"widths": [4, 8]}}}))
    sweep = yaml.safe_load((ROOT / "sweeps" / "tiny_ablation.yaml").read_text())
    (d / "sweep_workers.yaml").write_text(yaml.safe_dump({**sweep, "executors": {"local": {"workers": True}}}))
    trunc = d / "truncated"
    shutil.copytree(run, trunc)
    ckpt = trunc / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    corrupt = d / "corrupt"
    shutil.copytree(run, corrupt)
    (corrupt / "result.json").write_text('{"status": "compl')
    return {"d": d, "run": run}


def _without_ray(env, monkeypatch):
    """Ray made unimportable (CI installs it), so the executor's install hint is what the user sees."""
    monkeypatch.setitem(sys.modules, "ray", None)


def _locked(env, monkeypatch):
    """An unreadable config: chmod 000, and (as root, who reads anything) a read that raises EACCES."""
    path = env["d"] / "locked.yaml"
    path.chmod(0)
    if os.geteuid() == 0:
        real = pathlib.Path.read_text

        def read_text(self, *a, **k):
            if self == path:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *a, **k)

        monkeypatch.setattr(pathlib.Path, "read_text", read_text)


S = "{d}/sweep_workers.yaml"
TINY = str(ROOT / "sweeps" / "tiny_ablation.yaml")
POPCFG = str(ROOT / "configs" / "population_digits.yaml")
ESCFG = str(ROOT / "configs" / "es_digits.yaml")

# (id, argv with {d} = the fixture folder and {run} = the trained run, words the message must hold, setup)
CASES = [
    # tracebacks before this table existed
    ("resume-truncated-checkpoint", ["train", *FAST, "--out", "{d}/truncated", "--resume"], ["last.pt"], None),
    ("config-unreadable", ["train", "{d}/locked.yaml"], ["locked.yaml", "Permission denied"], _locked),
    ("config-not-utf8", ["train", "{d}/notutf8.yaml"], ["notutf8.yaml", "UTF-8"], None),
    ("sweep-not-utf8", ["sweep", "plan", "{d}/notutf8.yaml"], ["notutf8.yaml", "UTF-8"], None),
    ("checksums-not-utf8", ["data", "info", "mnist", "--checksums", "{d}/notutf8.yaml"], ["notutf8.yaml", "UTF-8"], None),
    ("data-option-unknown", ["train", *FAST, "data.options.foo=1", "--out", "{d}/o1"], ["foo", "accepted"], None),
    ("out-is-a-file", ["train", *FAST, "--out", "{d}/file.txt"], ["file.txt", "--out"], None),
    ("runs-info-corrupt-result", ["runs", "info", "{d}/corrupt"], ["result.json"], None),
    ("mnist-not-downloaded", ["train", *FAST, "data.name=mnist", "--out", "{d}/o2"],
     ["mnist", "cnnlab data download mnist"], None),
    # silently accepted before
    ("subset-bool", ["train", *FAST, "data.subset=true"], ["data.subset"], None),
    ("int-from-bool", ["train", *FAST, "train.epochs=true"], ["train.epochs"], None),
    ("int-from-string", ["train", *FAST, 'train.epochs="2"'], ["train.epochs", "valid integer"], None),
    ("int-from-float", ["train", *FAST, "train.batch_size=64.0"], ["train.batch_size"], None),
    ("bool-from-int", ["train", *FAST, "train.drop_last=1"], ["train.drop_last", "valid boolean"], None),
    ("bool-from-string", ["train", *FAST, 'train.deterministic="yes"'], ["train.deterministic"], None),
    ("float-from-string", ["train", *FAST, 'optim.lr="0.1"'], ["optim.lr"], None),
    ("population-int-from-bool", ["population", "train", POPCFG, *POP, "population.size=true"], ["population.size"], None),
    ("es-int-from-bool", ["population", "es", ESCFG, "es.generations=true"], ["es.generations"], None),
    ("sweep-executor-int-from-bool", ["sweep", "plan", S], ["executors.local.workers"], None),
    ("lr-inf-override", ["train", *FAST, "optim.lr=.inf"], ["optim.lr", "finite"], None),
    ("lr-inf-yaml", ["train", "{d}/inf.yaml"], ["optim.lr", "finite"], None),
    ("lr-nan-yaml", ["train", "{d}/nan.yaml"], ["optim.lr", "finite"], None),
    ("sweep-indices-reversed", ["sweep", "run", TINY, "--root", "{d}/sw", "--indices", "2-1"], ["--indices", "2-1"], None),
    ("sweep-indices-out-of-range", ["sweep", "run", TINY, "--root", "{d}/sw", "--indices", "60-70"], ["--indices", "1..64"], None),
    ("out-empty", ["train", *FAST, "--out", ""], ["--out"], None),
    ("train-resume-nothing", ["train", *FAST, "--out", "{d}/fresh-train", "--resume"], ["--resume", "fresh-train"], None),
    ("population-resume-nothing", ["population", "train", POPCFG, *POP, "--out", "{d}/fresh-pop", "--resume"],
     ["--resume", "fresh-pop"], None),
    ("es-resume-nothing", ["population", "es", ESCFG, "--out", "{d}/fresh-es", "--resume"], ["--resume", "fresh-es"], None),
    ("magic-targets-huge", ["magic", "{d}/magic.yaml", "--targets", "0-2000000000", "--out", "{d}/m"],
     ["0-2000000000", "test split"], None),
    ("explain-images-huge", ["explain", "{run}", "--images", "0-2000000000", "--no-metrics"], ["0-2000000000"], None),
    ("markup-brackets-kept", ["sweep", "submit", TINY, "--executor", "ray", "--root", "{d}/sw"], ["cnnlab[ray]"], _without_ray),
    ("model-option-bad-list", ["train", *FAST, "model.options.widths=[8, x]"], ["model.options", "widths"], None),
    # handled well before: kept so
    ("unknown-key", ["train", *FAST, "train.epoch=3"], ["train.epoch", "allowed here"], None),
    ("config-missing", ["train", "{d}/nope.yaml"], ["nope.yaml", "does not exist"], None),
    ("config-bad-yaml", ["train", "{d}/bad.yaml"], ["bad.yaml", "not valid YAML"], None),
    ("model-unknown", ["train", *FAST, "model.name=nosuchnet"], ["model.name", "nosuchnet"], None),
    ("data-unknown", ["train", *FAST, "data.name=nosuchdata"], ["data.name", "nosuchdata"], None),
    ("override-not-a-section", ["train", *FAST, "train=3"], ["train"], None),
    ("resume-without-out", ["train", *FAST, "--resume"], ["--resume", "--out"], None),
    ("out-holds-a-run", ["train", *FAST, "--out", "{run}"], ["--resume", "run"], None),
    ("magic-measure", ["magic", "{d}/magic.yaml", "--measure", "accuracy"], ["--measure"], None),
    ("sweep-run-one-index", ["sweep", "run-one", TINY, "--root", "{d}/sw", "--index", "99"], ["--index", "99"], None),
    ("sweep-executor-unknown", ["sweep", "submit", TINY, "--executor", "pbs"], ["--executor", "pbs"], None),
    ("runs-info-not-a-run", ["runs", "info", "{d}/empty"], ["empty", "not a run directory"], None),
    ("runs-clean-what", ["runs", "clean", "{run}", "--what", "everything"], ["--what", "everything"], None),
    ("explain-not-a-run", ["explain", "{d}/empty"], ["empty"], None),
    ("explain-method-unknown", ["explain", "{run}", "--methods", "nosuch"], ["nosuch"], None),
    ("lds-no-scores", ["lds", "{run}"], ["no MAGIC scores"], None),
    ("data-info-unknown", ["data", "info", "nosuchdata"], ["nosuchdata"], None),
    ("data-option-format", ["data", "info", "digits", "--set", "split"], ["--set", "split"], None),
    ("lr-negative", ["train", *FAST, "optim.lr=-1"], ["optim.lr", "greater than 0"], None),
]


@pytest.mark.parametrize("argv,words,setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(env, monkeypatch, tmp_path, argv, words, setup):
    monkeypatch.chdir(tmp_path)  # an input accepted by mistake trains into its own runs/, not the next case's
    if setup is not None:
        setup(env, monkeypatch)
    args = [a.format(d=env["d"], run=env["run"]) for a in argv]
    res = runner.invoke(app, args)
    out = flat(res)
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), \
        f"traceback: {res.exception!r}"
    assert res.exit_code == 2, f"exit {res.exit_code} (accepted silently?): {out[-400:]}"
    assert "error:" in out
    for w in words:
        assert w.format(d=env["d"]) in out, f"{w!r} not named in: {out}"
    assert "not all arguments converted" not in out


def test_resume_at_the_final_epoch_keeps_the_confusion_matrix(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    before = json.loads((run / "result.json").read_text())
    res = runner.invoke(app, ["train", *FAST, "--out", str(run), "--resume", "--no-progress", "--json"])
    assert res.exit_code == 0, res.output
    after = json.loads((run / "result.json").read_text())
    assert after["confusion_matrix"] is not None and after["confusion_matrix"] == before["confusion_matrix"]
    assert after["final"]["test_acc"] == before["final"]["test_acc"]


def test_runs_clean_keeps_the_trained_weights_by_default(env, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(env["run"], run)
    (run / "checkpoints" / "epoch0001.pt").write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    (run / "baselines" / "trak_work").mkdir(parents=True)
    res = runner.invoke(app, ["runs", "clean", str(run)])
    assert res.exit_code == 0 and "--what all" in flat(res), res.output
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "checkpoints" / "epoch0001.pt").exists()
    assert not (run / "baselines" / "trak_work").exists()
    res = runner.invoke(app, ["explain", str(run), "--images", "0-1", "--methods", "saliency", "--no-metrics"])
    assert res.exit_code == 0, res.output  # the weights are still there to explain
    res = runner.invoke(app, ["runs", "clean", "--help"])
    assert "whole run directory" in flat(res)


def test_a_diverged_population_member_is_marked_and_left_out(tmp_path):
    out = tmp_path / "pop"
    res = runner.invoke(app, ["population", "train", POPCFG, *POP, "population.lr=[0.05,1.0e+30]", "--out", str(out),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "member(s) 1 diverged" in flat(res)
    result = json.loads((out / "result.json").read_text())
    m0, m1 = result["members"]
    assert m0["status"] == "completed" and m1["status"] == "diverged" and result["diverged_members"] == [1]
    assert result["summary"]["members_counted"] == 1 and result["summary"]["best_member"] == 0
    assert result["summary"]["test_acc_mean"] == pytest.approx(m0["test_acc"], abs=1e-12)
