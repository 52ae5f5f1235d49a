"""Attribution methods against independent computations (plain torch.autograd, no captum)."""

import pytest
import torch
import torch.nn.functional as F

from cnnlab.explain import build_methods, create_method, explain, faithfulness, list_methods, resolve_targets
from cnnlab.explain.methods import BASELINES, gaussian_blur
from cnnlab.models import create_deterministic_model, gradcam_layer
from cnnlab.utils.seeding import derive_seed, fork_rng_seeded


def _model(**options):
    return create_deterministic_model(0, "tiny_cnn", "explain-test", num_classes=5, in_channels=2, **options).eval()


def _x(n=3, res=12):
    return torch.randn(n, 2, res, res, generator=torch.Generator().manual_seed(1))


def _direct_gradcam(model, x, target, relu=True):
    """Grad-CAM by hand: class-score gradients w.r.t. the layer activations, channel-averaged, weighted sum."""
    acts = []
    handle = gradcam_layer(model).register_forward_hook(lambda m, i, o: acts.append(o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = acts[0]
    score = logits.gather(1, target.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(score, a)
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = (weights * a).sum(dim=1, keepdim=True)
    return cam.clamp_min(0) if relu else cam


@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_equals_direct_autograd_computation(relu):
    model, x = _model(), _x()
    target = torch.tensor([0, 3, 1])
    ours = create_method("gradcam", model, relu=relu, upsample=False).attribute(x, target)
    ref = _direct_gradcam(model, x, target, relu).detach()
    assert ours.shape == ref.shape == (3, 1, 3, 3)  # 12 px -> two 2x2 pools -> 3x3 at the last block
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    if not relu:
        assert (ref < 0).any(), "test needs negative evidence to tell the ReLU option apart"


def test_gradcam_upsampled_to_input_with_bilinear_interpolation():
    model, x = _model(), _x()
    target = torch.tensor([2, 2, 4])
    up = create_method("gradcam", model).attribute(x, target)
    ref = F.interpolate(_direct_gradcam(model, x, target).detach(), size=(12, 12), mode="bilinear")
    assert up.shape == (3, 1, 12, 12)
    torch.testing.assert_close(up, ref, rtol=1e-5, atol=1e-6)


def test_gradcam_layer_by_name_and_bad_name():
    model = _model()
    m = create_method("gradcam", model, layer="features")
    assert m.settings()["layer"] == "features"
    with pytest.raises(ValueError, match="not a submodule"):
        create_method("gradcam", model, layer="nope.layer")


@pytest.mark.parametrize("baseline", ["zeros", "blur", "mean", "uniform"])
def test_integrated_gradients_completeness(baseline):
    """sum(IG) = F(x) - F(baseline) for the target logit (smooth model: GELU, average pooling)."""
    model, x = _model(activation="gelu", pool="avg", batchnorm=False, init="kaiming"), _x(n=2, res=8)
    with torch.no_grad():
        model.fc.weight.mul_(100.0)  # an untrained net barely reacts to its input; amplify the logits
    target = torch.tensor([1, 4])
    ig = create_method("ig", model, baseline=baseline, n_steps=128)
    attr = ig.attribute(x, target)
    base = ig.baselines(x)
    with torch.no_grad():
        diff = model(x).gather(1, target.view(-1, 1)).squeeze(1) - model(base).gather(1, target.view(-1, 1)).squeeze(1)
    total = attr.sum(dim=(1, 2, 3))
    assert diff.abs().min() > 0.05, "baseline too close to the input for a meaningful check"
    torch.testing.assert_close(total, diff, rtol=2e-3, atol=1e-4)


def test_ig_baselines_are_what_they_say():
    x = _x(n=2, res=8)
    ig = create_method("ig", _model(), baseline="mean")
    torch.testing.assert_close(ig.baselines(x)[:, :, 3, 5], x.mean(dim=(2, 3)))
    assert torch.equal(BASELINES["zeros"](x, ig), torch.zeros_like(x))
    u = create_method("ig", _model(), baseline="uniform", seed=3)
    b1, b2 = u.baselines(x), create_method("ig", _model(), baseline="uniform", seed=3).baselines(x)
    assert torch.equal(b1, b2)
    assert (b1 >= x.amin(dim=(0, 2, 3), keepdim=True)).all() and (b1 <= x.amax(dim=(0, 2, 3), keepdim=True)).all()
    # blur keeps a constant image constant and preserves the mean of a periodic-free smooth ramp's centre
    const = torch.full((1, 2, 8, 8), 0.7)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)
    with pytest.raises(ValueError, match="baseline must be one of"):
        create_method("ig", _model(), baseline="black")


def test_saliency_is_abs_input_gradient():
    model, x = _model(), _x()
    target = torch.tensor([0, 1, 2])
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr).gather(1, target.view(-1, 1)).sum(), xr)
    torch.testing.assert_close(create_method("saliency", model).attribute(x, target), g.abs())
    torch.testing.assert_close(create_method("saliency", model, abs=False).attribute(x, target), g)


def test_smoothgrad_explicit_stdev_seeded_and_tends_to_saliency():
    model, x = _model(), _x()
    target = torch.tensor([0, 1, 2])
    a = create_method("smoothgrad", model, stdev=0.3, nt_samples=4, seed=5).attribute(x, target)
    b = create_method("smoothgrad", model, stdev=0.3, nt_samples=4, seed=5).attribute(x, target)
    c = create_method("smoothgrad", model, stdev=0.3, nt_samples=4, seed=6).attribute(x, target)
    assert torch.equal(a, b) and not torch.equal(a, c)
    tiny = create_method("smoothgrad", model, stdev=1e-7, nt_samples=2).attribute(x, target)
    torch.testing.assert_close(tiny, create_method("saliency", model).attribute(x, target), rtol=1e-4, atol=1e-6)
    sg = create_method("smoothgrad", model, noise_level=0.2)
    sg.calibrate(x)
    assert sg.settings()["stdev"] == pytest.approx(0.2 * float(x.max() - x.min()))


def test_registry_and_option_errors():
    assert set(list_methods()) >= {"gradcam", "ig", "saliency", "smoothgrad"}
    with pytest.raises(KeyError, match="unknown attribution method 'gradcm'.*gradcam"):
        create_method("gradcm", _model())
    with pytest.raises(ValueError, match="does not accept option.*'steps'.*n_steps"):
        create_method("ig", _model(), steps=3)
    with pytest.raises(ValueError, match="not selected"):
        build_methods(_model(), ["ig"], {"gradcam": {"relu": False}})


def test_explain_batches_over_images_and_targets():
    model, x = _model(), _x(n=5)
    labels = torch.tensor([0, 1, 2, 3, 4])
    methods = build_methods(model, ["gradcam", "saliency"])
    t_pred = resolve_targets(model, x, labels, "pred")
    with torch.no_grad():
        assert torch.equal(t_pred, model(x).argmax(1))
    assert torch.equal(resolve_targets(model, x, labels, "true"), labels)
    whole = explain(model, x, labels, methods, batch_size=5)
    chunked = explain(model, x, labels, methods, batch_size=2)
    for k in methods:
        torch.testing.assert_close(whole.attributions[k], chunked.attributions[k])
        assert whole.maps[k].shape == (5, 12, 12)
    with pytest.raises(ValueError, match="eval mode"):
        explain(model.train(), x, labels, methods)


def test_infidelity_matches_its_definition():
    """captum infidelity (normalised) = mean_s (beta * I_s.a - (f(x) - f(x - I_s)))^2 with the optimal beta."""
    model, x = _model(), _x(n=2, res=8)
    target = torch.tensor([1, 3])
    m = create_method("saliency", model, abs=False)
    attr = m.attribute(x, target)
    n, std = 4, 0.1
    res = faithfulness(model, m, x, target, attr, n_perturb_samples=n, infidelity_std=std, seed=7)
    with fork_rng_seeded(derive_seed(7, "explain/infidelity/saliency")):
        noise = torch.randn(2 * n, 2, 8, 8) * std  # captum perturbs the repeat_interleave'd batch in one call
    xe = x.repeat_interleave(n, 0)
    te = target.repeat_interleave(n)
    with torch.no_grad():
        fdiff = model(xe).gather(1, te.view(-1, 1)).squeeze(1) - model(xe - noise).gather(1, te.view(-1, 1)).squeeze(1)
    dot = (noise * attr.repeat_interleave(n, 0)).sum(dim=(1, 2, 3))
    dot, fdiff = dot.view(2, n).double(), fdiff.view(2, n).double()
    beta = (dot * fdiff).sum(1) / (dot * dot).sum(1)
    ref = ((beta[:, None] * dot - fdiff) ** 2).mean(1)
    torch.testing.assert_close(res["infidelity"].double(), ref, rtol=1e-3, atol=1e-9)
    assert res["sensitivity_max"].shape == (2,) and (res["sensitivity_max"] >= 0).all()
