"""The functional optimizers' foreach fast path (the Trainer's no-graph step) against their tensor-by-tensor
update: bitwise equal, over several steps, for every SGD / Adam / AdamW setting and parameter grouping."""

from __future__ import annotations

import pytest
import torch

from cnnlab.engine.optim import SGD, Adam, ParamGroup, TorchOptimizerStep, build_param_groups


def _params(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "bn.weight": (8,), "fc.weight": (10, 8), "fc.bias": (10,)}
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def _run(opt, params, steps: int, fast: bool):
    state = opt.init_state(params)
    g = torch.Generator().manual_seed(1)
    for k in range(1, steps + 1):
        grads = {n: torch.randn(p.shape, generator=g) for n, p in params.items()}
        update = opt.update_fast if fast else opt.update
        params, state = update(params, grads, state, 0.05 / k, k)
    return params, state


OPTIMIZERS = {
    "sgd": lambda groups: SGD(groups),
    "sgd_momentum": lambda groups: SGD(groups, momentum=0.9),
    "sgd_nesterov": lambda groups: SGD(groups, momentum=0.9, nesterov=True),
    "adam": lambda groups: Adam(groups, betas=(0.8, 0.99), eps=1e-6),
    "adamw": lambda groups: Adam(groups, decoupled=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("wd,no_decay_1d,bias_lr_scale", [(0.0, False, 1.0), (5e-4, True, 1.0), (0.1, True, 2.0), (0.01, False, 1.0)])
def test_foreach_update_is_bitwise_the_single_tensor_update(name, wd, no_decay_1d, bias_lr_scale):
    params = _params()
    groups = build_param_groups(params, wd, no_decay_1d=no_decay_1d, bias_lr_scale=bias_lr_scale)
    opt = OPTIMIZERS[name](groups)
    ref_p, ref_s = _run(opt, dict(params), 4, fast=False)
    got_p, got_s = _run(opt, dict(params), 4, fast=True)
    assert set(got_p) == set(ref_p) and set(got_s) == set(ref_s)
    for n in ref_p:
        assert torch.equal(got_p[n], ref_p[n]), n
        assert set(got_s[n]) == set(ref_s[n])
        for k in ref_s[n]:
            assert torch.equal(got_s[n][k], ref_s[n][k]), (n, k)
    assert not any(torch.equal(got_p[n], params[n]) for n in params)  # the update moved every tensor


def test_fast_path_leaves_inputs_untouched():
    params = _params()
    before = {n: p.clone() for n, p in params.items()}
    opt = SGD([ParamGroup("all", tuple(params), 5e-4)], momentum=0.9, nesterov=True)
    state = opt.init_state(params)
    opt.update_fast(params, {n: torch.ones_like(p) for n, p in params.items()}, state, 0.1, 1)
    assert all(torch.equal(params[n], before[n]) for n in params)
    assert all(torch.count_nonzero(state[n]["momentum_buffer"]) == 0 for n in params)


def test_tensor_rate_and_torch_optimizer_fall_back_to_update():
    params = _params()
    opt = Adam([ParamGroup("all", tuple(params), 0.0)])
    grads = {n: torch.ones_like(p) for n, p in params.items()}
    state = opt.init_state(params)
    a, _ = opt.update_fast(params, grads, state, torch.tensor(0.01), torch.tensor(1))
    b, _ = opt.update(params, grads, state, torch.tensor(0.01), torch.tensor(1))
    assert all(torch.equal(a[n], b[n]) for n in params)

    model = torch.nn.Linear(3, 2)
    named = dict(model.named_parameters())
    step = TorchOptimizerStep(torch.optim.RMSprop(model.parameters(), lr=0.1), named)
    p0 = {n: p.detach().clone() for n, p in named.items()}
    new, _ = step.update_fast(p0, {n: torch.ones_like(p) for n, p in p0.items()}, step.init_state(p0), 0.1, 1)
    assert all(not torch.equal(new[n], p0[n]) for n in p0)  # RMSprop's own .step() ran
