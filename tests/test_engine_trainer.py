"""Trainer: determinism, exact resume after SIGKILL, callbacks, metrics, divergence, run directory, DDP."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from cnnlab.engine import Callback, ConfigError, Trainer, TrainingDiverged, load_config, load_run
from cnnlab.engine.metrics import confusion_matrix, macro_prf
from cnnlab.engine.trainer import load_checkpoint

FAST = ["train.epochs=2", "train.batch_size=64", "train.threads=1", "model.options.widths=[8,16]"]


def _cfg(*extra):
    return load_config(None, [*FAST, *extra])


def test_same_config_twice_is_bitwise_identical(tmp_path):
    a = Trainer(_cfg("data.flip=random", "data.crop_padding=1"), tmp_path / "a", progress=False)
    b = Trainer(_cfg("data.flip=random", "data.crop_padding=1"), tmp_path / "b", progress=False)
    ra, rb = a.fit(), b.fit()
    for n in a.state.params:
        assert torch.equal(a.state.params[n], b.state.params[n]), n
    assert ra["final"]["test_loss"] == rb["final"]["test_loss"]
    c = Trainer(_cfg("seed=1"), None, progress=False)
    c.fit()
    assert not torch.equal(c.state.params["fc.weight"], a.state.params["fc.weight"])


def test_run_directory_contents_and_safe_checkpoints(tmp_path):
    run = tmp_path / "run"
    result = Trainer(_cfg("train.clean_train_eval=true", "callbacks.checkpoint.top_k=1", "data.val_split=0.2"), run, progress=False).fit()
    assert (run / "config.yaml").exists() and (run / "result.json").exists()
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [rec["epoch"] for rec in lines] == [1, 2]
    assert {"val_acc", "val_top5", "val_f1", "gen_gap", "images_per_s", "peak_rss_mb"} <= set(lines[-1])
    assert not any(k.startswith("test_") for rec in lines for k in rec)  # the test split is evaluated once, at the end
    assert {"last", "best"} <= set(result["test"]) and result["best"]["test"] == result["test"]["best"]
    assert result["status"] == "completed" and result["best"]["checkpoint"].startswith("checkpoints/epoch")
    assert np.array(result["confusion_matrix"]).sum() == 360
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 2
    loaded = load_run(run)
    with torch.no_grad():
        pred = loaded.model(loaded.eval_inputs("test")).argmax(1)
    acc = (pred == loaded.dataset.test.labels).double().mean().item()
    assert acc == pytest.approx(result["final"]["test_acc"], abs=1e-12)  # the reloaded model is the trained one
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_cfg(), run, progress=False).fit()


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        load_checkpoint(p)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise_identical(tmp_path):
    overrides = ["train.epochs=12", "train.batch_size=32", "train.threads=1", "model.options.widths=[8,16]"]
    base = [sys.executable, "-m", "cnnlab", "train", *overrides, "--no-progress", "--out"]
    subprocess.run(base + [str(tmp_path / "ref")], check=True, capture_output=True)
    ref_params = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["state"]["params"]
    run = tmp_path / "killed"
    cmd = base + [str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "result.json").exists(), "the run finished before it could be killed"
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for n, p in ref_params.items():
        assert torch.equal(ckpt["state"]["params"][n], p), n
    lines = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]
    assert lines == list(range(1, 13))


def test_resume_refuses_a_changed_config(tmp_path):
    Trainer(_cfg(), tmp_path / "r", progress=False).fit()
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        Trainer(_cfg("optim.lr=0.01"), tmp_path / "r", progress=False).fit(resume=True)


def test_divergence_writes_status_and_raises(tmp_path):
    with pytest.raises(TrainingDiverged):
        Trainer(_cfg("optim.lr=1e6", "schedule.name=constant"), tmp_path / "d", progress=False).fit()
    assert json.loads((tmp_path / "d" / "result.json").read_text())["status"] == "diverged"


def test_early_stopping_and_user_callbacks():
    seen = []

    class Recorder(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            seen.append((epoch, metrics["test_acc"]))

    cfg = _cfg("train.epochs=6", "callbacks.early_stopping.monitor=train_loss", "callbacks.early_stopping.mode=max",
               "callbacks.early_stopping.patience=1")
    t = Trainer(cfg, None, callbacks=[Recorder()], progress=False)
    result = t.fit()
    assert result["stopped_early"] and result["epochs_completed"] == 3  # train loss falls: no "max" improvement
    assert [e for e, _ in seen] == [0, 1, 2]


def test_bad_monitor_names_available_metrics():
    with pytest.raises(KeyError, match="test_acc"):
        Trainer(_cfg("callbacks.early_stopping.monitor=nope"), None, progress=False).fit()


def test_ema_tta_bf16_channels_last_and_adamw_paths_train():
    for extra in (["train.ema.decay=0.9"], ["train.tta_flip=true", "optim.name=adamw", "optim.lr=0.01"],
                  ["train.precision=bf16", "train.channels_last=true"], ["schedule.name=plateau", "schedule.patience=0", "data.val_split=0.2"]):
        result = Trainer(_cfg(*extra), None, progress=False).fit()
        assert result["final"]["test_acc"] > 0.3, extra


def test_config_errors_name_the_key_before_any_compute():
    with pytest.raises(ConfigError, match=r"optim\.momentum"):
        load_config(None, ["optim.momentum=2"])
    with pytest.raises(ConfigError, match=r"train\.epochz: unknown key; allowed here: .*epochs"):
        load_config(None, ["train.epochz=2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"model\.options.*accepted"):
        Trainer(_cfg("model.options.depth=3"), None, progress=False)
    with pytest.raises(ConfigError, match=r"model\.name.*Did you mean"):
        Trainer(_cfg("model.name=tiny_cn"), None, progress=False)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent.yaml")


def test_macro_metrics_match_sklearn():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (200,), generator=g)
    pred = torch.where(torch.rand(200, generator=g) < 0.6, y, torch.randint(0, 5, (200,), generator=g))
    p, r, f, _ = precision_recall_fscore_support(y.numpy(), pred.numpy(), average="macro", zero_division=0)
    ours = macro_prf(confusion_matrix(pred, y, 5))
    assert ours == pytest.approx({"precision": p, "recall": r, "f1": f})


@pytest.mark.slow
def test_cli_default_train_reaches_95_percent(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--out", str(tmp_path / "q"), "--json", "train.threads=1"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["final"]["test_acc"] >= 0.95


def test_cli_divergence_exits_3_without_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cnnlab", "train", "optim.lr=1e6", "schedule.name=constant", *FAST,
                          "--out", str(tmp_path / "d")], capture_output=True, text=True)
    assert out.returncode == 3 and "diverged" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_ddp_two_cpu_ranks_gloo(tmp_path):
    overrides = ["train.epochs=3", "train.batch_size=64", "train.threads=1", "model.options.widths=[8,16]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "cnnlab", "train", *overrides, "--out", str(tmp_path / "ddp"), "--no-progress", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "result.json").read_text())
    assert ddp["world_size"] == 2 and ddp["ranks_identical"] is True
    single = Trainer(load_config(None, overrides), None, progress=False).fit()
    assert abs(ddp["final"]["test_acc"] - single["final"]["test_acc"]) < 0.05


def test_resume_gives_callback_states_to_callbacks_of_the_same_class(tmp_path):
    """Saved callback states are matched by class, so a resume with one callback more or less loses nothing."""

    class Counter(Callback):
        def __init__(self):
            self.epochs = 0

        def on_epoch_end(self, trainer, epoch, metrics):
            self.epochs += 1

        def state_dict(self):
            return {"epochs": self.epochs}

        def load_state_dict(self, state):
            self.epochs = state["epochs"]

    cfg = _cfg("callbacks.checkpoint.top_k=2", "data.val_split=0.2")
    first = Trainer(cfg, tmp_path / "r", progress=False, callbacks=[Counter()])
    first.fit()
    kept = next(cb for cb in first.callbacks if type(cb).__name__ == "ModelCheckpoint").kept
    assert len(kept) == 2
    without = Trainer(cfg, tmp_path / "r", progress=False)  # the extra callback dropped
    without.fit(resume=True)
    assert next(cb for cb in without.callbacks if type(cb).__name__ == "ModelCheckpoint").kept == kept
    counter = Counter()
    again = Trainer(cfg, tmp_path / "r", progress=False, callbacks=[counter])
    again.fit(resume=True)
    assert counter.epochs == 2
