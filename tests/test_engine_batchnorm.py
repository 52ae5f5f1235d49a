"""engine.batchnorm: the one BatchNorm module behind the step and populations, checked against torch's own
BatchNorm (running-statistics update, eval formula) and re-exported where its callers used to find it."""

import pytest
import torch
from torch import nn

from cnnlab.engine import batchnorm as bn
from cnnlab.engine import step
from cnnlab.population import bn as pop_bn


def _net(momentum):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=momentum), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5), nn.BatchNorm1d(5, momentum=momentum))


def test_callers_import_the_same_objects():
    for name in ("explicit_bn_stats", "self_recording_bn", "differentiable_bn_eval"):
        assert getattr(step, name) is getattr(bn, name)
    for name in ("batchnorm_modules", "bn_batch_statistics", "recalibrate_bn"):
        assert getattr(pop_bn, name) is getattr(bn, name)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_recorded_stats_update_running_stats_as_torch_does(momentum):
    """Three batches through the out-of-place update equal three native train-mode forwards (momentum None:
    torch's cumulative average)."""
    native, model = _net(momentum), _net(momentum)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 3, 8, 8, generator=gen) * 2 + 0.5
        native.train()(x)
        stats: dict = {}
        with bn.recording_context(model, stats):
            out = torch.func.functional_call(model, (params, buffers), (x,))
        buffers = bn.updated_buffers(model, buffers, stats)
        assert set(stats) == {"1", "5"}
    for n, b in native.named_buffers():
        torch.testing.assert_close(buffers[n], b, rtol=1e-5, atol=1e-6, msg=n)
    torch.testing.assert_close(out, native(x), rtol=1e-4, atol=1e-5)  # same batch-statistics forward


def test_self_recording_layers_record_what_the_hooks_record():
    a, b = _net(0.1), bn.self_recording_bn(_net(0.1))
    assert bn.is_self_recording(b) and not bn.is_self_recording(a)
    x = torch.randn(4, 3, 8, 8)
    hooked, sunk = {}, {}
    with bn.recording_context(a, hooked):
        a.train()(x)
    with bn.recording_context(b, sunk):
        b.train()(x)
    assert set(hooked) == set(sunk) == {"1", "5"}
    for n in hooked:
        assert all(torch.equal(u, v) for u, v in zip(hooked[n], sunk[n])), n
    assert not any(hasattr(m, "_cnnlab_bn_sink") for m in b.modules())  # the sinks are removed afterwards


def test_layers_are_found_by_kind_and_tracking():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm1d(2, track_running_stats=False), nn.Linear(2, 2))
    assert len(bn.batchnorm_modules(model)) == 2
    assert list(bn.tracking_batchnorms(model)) == ["0"]
