"""The seams split out of the Trainer: the checkpoint module (format, round trip, weights, callback states),
the version stamp, the user-route builder's refusals, the progress lines, and the device resolver."""

import io

import pytest
import torch
from torch import nn

from cnnlab.engine import Callback, ConfigError, Trainer, load_config
from cnnlab.engine import checkpoint as ckpt_mod
from cnnlab.engine import trainer as trainer_mod
from cnnlab.engine.callbacks import EarlyStopping, ModelCheckpoint
from cnnlab.engine.checkpoint import (CHECKPOINT_FORMAT, checkpoint_weights, load_checkpoint, model_from_state,
                                      restore_callbacks, save_checkpoint)
from cnnlab.engine.progress import EpochProgress
from cnnlab.engine.versions import versions
from cnnlab.utils.tagged import TaggedFileError

FAST = ["train.epochs=1", "train.batch_size=64", "train.threads=1", "model.options.widths=[8,16]"]


def test_moved_names_are_still_importable_from_the_trainer_module():
    for name in ("CHECKPOINT_FORMAT", "load_checkpoint", "model_from_state"):
        assert getattr(trainer_mod, name) is getattr(ckpt_mod, name)
    assert trainer_mod.versions is versions


def test_checkpoint_round_trip_through_the_module(tmp_path):
    state = {"params": {"w": torch.randn(3, 2)}, "buffers": {"b": torch.arange(4.0)}, "opt_state": {}, "step": 7}
    ema = {"w": torch.randn(3, 2)}
    path = tmp_path / "c.pt"
    save_checkpoint(path, epoch=3, state=state, ema=ema, schedule={"s": 1}, callbacks=[EarlyStopping("train_loss")],
                    history=[{"epoch": 1}], elapsed=1.5, config={"name": "x"})
    raw = torch.load(path, weights_only=True)  # plain data only: loads without pickled code
    assert raw["format"] == CHECKPOINT_FORMAT == "cnnlab-checkpoint-v1"
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["history"] == [{"epoch": 1}] and ckpt["elapsed"] == 1.5
    assert torch.equal(ckpt["state"]["params"]["w"], state["params"]["w"])
    assert ckpt["callbacks"][0]["callback"] == "EarlyStopping"
    params, buffers = checkpoint_weights(ckpt)
    assert torch.equal(params["w"], ema["w"]) and torch.equal(buffers["b"], state["buffers"]["b"])  # EMA preferred
    ckpt["ema"] = None
    assert torch.equal(checkpoint_weights(ckpt)[0]["w"], state["params"]["w"])
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temp file, renamed


def test_trainer_checkpoint_reloads_into_the_trained_model(tmp_path):
    trainer = Trainer(load_config(None, FAST), tmp_path / "run", progress=False)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["config"] == trainer.config.to_dict()
    fresh = Trainer(load_config(None, [*FAST, "seed=5"]), None, progress=False).model
    model = model_from_state(fresh, *checkpoint_weights(ckpt))
    assert not model.training
    x = torch.rand(4, *trainer.parts.dataset.train.images.shape[1:])
    with torch.no_grad():
        assert torch.equal(model(x), trainer.trained_model()(x))


def test_foreign_missing_and_corrupt_files_are_refused_naming_the_file(tmp_path):
    foreign = tmp_path / "scores.pt"
    torch.save({"format": "cnnlab-scores-v1", "scores": torch.zeros(2)}, foreign)
    with pytest.raises(ValueError, match=r"scores\.pt is not a cnnlab-checkpoint-v1 checkpoint: its format tag is 'cnnlab-scores-v1'"):
        load_checkpoint(foreign)
    untagged = tmp_path / "state_dict.pt"
    torch.save(nn.Linear(2, 2).state_dict(), untagged)
    with pytest.raises(TaggedFileError, match=r"state_dict\.pt is not a cnnlab-checkpoint-v1 checkpoint: it has no cnnlab format tag"):
        load_checkpoint(untagged)
    with pytest.raises(TaggedFileError, match=r"checkpoint .*nothere\.pt does not exist"):
        load_checkpoint(tmp_path / "nothere.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00 truncated")
    with pytest.raises(TaggedFileError, match=r"cannot read checkpoint .*bad\.pt"):
        load_checkpoint(bad)


class _Count(Callback):
    def __init__(self, tag):
        self.tag, self.n = tag, 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def test_callback_states_go_to_the_callback_of_their_class_and_rank():
    saved = [{"callback": "_Count", "state": {"n": 1}}, {"callback": "EarlyStopping", "state": EarlyStopping("train_loss").state_dict()},
             {"callback": "_Count", "state": {"n": 2}}]
    a, b, c = _Count("a"), ModelCheckpoint(monitor="train_loss"), _Count("c")
    restore_callbacks([b, a, c], saved)  # another order, an EarlyStopping dropped, a ModelCheckpoint added
    assert (a.n, c.n) == (1, 2)
    old = _Count("old")
    restore_callbacks([old], [{"n": 9}])  # checkpoints written before states were named: by position
    assert old.n == 9


def test_version_stamp_names_the_stack():
    v = versions()
    assert set(v) == {"cnnlab", "torch", "numpy", "python", "platform"} and v["torch"] == torch.__version__


def test_resume_into_another_config_names_the_key(tmp_path):
    Trainer(load_config(None, FAST), tmp_path / "r", progress=False).fit()
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"cannot resume .*r: its config differs from this one at optim\.lr \(0\.05 -> 0\.2\)\. Nothing was changed"):
        Trainer(load_config(None, [*FAST, "optim.lr=0.2"]), tmp_path / "r", progress=False).fit(resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before  # config.yaml checked first
    (tmp_path / "r" / "config.yaml").unlink()  # only the checkpoint still knows the config it was trained with
    with pytest.raises(ConfigError, match=r"cannot resume .*r: its config differs from this one at optim\.lr \(0\.05 -> 0\.2\)"):
        Trainer(load_config(None, [*FAST, "optim.lr=0.2"]), tmp_path / "r", progress=False).fit(resume=True)


def _run_bar(bar, epochs=2, steps=3):
    with bar:
        for epoch in range(epochs):
            bar.start_epoch(epoch)
            for i in range(steps):
                bar.update(i + 1, 0.5, 0.75, 100.0)
            bar.end_epoch({"train_loss": 0.5, "val_acc": 0.75, "images_per_s": 100.0})


def test_plain_progress_lines_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.delenv("CNNLAB_PROGRESS_INTERVAL", raising=False)
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    _run_bar(EpochProgress(True, epochs=2, steps=3))  # auto: a StringIO is no terminal
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("training steps: 1/6 (17%)")  # the first logged step, then throttled (30 s)
    assert [line.split(":")[0] for line in lines[1:]] == ["epoch 1/2", "epoch 2/2"]
    assert "val_acc 0.7500" in lines[-1] and "\x1b[" not in err.getvalue()  # plain text, no terminal codes

    err.truncate(0), err.seek(0)
    _run_bar(EpochProgress(True, epochs=2, steps=3, interval_s=0))  # a line at every logged step but the run's last
    steps = [line for line in err.getvalue().splitlines() if line.startswith("training steps")]
    assert [s.split(":")[1].split()[0] for s in steps] == ["1/6", "2/6", "3/6", "4/6", "5/6"]
    assert "ETA" in steps[-1]

    err.truncate(0), err.seek(0)
    _run_bar(EpochProgress(False, epochs=2, steps=3))
    assert err.getvalue() == ""  # disabled: nothing


def test_progress_bar_goes_to_stderr_and_leaves_stdout_clean(capsys):
    _run_bar(EpochProgress(True, epochs=1, steps=3, mode="bar"))
    out, err = capsys.readouterr()
    assert out == "" and "epoch 1/1" in err and "val_acc 0.7500" in err
    with pytest.raises(ValueError, match="progress mode"):
        EpochProgress(True, 1, 1, mode="fancy")


def test_unknown_or_missing_device_is_a_config_error_naming_the_key():
    from cnnlab.engine.setup import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="device must be"):
        load_config(None, ["train.device=gpu0"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"train\.device: 'cuda:1' asked for, but CUDA is not available"):
            resolve_device("cuda:1")
