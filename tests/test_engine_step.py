"""The functional step against independent references: torch.optim, torch LR schedulers, finite differences."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.optim import SGD, Adam, ParamGroup, build_param_groups
from cnnlab.engine.schedules import Schedule, onecycle_factor
from cnnlab.engine.step import StepSettings, TrainState, eval_logits, train_step
from cnnlab.models import create_deterministic_model


def _model(batchnorm=True, dtype=torch.float32):
    return create_deterministic_model(0, "tiny_cnn", "t", in_channels=1, widths=(4, 8), batchnorm=batchnorm).to(dtype)


def _data(n=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g, dtype=dtype), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("kind", ["sgd", "nesterov", "adam", "adamw"])
def test_functional_optimizers_match_torch_optim(kind):
    model = _model(batchnorm=False)
    ref = _model(batchnorm=False)
    groups = build_param_groups(dict(model.named_parameters()), 0.01, no_decay_1d=True, bias_lr_scale=2.0)
    lr = 0.05
    if kind in ("sgd", "nesterov"):
        opt = SGD(groups, momentum=0.9, nesterov=kind == "nesterov")
        pg = [{"params": [p for n, p in ref.named_parameters() if n in g.params], "weight_decay": g.weight_decay, "lr": lr * g.lr_scale} for g in groups]
        ref_opt = torch.optim.SGD(pg, lr=lr, momentum=0.9, nesterov=kind == "nesterov", foreach=False)
    else:
        opt = Adam(groups, decoupled=kind == "adamw")
        pg = [{"params": [p for n, p in ref.named_parameters() if n in g.params], "weight_decay": g.weight_decay, "lr": lr * g.lr_scale} for g in groups]
        ref_opt = (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(pg, lr=lr, foreach=False)
    state = TrainState.from_model(model, opt)
    settings = StepSettings(optimizer=opt)
    for s in range(5):
        x, y = _data(seed=s)
        state, _ = train_step(model, state, x, y, torch.ones(16), lr, settings)
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(state.params[n], p.detach(), rtol=1e-5, atol=1e-6, msg=n)


def test_param_groups_split_decay_and_no_decay():
    model = _model()
    groups = build_param_groups(dict(model.named_parameters()), 5e-4, bias_lr_scale=64.0)
    decay, other = groups
    assert all(dict(model.named_parameters())[n].ndim >= 2 for n in decay.params)
    assert "features.1.weight" in other.params and "fc.bias" in other.params
    assert other.weight_decay == 0.0 and other.lr_scale == 64.0
    with pytest.raises(ValueError, match="more than one group"):
        SGD([ParamGroup("a", ("x",), 0.0), ParamGroup("b", ("x",), 0.0)])


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_onecycle_matches_torch_scheduler(anneal):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    total = 37
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.4, total_steps=total, pct_start=0.3,
                                                anneal_strategy=anneal, div_factor=1 / 0.07, final_div_factor=0.35,
                                                cycle_momentum=False)
    for step in range(total):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.4 * onecycle_factor(step, total, 0.3, anneal, 1 / 0.07, 0.35), rel=1e-12)
        opt.step()
        sched.step()


def test_cosine_and_step_schedules_match_torch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20, eta_min=0.001)
    ours = Schedule("cosine", 0.1, steps_per_epoch=4, epochs=5, options={"eta_min": 0.001, "interval": "step"})
    for step in range(20):
        assert ours.lr(step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        cos.step()
    ms = Schedule("multistep", 1.0, 3, 10, options={"milestones": [2, 5], "gamma": 0.5})
    assert [ms.lr(e * 3) for e in range(7)] == [1, 1, 0.5, 0.5, 0.5, 0.25, 0.25]
    warm = Schedule("constant", 1.0, 10, 2, warmup_steps=4)
    assert [warm.lr(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_plateau_reduces_after_patience_and_round_trips_state():
    s = Schedule("plateau", 1.0, 1, 10, options={"mode": "min", "threshold": 0.0, "patience": 1, "factor": 0.5, "cooldown": 0, "min_lr": 0.1})
    assert [s.observe(v) for v in (1.0, 0.9, 0.95, 0.95)] == [False, False, False, True]
    assert s.lr(0) == 0.5
    t = Schedule("plateau", 1.0, 1, 10, options=s.options)
    t.load_state_dict(s.state_dict())
    assert t.lr(0) == 0.5


def test_explicit_bn_stats_match_native_and_params_are_identical():
    model = _model()
    opt = SGD(build_param_groups(dict(model.named_parameters()), 5e-4), momentum=0.9)
    a = TrainState.from_model(model, opt)
    b = TrainState.from_model(model, opt)
    for s in range(3):
        x, y = _data(seed=s)
        a, _ = train_step(model, a, x, y, torch.ones(16), 0.1, StepSettings(optimizer=opt, bn_stats="native"))
        b, _ = train_step(model, b, x, y, torch.ones(16), 0.1, StepSettings(optimizer=opt, bn_stats="explicit"))
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n]), n
    for n in a.buffers:
        torch.testing.assert_close(a.buffers[n], b.buffers[n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("differentiation", ["autograd", "func"])
def test_self_recording_bn_is_bitwise_the_hooked_explicit_stats(differentiation):
    """The hook-free explicit BatchNorm statistics (traceable by torch.compile) change nothing."""
    import copy

    from cnnlab.engine.step import self_recording_bn

    model = _model()
    recording = self_recording_bn(copy.deepcopy(model))
    opt = SGD(build_param_groups(dict(model.named_parameters()), 5e-4), momentum=0.9)
    settings = StepSettings(optimizer=opt, bn_stats="explicit")
    a = TrainState.from_model(model, opt)
    b = TrainState.from_model(model, opt)
    for s in range(3):
        x, y = _data(seed=s)
        a, _ = train_step(model, a, x, y, torch.ones(16), 0.1, settings, differentiation=differentiation)
        b, _ = train_step(recording, b, x, y, torch.ones(16), 0.1, settings, differentiation=differentiation)
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n]), n
    for n in a.buffers:
        assert torch.equal(a.buffers[n], b.buffers[n]), n
    # outside explicit mode the layers are ordinary BatchNorm (native running-stat updates, eval mode)
    native = StepSettings(optimizer=opt)
    c, _ = train_step(model, copy.deepcopy(a), x, y, torch.ones(16), 0.1, native)  # (native BN updates the
    d, _ = train_step(recording, copy.deepcopy(a), x, y, torch.ones(16), 0.1, native)  # buffers in place)
    assert not torch.equal(c.buffers["features.1.running_mean"], a.buffers["features.1.running_mean"])
    assert all(torch.equal(c.buffers[n], d.buffers[n]) for n in c.buffers)
    recording.eval()
    model.eval()
    torch.testing.assert_close(recording(x), model(x), rtol=0, atol=0)


def test_adam_accepts_a_tensor_step():
    """A compiled replay passes the step counter as a tensor; the update is the same."""
    p, g = torch.randn(5), torch.randn(5)
    opt = Adam([ParamGroup("all", ("p",), 0.01)], decoupled=True)
    s = opt.init_state({"p": p})
    for step in (1, 7):
        a = opt.update({"p": p}, {"p": g}, s, 0.1, step)
        b = opt.update({"p": p}, {"p": g}, s, torch.tensor(0.1), torch.tensor(step))
        torch.testing.assert_close(b[0]["p"], a[0]["p"], rtol=1e-6, atol=1e-7)


def test_step_is_differentiable_wrt_example_weights_finite_differences():
    """d(loss after 3 steps)/d w_i by reverse mode through the step equals central finite differences (float64)."""
    torch.manual_seed(0)
    model = _model(dtype=torch.float64)
    opt = SGD(build_param_groups(dict(model.named_parameters()), 5e-3), momentum=0.9, nesterov=True)
    settings = StepSettings(optimizer=opt, bn_stats="explicit", label_smoothing=0.1)
    batches = [_data(8, torch.float64, seed=s) for s in range(3)]
    xt, yt = _data(4, torch.float64, seed=99)

    def run(w):
        state = TrainState.from_model(model, opt)
        for x, y in batches:
            state, _ = train_step(model, state, x, y, w, 0.2, settings, create_graph=True)
        model.eval()
        out = eval_logits(model, state.params, state.buffers, xt)
        model.train()
        return F.cross_entropy(out, yt)

    w = torch.ones(8, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(run(w), w)
    eps = 1e-5
    for i in (0, 3, 7):
        e = torch.zeros(8, dtype=torch.float64)
        e[i] = eps
        with torch.no_grad():
            fd = (run(torch.ones(8, dtype=torch.float64) + e) - run(torch.ones(8, dtype=torch.float64) - e)) / (2 * eps)
        assert grad[i].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-10)


def test_vmapped_step_equals_loop():
    model = _model()
    opt = SGD(build_param_groups(dict(model.named_parameters()), 5e-4), momentum=0.9)
    settings = StepSettings(optimizer=opt)
    members = [TrainState.from_model(create_deterministic_model(0, "tiny_cnn", f"m{i}", in_channels=1, widths=(4, 8)), opt) for i in range(3)]
    x, y = _data()
    lrs = torch.tensor([0.1, 0.05, 0.01])
    def stack(ds):
        return {k: torch.stack([d[k] for d in ds]) for k in ds[0]}

    params = stack([m.params for m in members])
    buffers = stack([m.buffers for m in members])
    mom = {n: {"momentum_buffer": torch.stack([m.opt_state[n]["momentum_buffer"] for m in members])} for n in members[0].opt_state}

    def one(p, b, o, lr):
        s, out = train_step(model, TrainState(p, b, o, 0), x, y, torch.ones(16), lr, settings, differentiation="func")
        return s.params, s.buffers, out.loss

    new_p, new_b, losses = torch.func.vmap(one, randomness="same")(params, buffers, mom, lrs)
    for i, m in enumerate(members):
        ref, out = train_step(model, m, x, y, torch.ones(16), float(lrs[i]), settings)
        torch.testing.assert_close(losses[i], out.loss)
        for n in ref.params:
            torch.testing.assert_close(new_p[n][i], ref.params[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new_b["features.1.running_mean"][i], ref.buffers["features.1.running_mean"])


def test_accumulation_equals_one_big_batch_without_bn():
    model = _model(batchnorm=False)
    opt = SGD(build_param_groups(dict(model.named_parameters()), 0.0), momentum=0.9)
    x, y = _data()
    w = torch.rand(16)
    a, _ = train_step(model, TrainState.from_model(model, opt), x, y, w, 0.1, StepSettings(optimizer=opt))
    b, _ = train_step(model, TrainState.from_model(model, opt), x, y, w, 0.1, StepSettings(optimizer=opt, accumulation=4))
    for n in a.params:
        torch.testing.assert_close(a.params[n], b.params[n], rtol=1e-5, atol=1e-7)


def test_zero_weights_remove_examples_and_label_smoothing_matches_cross_entropy():
    model = _model(batchnorm=False)
    opt = SGD(build_param_groups(dict(model.named_parameters()), 0.0))
    x, y = _data()
    w = torch.ones(16)
    w[8:] = 0
    s = StepSettings(optimizer=opt, label_smoothing=0.2)
    _, out = train_step(model, TrainState.from_model(model, opt), x, y, w, 0.1, s)
    expected = F.cross_entropy(model(x[:8]), y[:8], label_smoothing=0.2, reduction="sum") / 16
    torch.testing.assert_close(out.loss, expected.detach())


def test_grad_clip_matches_clip_grad_norm():
    model = _model(batchnorm=False)
    ref = _model(batchnorm=False)
    opt = SGD(build_param_groups(dict(model.named_parameters()), 0.0, no_decay_1d=False))
    x, y = _data()
    state, _ = train_step(model, TrainState.from_model(model, opt), x, y, torch.ones(16), 1.0, StepSettings(optimizer=opt, grad_clip=0.01))
    F.cross_entropy(ref(x), y).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(state.params[n], (p - p.grad).detach(), rtol=1e-5, atol=1e-7)


def test_fp16_loss_scaling_skips_non_finite_steps():
    model = _model(batchnorm=False)
    opt = SGD(build_param_groups(dict(model.named_parameters()), 0.0))
    state = TrainState.from_model(model, opt, fp16=True)
    state.loss_scale = torch.tensor(float("inf"))  # forces non-finite scaled gradients
    x, y = _data()
    new, out = train_step(model, state, x, y, torch.ones(16), 0.1, StepSettings(optimizer=opt))
    assert not bool(out.finite)
    assert all(torch.equal(new.params[n], state.params[n]) for n in state.params)
    assert math.isinf(float(new.loss_scale))  # halved inf stays inf, but the update was skipped


def test_differentiable_bn_eval_matches_native_eval():
    model = _model().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    params = dict(model.named_parameters())
    buffers = {n: b.clone().requires_grad_(b.is_floating_point()) for n, b in model.named_buffers()}
    x, _ = _data()
    out = eval_logits(model, params, buffers, x)
    torch.testing.assert_close(out, model(x))
    g = torch.autograd.grad(out.sum(), buffers["features.1.running_mean"])[0]
    assert g.abs().sum() > 0
