"""Population training parity: every backend equals M separate trainings (engine loop and torch.optim)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from cnnlab.data import load_dataset
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.optim import build_param_groups, make_optimizer
from cnnlab.engine.step import StepSettings, TrainState, train_step
from cnnlab.models import create_deterministic_model
from cnnlab.population import EvalSet, train_population

N, B, EPOCHS, WD, MOM = 96, 32, 2, 5e-4, 0.9


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits", root="/nonexistent-never-downloaded")
    return ds.train.images[:N], ds.train.labels[:N], ds


def _models(m, **kw):
    return [create_deterministic_model(0, "tiny_cnn", f"member/{i}", in_channels=1, widths=(8, 16), **kw) for i in range(m)]


def _settings(model, optimizer="sgd", **kw):
    groups = build_param_groups({n: p for n, p in model.named_parameters() if p.requires_grad}, WD)
    return StepSettings(make_optimizer(optimizer, groups, momentum=MOM if optimizer == "sgd" else 0.0), **kw)


def _weights(m, seed=3):
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(m, N, generator=g) > 0.3).float()
    w[0] = 1.0
    return w


def _schedule(step):
    return 0.05 * (1.0 - step / 20)


def _assert_states_close(a, b, atol=1e-5):
    for n in a.params:
        torch.testing.assert_close(a.params[n], b.params[n], rtol=1e-4, atol=atol, msg=lambda m, n=n: f"{n}: {m}")
    for n in a.buffers:
        torch.testing.assert_close(a.buffers[n].double(), b.buffers[n].double(), rtol=1e-4, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("optimizer,bn_stats", [("sgd", "native"), ("adam", "explicit")])
def test_vmap_equals_loop_shared_batch_weights_and_lrs(digits, optimizer, bn_stats):
    images, labels, _ = digits
    models = _models(3)
    settings = _settings(models[0], optimizer, bn_stats=bn_stats)
    loader = BatchLoader(images, labels, B, seed=1)
    kw = dict(epochs=EPOCHS, lr=_schedule, lr_scale=[1.0, 0.5, 2.0], member_weights=_weights(3))
    loop = train_population(models, loader, settings, backend="loop", **kw)
    vm = train_population(models, loader, settings, backend="vmap", **kw)
    assert loop.backend == "loop" and vm.backend == "vmap" and loop.choice is None
    assert loop.state.step == vm.state.step == EPOCHS * len(loader)
    _assert_states_close(loop.state, vm.state)
    torch.testing.assert_close(torch.tensor(loop.final["train_loss"]), torch.tensor(vm.final["train_loss"]), rtol=1e-4, atol=1e-5)
    # members really differ (different init, weights and learning rates)
    p = loop.state.params["fc.weight"]
    assert not torch.allclose(p[0], p[1]) and not torch.allclose(p[1], p[2])


def test_loop_backend_equals_sequential_train_steps_exactly(digits):
    """Member m of the population == a plain train_step loop over member m's own data order."""
    images, labels, _ = digits
    models = _models(2)
    settings = _settings(models[0])
    loaders = [BatchLoader(images, labels, B, seed=10 + i) for i in range(2)]
    w = _weights(2)
    res = train_population(models, loaders, settings, epochs=EPOCHS, lr=_schedule, member_weights=w, backend="loop")
    vm = train_population(models, loaders, settings, epochs=EPOCHS, lr=_schedule, member_weights=w, backend="vmap")
    for m in range(2):
        st = TrainState.from_model(models[m], settings.optimizer)
        for e in range(EPOCHS):
            for b in loaders[m].epoch(e):
                st, _ = train_step(models[m], st, b.x, b.y, w[m, b.index], _schedule(st.step), settings)
        for n in st.params:
            assert torch.equal(res.state.params[n][m], st.params[n]), n
            torch.testing.assert_close(vm.state.params[n][m], st.params[n], rtol=1e-4, atol=1e-5)
        for n in st.buffers:
            assert torch.equal(res.state.buffers[n][m], st.buffers[n]), n


def test_population_equals_independent_torch_optim_training(digits):
    """Independent reference: nn.Module + torch.optim.SGD, weighted loss, the same batches."""
    images, labels, _ = digits
    models = _models(3)
    settings = _settings(models[0])
    loader = BatchLoader(images, labels, B, seed=4)
    w = _weights(3)
    scales = [1.0, 0.7, 1.3]
    res = {b: train_population(models, loader, settings, epochs=EPOCHS, lr=_schedule, lr_scale=scales,
                               member_weights=w, backend=b) for b in ("loop", "vmap")}
    for m in range(3):
        ref = copy.deepcopy(models[m]).train()
        decay = [p for p in ref.parameters() if p.ndim >= 2]
        other = [p for p in ref.parameters() if p.ndim < 2]
        opt = torch.optim.SGD([{"params": decay, "weight_decay": WD}, {"params": other, "weight_decay": 0.0}],
                              lr=0.1, momentum=MOM)
        step = 0
        for e in range(EPOCHS):
            for b in loader.epoch(e):
                for g in opt.param_groups:
                    g["lr"] = _schedule(step) * scales[m]
                loss = (w[m, b.index] * F.cross_entropy(ref(b.x), b.y, reduction="none")).sum() / len(b)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        for backend, r in res.items():
            for n, p in ref.named_parameters():
                torch.testing.assert_close(r.state.params[n][m], p.detach(), rtol=1e-4, atol=2e-5,
                                           msg=lambda s, b=backend, m=m, n=n: f"{b} member {m} {n}: {s}")
            torch.testing.assert_close(r.state.buffers["features.1.running_var"][m], ref.features[1].running_var,
                                       rtol=1e-4, atol=1e-5)


def test_shared_population_member_equals_trainer_run(digits):
    """Shared init + order, all-ones weights: a member reproduces `cnnlab train` bit for bit (loop backend)."""
    from cnnlab.engine.config import build_config
    from cnnlab.engine.setup import build_run
    from cnnlab.engine.trainer import Trainer

    _, _, ds = digits
    cfg = build_config({"model": {"name": "tiny_cnn", "options": {"widths": [8, 16]}},
                        "data": {"name": "digits", "subset": N},
                        "train": {"epochs": 2, "batch_size": B, "eval_batch_size": 500},
                        "schedule": {"name": "onecycle"}})
    trainer = Trainer(cfg, None, dataset=ds, progress=False)
    trainer.fit()
    parts = build_run(cfg, dataset=ds)
    w = torch.ones(2, len(ds.train))
    w[1, :10] = 0.0
    eval_set = EvalSet(ds.test.images, ds.test.labels, parts.augment, batch_size=500)
    res = train_population(parts.model, parts.train_loader, parts.settings, epochs=cfg.train.epochs,
                           lr=parts.schedule.lr, member_weights=w, backend="loop", eval_set=eval_set)
    for n, p in trainer.state.params.items():
        assert torch.equal(res.state.params[n][0], p), n
    assert not torch.equal(res.state.params["fc.weight"][1], trainer.state.params["fc.weight"])
    assert res.final["test_acc"][0] == pytest.approx(trainer.history[-1]["test_acc"])
    member0 = res.members()[0]
    with torch.no_grad():
        x = parts.augment.eval_transform(ds.test.images[:50])
        acc = (member0(x).argmax(1) == ds.test.labels[:50]).float().mean()
    assert 0.0 <= float(acc) <= 1.0 and not member0.training


def test_auto_records_its_probe_and_dropout_runs_are_reproducible(digits):
    images, labels, _ = digits
    models = _models(2, dropout=0.3)
    settings = _settings(models[0])
    loader = BatchLoader(images, labels, B, seed=2)
    kw = dict(epochs=1, lr=0.05, seed=11)
    auto = train_population(models, loader, settings, backend="auto", workers=1, **kw)
    c = auto.choice
    assert c["backend"] == auto.backend in ("vmap", "loop")
    assert set(c["seconds_per_step"]) | set(c["skipped"]) == {"vmap", "loop"} and c["probe_members"] == 2
    assert c["backend"] in c["estimated_total_s"]
    assert all(v > 0 for v in c["estimated_total_s"].values())
    again = train_population(models, loader, settings, backend="auto", workers=1, **kw)
    assert again.choice["cached"] and again.backend == auto.backend  # probed once per setting and process
    for backend in ("loop", "vmap"):
        a = train_population(models, loader, settings, backend=backend, **kw)
        b = train_population(models, loader, settings, backend=backend, **kw)
        assert torch.equal(a.state.params["fc.weight"], b.state.params["fc.weight"]), backend
    other_seed = train_population(models, loader, settings, backend="loop", epochs=1, lr=0.05, seed=12)
    assert not torch.equal(other_seed.state.params["fc.weight"], a.state.params["fc.weight"])


def test_procs_backend_equals_loop(digits):
    images, labels, _ = digits
    models = _models(3)
    settings = _settings(models[0])
    loaders = [BatchLoader(images, labels, B, seed=20 + i) for i in range(3)]
    steps = []
    kw = dict(epochs=EPOCHS, lr=_schedule, member_weights=_weights(3))
    loop = train_population(models, loaders, settings, backend="loop", **kw)
    procs = train_population(models, loaders, settings, backend="procs", workers=2, progress=steps.append, **kw)
    assert procs.backend == "procs" and sum(steps) == 3 * EPOCHS * len(loaders[0])
    _assert_states_close(loop.state, procs.state, atol=1e-6)
    assert len(procs.final["train_loss"]) == 3


def test_bad_inputs_name_the_problem(digits):
    images, labels, _ = digits
    models = _models(2)
    settings = _settings(models[0])
    loader = BatchLoader(images, labels, B, seed=0)
    with pytest.raises(ValueError, match="ambiguous: model .* = 2, member_weights rows = 3"):
        train_population(models, loader, settings, epochs=1, lr=0.1, member_weights=torch.ones(3, N))
    with pytest.raises(ValueError, match="one column per dataset example"):
        train_population(models, loader, settings, epochs=1, lr=0.1, member_weights=torch.ones(2, N - 1))
    with pytest.raises(ValueError, match="not a lambda"):
        train_population(models, loader, settings, epochs=1, lr=lambda t: 0.1, backend="procs")
    with pytest.raises(ValueError, match="backend must be one of"):
        train_population(models, loader, settings, epochs=1, lr=0.1, backend="gpu-magic")
    other = BatchLoader(images[:64], labels[:64], B, seed=0)
    with pytest.raises(ValueError, match="loader 1 differs"):
        train_population(models, [loader, other], settings, epochs=1, lr=0.1)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("backend", ["loop", "vmap"])
def test_interrupted_training_resumes_bitwise_from_its_checkpoint(digits, tmp_path, backend):
    """Killed in epoch 3 of 3 (after the epoch-2 checkpoint), the same call continues to the same weights."""
    images, labels, _ = digits
    models = _models(2)
    settings = _settings(models[0])
    loader = BatchLoader(images, labels, B, seed=1)
    kw = dict(epochs=3, lr=_schedule, member_weights=_weights(2), backend=backend)
    ref = train_population(models, loader, settings, **kw)
    done = [0]
    kill_after = 2 * len(loader) * 2 + 2 * 1  # two epochs (2 members x steps) plus one step of epoch 3

    def progress(n):
        done[0] += n
        if done[0] > kill_after:
            raise _Killed

    ckpt = tmp_path / "ckpt"
    with pytest.raises(_Killed):
        train_population(models, loader, settings, checkpoint_dir=ckpt, progress=progress, **kw)
    saved = torch.load(next(ckpt.glob("members_*.pt")), weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2
    counted = []
    resumed = train_population(models, loader, settings, checkpoint_dir=ckpt, progress=counted.append, **kw)
    assert counted[0] == 2 * 2 * len(loader)  # the resumed part reports the member-steps already done first
    for n in ref.state.params:
        assert torch.equal(resumed.state.params[n], ref.state.params[n]), n
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in ref.history]
    again = train_population(models, loader, settings, checkpoint_dir=ckpt, **kw)  # finished: nothing left to run
    assert all(torch.equal(again.state.params[n], ref.state.params[n]) for n in ref.state.params)
    with pytest.raises(ValueError, match="holds epoch 3 of a longer run"):
        train_population(models, loader, settings, checkpoint_dir=ckpt, **{**kw, "epochs": 2})
    next(ckpt.glob("members_*.pt")).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read population checkpoint"):
        train_population(models, loader, settings, checkpoint_dir=ckpt, **kw)


def test_resumed_auto_run_keeps_the_backend_it_chose(digits, tmp_path, monkeypatch):
    """auto's choice is saved with the checkpoints: a resume reuses it without probing again (its member
    groups must match the checkpoints), and an unreadable record is a clear error."""
    import json

    from cnnlab.population import train as train_mod

    images, labels, _ = digits
    models = _models(2)
    settings = _settings(models[0])
    loader = BatchLoader(images, labels, B, seed=1)
    kw = dict(epochs=1, lr=_schedule, member_weights=_weights(2), backend="auto", workers=1)
    ckpt = tmp_path / "ckpt"
    first = train_population(models, loader, settings, checkpoint_dir=ckpt, **kw)
    saved = json.loads((ckpt / "backend.json").read_text(encoding="utf-8"))
    assert saved["backend"] == first.backend and saved["workers"] == 1

    def no_probe(*a, **k):
        raise AssertionError("a resumed auto run probed the backends again")

    monkeypatch.setattr(train_mod, "_cached_choice", no_probe)
    for _ in range(2):  # resuming twice leaves the record as the first run wrote it
        again = train_population(models, loader, settings, checkpoint_dir=ckpt, **kw)
        assert again.backend == first.backend
        assert again.choice["reason"].startswith("resumed with the backend the run chose before")
        assert json.loads((ckpt / "backend.json").read_text(encoding="utf-8")) == saved
    (ckpt / "backend.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot read .*backend.json"):
        train_population(models, loader, settings, checkpoint_dir=ckpt, **kw)


def test_step_backends_are_a_registry():
    from cnnlab.population.backends import STEPPERS, LoopStepper, VmapStepper, make_stepper

    assert STEPPERS.names() == ["loop", "vmap"] and STEPPERS.get("loop") is LoopStepper and STEPPERS.get("vmap") is VmapStepper
    with pytest.raises(ValueError, match="unknown step backend 'vmapp'. Did you mean 'vmap'"):
        make_stepper("vmapp", None, None, None)
