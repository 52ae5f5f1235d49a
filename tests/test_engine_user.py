"""The open Trainer: validation split, bring-your-own model/data/optimizer/loss, the seed-003 API, longer resumes."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from cnnlab.data import load_dataset
from cnnlab.data.dataset import Split
from cnnlab.engine import Callback, ConfigError, Trainer, load_config
from cnnlab.engine.callbacks import EarlyStopping, LRSchedulerCallback, ModelCheckpoint
from cnnlab.engine.setup import build_run, val_indices

FAST = ["train.epochs=2", "train.batch_size=64", "train.threads=1", "model.options.widths=[8,16]"]


def _cfg(*extra):
    return load_config(None, [*FAST, *extra])


def test_val_split_is_stratified_seeded_and_disjoint_from_training():
    cfg = _cfg("data.val_split=0.2")
    parts = build_run(cfg)
    labels = parts.dataset.train.labels
    held = parts.val_indices
    assert held is not None and len(held) == round(0.2 * len(labels))
    share = torch.bincount(labels[held], minlength=10).double() / torch.bincount(labels, minlength=10).double()
    assert torch.allclose(share, torch.full((10,), 0.2, dtype=torch.float64), atol=0.02)  # stratified
    assert not set(held.tolist()) & set(parts.train_loader.indices.tolist())
    assert len(held) + parts.train_loader.num_examples == len(labels)
    assert torch.equal(held, val_indices(_cfg("data.val_split=0.2", "seed=5"), labels))  # fixed across run seeds
    assert not torch.equal(held, val_indices(_cfg("data.val_split=0.2", "data.val_seed=1"), labels))
    assert len(val_indices(_cfg("data.val_split=100"), labels)) == 100
    sub = build_run(_cfg("data.val_split=100", "data.subset=200")).train_loader.indices
    assert len(sub) == 200 and not set(sub.tolist()) & set(val_indices(_cfg("data.val_split=100"), labels).tolist())


def test_val_monitors_need_a_val_split_and_test_monitors_warn():
    with pytest.raises(ConfigError, match="data.val_split"):
        Trainer(_cfg("callbacks.early_stopping.patience=1"), None, progress=False)
    with pytest.warns(UserWarning, match="selects on the test split"):
        Trainer(_cfg("callbacks.checkpoint.monitor=test_acc"), None, progress=False)
    with pytest.raises(ConfigError, match="val_split"):
        load_config(None, ["data.val_split=1.5"])


class _WatchedSplit(Split):
    """A test split that logs every read of its tensors."""

    reads: list = []

    def __getattribute__(self, name):
        if name in ("images", "labels"):
            _WatchedSplit.reads.append(name)
        return object.__getattribute__(self, name)


def test_validation_based_selection_never_reads_the_test_split_before_the_end(tmp_path):
    ds = load_dataset("digits")
    ds.test = _WatchedSplit(ds.test.images, ds.test.labels)
    _WatchedSplit.reads = []
    reads_at_epoch_end = []

    class Spy(Callback):
        def on_epoch_end(self, trainer, epoch, metrics):
            reads_at_epoch_end.append(len(_WatchedSplit.reads))
            assert not any(k.startswith("test_") for k in metrics)

    cfg = _cfg("train.epochs=4", "data.val_split=0.2", "callbacks.early_stopping.patience=0",
               "callbacks.early_stopping.monitor=val_acc", "callbacks.early_stopping.mode=max",
               "callbacks.checkpoint.top_k=2", "schedule.name=plateau", "schedule.patience=0")
    result = Trainer(cfg, tmp_path / "r", dataset=ds, callbacks=[Spy()], progress=False).fit()
    assert reads_at_epoch_end and all(n == 0 for n in reads_at_epoch_end)  # untouched while selecting
    assert _WatchedSplit.reads  # ... and evaluated at the end
    assert result["selection"] == "val" and result["best"]["monitor"] == "val_acc"
    assert 0 < result["test"]["last"]["test_acc"] <= 1 and 0 < result["best"]["test"]["test_acc"] <= 1
    assert result["final"]["test_acc"] == result["test"]["last"]["test_acc"]
    assert sum(map(sum, result["confusion_matrix"])) == len(ds.test.labels)


class _EpochOrder(Sampler):
    """Yields the config route's batch order, epoch after epoch."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        order = self.loader.order(self.epoch).tolist()
        self.epoch += 1
        bs = self.loader.batch_size
        return iter([order[i:i + bs] for i in range(0, len(order), bs)])

    def __len__(self):
        return len(self.loader)


def test_user_module_adamw_dataloader_trains_to_the_config_routes_weights():
    cfg = _cfg("optim.name=adamw", "optim.lr=0.003", "optim.weight_decay=0.05", "schedule.name=constant",
               "train.precision=fp32")  # the user route below runs fp32 (use_amp=False)
    reference = Trainer(cfg, None, progress=False)
    parts = build_run(cfg)
    model = copy.deepcopy(parts.model)  # the same initial weights, as a plain nn.Module
    x = parts.augment.eval_transform(parts.dataset.train.images)  # normalised, no augmentation (as the config)
    loader = DataLoader(TensorDataset(x, parts.dataset.train.labels), batch_sampler=_EpochOrder(parts.train_loader))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=0.003)
    mine = Trainer(model=model, optimizer=opt, train_loader=loader, criterion=nn.CrossEntropyLoss(), epochs=2)
    assert type(mine.parts.settings.optimizer).__name__ == "Adam"  # mapped exactly onto the functional step
    mine.fit()
    reference.fit()
    for n, p in model.named_parameters():  # the user's own module holds the trained weights
        torch.testing.assert_close(p.detach(), reference.state.params[n], rtol=1e-5, atol=1e-6)
    for n, b in model.named_buffers():
        torch.testing.assert_close(b, reference.state.buffers[n], rtol=1e-5, atol=1e-6)
    name = next(n for n, p in model.named_parameters() if p is decay[0])
    state = opt.state[decay[0]]  # and the torch optimizer's state is current
    assert int(state["step"]) == reference.state.step
    torch.testing.assert_close(state["exp_avg"], reference.state.opt_state[name]["exp_avg"], rtol=1e-4, atol=1e-7)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _digits_tensors():
    ds = load_dataset("digits")
    return ds.train.images, ds.train.labels, ds.test.images, ds.test.labels


def test_other_optimizers_run_their_own_step_and_any_loss_callable():
    xtr, ytr, xte, yte = _digits_tensors()
    model = _mlp()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    calls = []

    def loss(logits, y):
        calls.append(1)
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.05)

    t = Trainer(model=model, optimizer=opt, train_loader=(xtr, ytr), val_loader=(xte, yte), criterion=loss,
                batch_size=64, epochs=3)
    assert type(t.parts.settings.optimizer).__name__ == "TorchOptimizerStep"
    result = t.fit()
    assert calls and result["final"]["val_acc"] > 0.8 and opt.state  # the optimizer kept its own state
    with torch.no_grad():
        acc = (model(xte.float() / 255).argmax(1) == yte).double().mean().item()
    assert acc == pytest.approx(result["final"]["val_acc"], abs=1e-6)  # the user's module is the trained one


def test_magic_and_populations_refuse_an_optimizer_without_a_functional_step():
    from cnnlab.attribution.magic import prepare_config
    from cnnlab.population.config import PopulationRunConfig

    cfg = _cfg("optim.torch_class=torch.optim.RMSprop")
    with pytest.raises(ConfigError, match="RMSprop.*SGD, Adam or AdamW"):
        prepare_config(cfg)
    with pytest.raises(ValueError, match="RMSprop"):
        PopulationRunConfig.model_validate({"optim": {"torch_class": "torch.optim.RMSprop"}})
    prepare_config(_cfg("optim.torch_class=torch.optim.SGD", "optim.options={momentum: 0.9}"))  # maps exactly: fine
    with pytest.raises(ConfigError, match="optim.torch_class"):
        Trainer(_cfg("optim.torch_class=torch.optim.Nope"), None, progress=False)
    result = Trainer(_cfg("optim.torch_class=torch.optim.RMSprop", "optim.lr=0.003"), None, progress=False).fit()
    assert result["final"]["test_acc"] > 0.5


def test_config_torch_sgd_equals_the_builtin_sgd():
    a = Trainer(_cfg("optim.torch_class=torch.optim.SGD", "optim.options={momentum: 0.9}"), None, progress=False)
    b = Trainer(_cfg(), None, progress=False)
    a.fit(), b.fit()
    for n in b.state.params:
        torch.testing.assert_close(a.state.params[n], b.state.params[n], rtol=0, atol=0)


def test_accumulating_n_batches_equals_one_batch_n_times_larger():
    xtr, ytr, _, _ = _digits_tensors()
    xtr, ytr = xtr[:256], ytr[:256]
    order = [list(range(i, i + 16)) for i in range(0, 256, 16)]
    small = DataLoader(TensorDataset(xtr, ytr), batch_sampler=order)
    big = DataLoader(TensorDataset(xtr, ytr), batch_sampler=[sum(order[i:i + 4], []) for i in range(0, 16, 4)])
    m1, m2 = _mlp(), _mlp()
    t1 = Trainer(model=m1, optimizer=torch.optim.SGD(m1.parameters(), lr=0.1, momentum=0.9), train_loader=small,
                 gradient_accumulation_steps=4, epochs=1)
    t2 = Trainer(model=m2, optimizer=torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9), train_loader=big, epochs=1)
    t1.fit(), t2.fit()
    assert t1.state.step == t2.state.step == 4
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Detected call of")  # the reference schedulers, stepped without training
def test_seed_003_snippet_runs_as_written(tmp_path):
    """The ResoMap seed's training loop, with cnnlab imports, on tiny data."""
    from cnnlab.engine import EarlyStopping, LRSchedulerCallback, ModelCheckpoint, Trainer

    xtr, ytr, xte, yte = _digits_tensors()
    train_loader = DataLoader(TensorDataset(xtr.float() / 255, ytr), batch_size=64, shuffle=True,
                              generator=torch.Generator().manual_seed(0))
    val_loader = DataLoader(TensorDataset(xte.float() / 255, yte), batch_size=128)
    model = _mlp()

    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.001)

    early_stop = EarlyStopping(patience=5, mode='min')
    checkpoint = ModelCheckpoint(save_dir=str(tmp_path / 'checkpoints/'), monitor='val_accuracy', mode='max')
    lr_scheduler = LRSchedulerCallback(optimizer, scheduler_type='cosine',
                                       scheduler_params={'T_max': 50})

    trainer = Trainer(
        model=model,
        device=device,
        criterion=nn.CrossEntropyLoss(),
        optimizer=optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        use_amp=True
    )

    for epoch in range(3):
        train_metrics = trainer.train_epoch()
        val_metrics = trainer.validate()

        early_stop.step(epoch, val_metrics['loss'])
        checkpoint.step(epoch, val_metrics, model, optimizer, resolution=224)
        lr_scheduler.step(epoch)

        if early_stop.stop:
            break

    assert {"loss", "accuracy", "precision", "recall", "f1", "epoch_time", "memory_mb"} <= set(train_metrics)
    assert {"loss", "accuracy", "precision", "recall", "f1", "epoch_time", "memory_mb"} <= set(val_metrics)
    assert val_metrics["accuracy"] > 0.7
    best = checkpoint.get_best_checkpoint_path()
    saved = torch.load(best, weights_only=True)
    assert saved["resolution"] == 224 and "optimizer_state_dict" in saved
    assert saved["metrics"]["val_accuracy"] == max(c["value"] for c in checkpoint.metadata["checkpoints"])
    assert json.loads((tmp_path / "checkpoints" / "checkpoints.json").read_text())["best"] == best.name
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.001), T_max=50)
    for _ in range(3):
        ref.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ref.get_last_lr()[0])
    # the trained model is the one validate() measured
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x) for x, _ in val_loader])
    assert (logits.argmax(1) == yte).double().mean().item() == pytest.approx(val_metrics["accuracy"], abs=0.02)  # bf16 autocast rounding


def test_early_stopping_standalone_warmup_min_delta_and_patience():
    es = EarlyStopping(patience=1, warmup_epochs=2, mode="min", min_delta=0.1)
    for epoch, v in enumerate([9.0, 8.0, 1.0, 0.95, 0.5, 0.45, 0.44]):
        es.step(epoch, v)
        if es.stop:
            break
    # epochs 0-1 ignored; 1.0 best, 0.95 not by 0.1 (bad 1), 0.5 best, 0.45 bad 1, 0.44 bad 2 > patience
    assert es.stop and es.stopped_epoch == 6 and es.best == 0.5 and es.best_epoch == 4
    assert not EarlyStopping(patience=0, mode="max").step(0, 0.1)


@pytest.mark.filterwarnings("ignore:Detected call of")  # the reference schedulers, stepped without training
def test_model_checkpoint_keeps_top_k_and_lr_scheduler_types_match_torch(tmp_path):
    model = nn.Linear(2, 2)
    ck = ModelCheckpoint(save_dir=tmp_path, monitor="val_loss", mode="min", save_top_k=2, save_optimizer=False)
    for epoch, v in enumerate([0.5, 0.3, 0.4, 0.2]):
        ck.step(epoch, {"val_loss": v}, model)
    assert [c["value"] for c in ck.metadata["checkpoints"]] == [0.2, 0.3]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == sorted(c["file"] for c in ck.metadata["checkpoints"])
    assert "optimizer_state_dict" not in torch.load(ck.get_best_checkpoint_path(), weights_only=True)
    cases = [("step", {"step_size": 2, "gamma": 0.5}, torch.optim.lr_scheduler.StepLR),
             ("multistep", {"milestones": [1, 3], "gamma": 0.1}, torch.optim.lr_scheduler.MultiStepLR),
             ("exponential", {"gamma": 0.9}, torch.optim.lr_scheduler.ExponentialLR),
             ("cosine", {"T_max": 4, "eta_min": 0.01}, torch.optim.lr_scheduler.CosineAnnealingLR)]
    for kind, params, cls in cases:
        o1, o2 = (torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1) for _ in range(2))
        cb, ref = LRSchedulerCallback(o1, kind, params), cls(o2, **params)
        for epoch in range(5):
            cb.step(epoch)
            ref.step()
            assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"]), kind
    o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    plateau = LRSchedulerCallback(o, "plateau", {"mode": "min", "factor": 0.1, "patience": 0, "monitor": "val_loss"})
    for v in (1.0, 1.0, 1.0):
        plateau.step(metrics={"val_loss": v})
    assert o.param_groups[0]["lr"] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="T_max"):
        LRSchedulerCallback(o, "cosine", {})


def test_resume_with_more_epochs_extends_a_finished_run_as_if_trained_longer(tmp_path):
    extra = ("schedule.name=step", "schedule.step_size=2", "schedule.gamma=0.5", "data.flip=random")
    Trainer(_cfg(*extra), tmp_path / "r", progress=False).fit()
    longer = Trainer(_cfg(*extra, "train.epochs=4"), tmp_path / "r", progress=False)
    result = longer.fit(resume=True)
    scratch = Trainer(_cfg(*extra, "train.epochs=4"), None, progress=False)
    scratch.fit()
    assert result["epochs_completed"] == 4 and result["extended_from_epochs"] == 2
    for n in scratch.state.params:
        assert torch.equal(longer.state.params[n], scratch.state.params[n]), n
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]
    Trainer(_cfg("schedule.name=onecycle"), tmp_path / "o", progress=False).fit()
    with pytest.raises(ConfigError, match="total length"):
        Trainer(_cfg("schedule.name=onecycle", "train.epochs=3"), tmp_path / "o", progress=False).fit(resume=True)
    with pytest.raises(ConfigError, match="optim.lr"):
        Trainer(_cfg(*extra, "train.epochs=5", "optim.lr=0.1"), tmp_path / "r", progress=False).fit(resume=True)


def test_cli_train_out_takes_the_run_lock(tmp_path):
    from cnnlab.experiments.store import RunLock

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with RunLock.acquire(run):
        p = subprocess.run([sys.executable, "-m", "cnnlab", "train", *FAST, "--out", str(run), "--no-progress"],
                           capture_output=True, text=True, env=env)
        assert p.returncode == 2 and "another live process" in p.stderr and "Traceback" not in p.stderr
    assert not (run / "result.json").exists()
    p = subprocess.run([sys.executable, "-m", "cnnlab", "train", *FAST, "--out", str(run), "--no-progress"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert (run / "result.json").exists() and not (run / ".lock").exists()


def test_cnnlab_fit_one_liner_trains_the_users_model():
    import cnnlab

    xtr, ytr, xte, yte = _digits_tensors()
    model = _mlp()
    result = cnnlab.fit(model, (xtr, ytr), (xte, yte), epochs=3, batch_size=64, lr=3e-3)
    assert result["status"] == "completed" and result["final"]["val_acc"] > 0.8 and result["selection"] == "val"
    with torch.no_grad():
        assert (model(xte.float() / 255).argmax(1) == yte).double().mean().item() == pytest.approx(result["final"]["val_acc"])


def test_readme_training_section_lists_every_config_key_as_generated():
    from pathlib import Path

    from cnnlab.engine.config_doc import END, START, render_config_reference

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == render_config_reference(), "README is stale: run python -m cnnlab.engine.config_doc README.md"
    assert "| `data.val_split` |" in block and "| `callbacks.checkpoint.monitor` | str | `'val_acc'` |" in block


def _train_wrapped(wrap):
    xtr, ytr, _, _ = _digits_tensors()
    model = _mlp()
    wrapped = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Trainer(model=wrapped, optimizer=opt, train_loader=(xtr[:512], ytr[:512]), batch_size=64, epochs=1).fit()
    return model


def test_data_parallel_and_ddp_wrapped_models_train_as_the_bare_module(monkeypatch):
    import socket

    with socket.socket() as s:  # a free port, so parallel test workers never collide
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    bare = _train_wrapped(lambda m: m)
    dp = _train_wrapped(nn.DataParallel)  # on CPU: no replicas; the wrapped module is trained
    for p, q in zip(bare.parameters(), dp.parameters()):
        assert torch.equal(p, q)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        ddp = _train_wrapped(lambda m: nn.parallel.DistributedDataParallel(m))  # gradients all-reduced explicitly
    finally:
        dist.destroy_process_group()
    for p, q in zip(bare.parameters(), ddp.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_amp_fp16_loss_scaling_and_cudnn_benchmark_paths_on_cpu():
    from cnnlab.engine.setup import apply_runtime, resolve_precision

    result = Trainer(_cfg("train.precision=fp16"), None, progress=False).fit()  # autocast fp16 + dynamic loss scale
    assert result["precision"]["autocast"] == "fp16" and result["final"]["test_acc"] > 0.3
    before = torch.backends.cudnn.benchmark
    try:
        apply_runtime(_cfg("train.cudnn_benchmark=true"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before
    chosen, why = resolve_precision("auto", torch.device("cpu"))
    assert (chosen, why.startswith("auto")) in {("bf16", True), ("fp32", True)}
    with open("/proc/cpuinfo") as f:
        native = any(flag in f.read().split() for flag in ("avx512_bf16", "amx_bf16"))
    assert (chosen == "bf16") == native  # never where bf16 would be emulated
