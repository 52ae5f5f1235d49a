"""Population forward parity: stacked, vmapped members equal each member's own forward."""

import copy

import pytest
import torch
from torch import nn

from cnnlab.models import create_deterministic_model
from cnnlab.population import ParamLayout, Population
from cnnlab.population.bn import bn_batch_statistics, recalibrate_bn

# (name, kwargs, input channels, resolution): tiny inputs keep the suite fast.
ARCHS = [
    ("tiny_cnn", {"in_channels": 1}, 1, 16),
    ("resnet4stage", {}, 1, 16),
    ("resnet20", {}, 3, 16),
]


def _models(name, kwargs, m=3, seed=0):
    return [create_deterministic_model(seed, name, f"member/{i}", **kwargs) for i in range(m)]


def _perturb_bn(models):
    """Give BatchNorm running stats non-trivial values so eval-mode parity is a real check."""
    g = torch.Generator().manual_seed(1)
    for model in models:
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name,kwargs,c,res", ARCHS)
def test_eval_forward_matches_members_shared_and_per_member(name, kwargs, c, res):
    models = _models(name, kwargs, m=2 if name == "resnet4stage" else 3)
    _perturb_bn(models)
    pop = Population.from_models(models)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, c, res, res, generator=g)
    xs = torch.randn(len(models), 4, c, res, res, generator=g)
    with torch.no_grad():
        shared = pop(x)
        per = pop(xs, per_member=True)
        for i, m in enumerate(models):
            m.eval()
            torch.testing.assert_close(shared[i], m(x), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(per[i], m(xs[i]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,kwargs,c,res", ARCHS[:2])
def test_train_mode_batchnorm_updates_each_members_running_stats(name, kwargs, c, res):
    models = _models(name, kwargs, m=2)
    pop = Population.from_models(models)
    x = torch.randn(4, c, res, res, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = pop(x, train=True)
        for i, m in enumerate(models):
            m.train()
            torch.testing.assert_close(out[i], m(x), rtol=1e-5, atol=1e-5)
            for n, b in m.named_buffers():
                torch.testing.assert_close(pop.buffers[n][i], b, rtol=1e-5, atol=1e-6)
    first_bn = next(n for n, _ in models[0].named_buffers() if n.endswith("num_batches_tracked"))  # features.1 / bn1
    assert int(pop.buffers[first_bn][0]) == 1


def test_bn_batch_statistics_mode_matches_train_forward_without_touching_buffers():
    models = _models("tiny_cnn", {"in_channels": 1})
    pop = Population.from_models(models)
    before = {n: b.clone() for n, b in pop.buffers.items()}
    x = torch.randn(6, 1, 12, 12)
    with torch.no_grad():
        out = pop(x, bn="batch")
        for i, m in enumerate(models):
            ref = copy.deepcopy(m).train()
            torch.testing.assert_close(out[i], ref(x), rtol=1e-5, atol=1e-5)
    for n, b in pop.buffers.items():
        assert torch.equal(b, before[n]), n
    assert pop.skeleton.features[1].track_running_stats  # restored


def test_dropout_randomness_same_and_different():
    models = _models("tiny_cnn", {"in_channels": 1, "dropout": 0.5}, m=3)
    # identical members: only the dropout masks can make their outputs differ
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    pop = Population.from_models(models)
    x = torch.randn(8, 1, 12, 12)
    with torch.no_grad():
        torch.manual_seed(5)
        same = pop(x, train=True, bn="batch", randomness="same")
        torch.manual_seed(5)
        ref = copy.deepcopy(models[0]).train()
        with bn_batch_statistics(ref):
            expected = ref(x)
        different = pop(x, train=True, bn="batch", randomness="different")
        evald = pop(x)
    for i in range(3):
        torch.testing.assert_close(same[i], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(different[0], different[1])
    torch.testing.assert_close(evald[0], evald[2])  # no dropout in eval mode


def test_unstack_roundtrip_and_create_matches_registry():
    pop = Population.create("tiny_cnn", 3, master_seed=7, in_channels=1)
    assert len(pop) == 3 and pop.num_params == sum(p.numel() for p in pop.member(0).parameters())
    for i, m in enumerate(pop.unstack()):
        ref = create_deterministic_model(7, "tiny_cnn", f"member/{i}", in_channels=1)
        assert not m.training
        for (n, a), (_, b) in zip(m.state_dict().items(), ref.state_dict().items()):
            assert torch.equal(a, b), n
    with pytest.raises(IndexError, match="out of range"):
        pop.member(3)


def test_vector_roundtrip_against_parameters_to_vector():
    models = _models("tiny_cnn", {"in_channels": 1})
    pop = Population.from_models(models)
    vec = pop.to_vector()
    assert vec.shape == (3, pop.num_params)
    for i, m in enumerate(models):
        torch.testing.assert_close(vec[i], nn.utils.parameters_to_vector(m.parameters()), rtol=0, atol=0)
    shifted = pop.from_vector(vec + 1.0)
    for n in pop.trainable:
        torch.testing.assert_close(shifted.params[n], pop.params[n] + 1.0)
    # fewer members than the source: buffers come from member 0
    two = pop.from_vector(vec[:2] * 0)
    assert len(two) == 2 and all(torch.equal(two.buffers[n][1], pop.buffers[n][0]) for n in pop.buffers)
    with pytest.raises(ValueError, match="entries per member"):
        pop.from_vector(vec[:, :-1])


def test_param_layout_views():
    params = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([7.0])}
    layout = ParamLayout.of(params)
    v = layout.flatten(params)
    assert v.tolist() == [0, 1, 2, 3, 4, 5, 7]
    back = layout.unflatten(torch.stack([v, v * 2]))
    assert back["a"].shape == (2, 2, 3) and back["b"][1].item() == 14


def test_mismatched_architectures_are_rejected():
    a = create_deterministic_model(0, "tiny_cnn", "a", in_channels=1)
    b = create_deterministic_model(0, "tiny_cnn", "b", in_channels=3)
    with pytest.raises(ValueError, match="member 1: parameter 'features.0.weight'"):
        Population.from_models([a, b])
    with pytest.raises(ValueError, match="per-member inputs"):
        Population.from_models([a, a])(torch.randn(3, 4, 1, 8, 8), per_member=True)


def test_recalibrate_bn_equals_cumulative_batch_average():
    model = create_deterministic_model(0, "tiny_cnn", "m", in_channels=1)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    batches = [torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    new = recalibrate_bn(Population.from_models([model]).skeleton, params, buffers, batches)
    # independent reference: the first BN layer's input is conv(x); mean over all three batches
    conv = model.features[0]
    with torch.no_grad():
        feats = [conv(x) for x in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    torch.testing.assert_close(new["features.1.running_mean"], means, rtol=1e-5, atol=1e-6)
    assert int(new["features.1.num_batches_tracked"]) == 3
    assert torch.equal(buffers["features.1.running_mean"], model.features[1].running_mean)  # input untouched


def test_state_dict_roundtrip_select_and_weights_only_load(tmp_path):
    pop = Population.create("tiny_cnn", 3, master_seed=1, in_channels=1)
    torch.save(pop.state_dict(), tmp_path / "pop.pt")
    back = Population.from_state_dict(create_deterministic_model(9, "tiny_cnn", "other", in_channels=1),
                                      torch.load(tmp_path / "pop.pt", weights_only=True))
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), pop(x), rtol=0, atol=0)
        sub = pop.select([2, 0])
        torch.testing.assert_close(sub(x), pop(x)[[2, 0]], rtol=0, atol=0)
    assert back.trainable == pop.trainable and "Population(SmallCNN x 2" in repr(sub)
