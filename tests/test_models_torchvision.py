"""torchvision-layout models: state_dict keys and shapes, checkpoint loading and outputs.

torchvision cannot be imported here, so the expected key/shape lists are derived in this file from the
architectures' published tables (independently of the model code), and "torchvision checkpoints" are
synthesised from those lists. Outputs are compared against plain functional re-implementations that read
the checkpoint dictionary directly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models import create_model, model_info
from cnnlab.models.registry import meta_device

Keys = list[tuple[str, tuple[int, ...]]]


def bn_keys(prefix: str, c: int) -> Keys:
    return [(f"{prefix}.{k}", (c,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
        (f"{prefix}.num_batches_tracked", ())
    ]


def divisible8(v: float) -> int:
    """The MobileNet reference channel rounding: nearest multiple of 8, >= 8, never < 90% of v."""
    r = max(8, int(v + 4) // 8 * 8)
    return r + 8 if r < 0.9 * v else r


# ------------------------------------------------------------------------------- expected key lists


def resnet18_keys(num_classes: int = 1000) -> Keys:
    keys: Keys = [("conv1.weight", (64, 3, 7, 7))] + bn_keys("bn1", 64)
    cin = 64
    for li, planes in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{li}.{b}"
            keys += [(f"{p}.conv1.weight", (planes, cin, 3, 3))] + bn_keys(f"{p}.bn1", planes)
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3))] + bn_keys(f"{p}.bn2", planes)
            if cin != planes:
                keys += [(f"{p}.downsample.0.weight", (planes, cin, 1, 1))] + bn_keys(f"{p}.downsample.1", planes)
            cin = planes
    return keys + [("fc.weight", (num_classes, 512)), ("fc.bias", (num_classes,))]


VGG11_CFG = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def vgg11_keys(num_classes: int = 1000) -> Keys:
    keys: Keys = []
    idx, cin = 0, 3
    for v in VGG11_CFG:
        if v == "M":
            idx += 1
        else:
            keys += [(f"features.{idx}.weight", (v, cin, 3, 3)), (f"features.{idx}.bias", (v,))]
            idx, cin = idx + 2, v  # conv, ReLU
    for i, (o, n) in zip((0, 3, 6), ((4096, 512 * 49), (4096, 4096), (num_classes, 4096))):
        keys += [(f"classifier.{i}.weight", (o, n)), (f"classifier.{i}.bias", (o,))]
    return keys


# MobileNetV2 paper Table 2: expansion t, channels c, repeats n, stride s.
V2_TABLE = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def v2_blocks(width: float = 1.0) -> list[tuple[int, int, int, int]]:
    """(in, hidden, out, stride) per inverted residual block."""
    cin, out = divisible8(32 * width), []
    for t, c, n, s in V2_TABLE:
        cout = divisible8(c * width)
        for i in range(n):
            out.append((cin, cin * t, cout, s if i == 0 else 1))
            cin = cout
    return out


def mobilenet_v2_keys(num_classes: int = 1000) -> Keys:
    keys: Keys = [("features.0.0.weight", (32, 3, 3, 3))] + bn_keys("features.0.1", 32)
    blocks = v2_blocks()
    for i, (cin, hidden, cout, _) in enumerate(blocks, start=1):
        p, j = f"features.{i}.conv", 0
        if hidden != cin:
            keys += [(f"{p}.0.0.weight", (hidden, cin, 1, 1))] + bn_keys(f"{p}.0.1", hidden)
            j = 1
        keys += [(f"{p}.{j}.0.weight", (hidden, 1, 3, 3))] + bn_keys(f"{p}.{j}.1", hidden)
        keys += [(f"{p}.{j + 1}.weight", (cout, hidden, 1, 1))] + bn_keys(f"{p}.{j + 2}", cout)
    last = len(blocks) + 1
    keys += [(f"features.{last}.0.weight", (1280, 320, 1, 1))] + bn_keys(f"features.{last}.1", 1280)
    return keys + [("classifier.1.weight", (num_classes, 1280)), ("classifier.1.bias", (num_classes,))]


# MobileNetV3-Small (paper Table 2): in, kernel, expanded, out, SE squeeze width (None: no SE), hard-swish, stride.
# The SE widths are those of torchvision's printed state_dict.
V3_SMALL = [
    (16, 3, 16, 16, 8, False, 2), (16, 3, 72, 24, None, False, 2), (24, 3, 88, 24, None, False, 1),
    (24, 5, 96, 40, 24, True, 2), (40, 5, 240, 40, 64, True, 1), (40, 5, 240, 40, 64, True, 1),
    (40, 5, 120, 48, 32, True, 1), (48, 5, 144, 48, 40, True, 1), (48, 5, 288, 96, 72, True, 2),
    (96, 5, 576, 96, 144, True, 1), (96, 5, 576, 96, 144, True, 1),
]


def mobilenet_v3_small_keys(num_classes: int = 1000) -> Keys:
    keys: Keys = [("features.0.0.weight", (16, 3, 3, 3))] + bn_keys("features.0.1", 16)
    for i, (cin, k, exp, cout, se, _, _) in enumerate(V3_SMALL, start=1):
        p, j = f"features.{i}.block", 0
        if exp != cin:
            keys += [(f"{p}.0.0.weight", (exp, cin, 1, 1))] + bn_keys(f"{p}.0.1", exp)
            j = 1
        keys += [(f"{p}.{j}.0.weight", (exp, 1, k, k))] + bn_keys(f"{p}.{j}.1", exp)
        if se:
            j += 1
            keys += [(f"{p}.{j}.fc1.weight", (se, exp, 1, 1)), (f"{p}.{j}.fc1.bias", (se,)),
                     (f"{p}.{j}.fc2.weight", (exp, se, 1, 1)), (f"{p}.{j}.fc2.bias", (exp,))]
        keys += [(f"{p}.{j + 1}.0.weight", (cout, exp, 1, 1))] + bn_keys(f"{p}.{j + 1}.1", cout)
    last = len(V3_SMALL) + 1
    keys += [(f"features.{last}.0.weight", (576, 96, 1, 1))] + bn_keys(f"features.{last}.1", 576)
    return keys + [("classifier.0.weight", (1024, 576)), ("classifier.0.bias", (1024,)),
                   ("classifier.3.weight", (num_classes, 1024)), ("classifier.3.bias", (num_classes,))]


EXPECTED = {
    "resnet18": resnet18_keys,
    "vgg11": vgg11_keys,
    "mobilenet_v2": mobilenet_v2_keys,
    "mobilenet_v3_small": mobilenet_v3_small_keys,
}


def key_shapes(model: torch.nn.Module) -> Keys:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_state_dict_keys_and_shapes_match_torchvision(name):
    with meta_device():
        model = create_model(name, num_classes=1000)
    expected = EXPECTED[name]()
    assert key_shapes(model) == expected
    # the expected lists are right too: their parameter totals are torchvision's published counts
    n_params = sum(torch.Size(s).numel() for k, s in expected if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == model_info(model).total_params


def test_vgg_bn_keys_interleave_batchnorm():
    with meta_device():
        model = create_model("vgg11_bn", num_classes=1000)
    keys = dict(key_shapes(model))
    # conv at 0, BN at 1, ReLU at 2, max pool at 3, next conv at 4 ... last conv at 25, BN 26
    assert keys["features.0.weight"] == (64, 3, 3, 3) and keys["features.1.running_var"] == (64,)
    assert keys["features.4.weight"] == (128, 64, 3, 3) and keys["features.26.weight"] == (512,)
    assert "features.28.weight" not in keys


def test_mobilenet_v2_width_075_count_from_the_channel_table():
    def count(width: float, num_classes: int = 1000) -> int:
        stem = divisible8(32 * width)
        total = 3 * stem * 9 + 2 * stem
        for cin, hidden, cout, _ in v2_blocks(width):
            if hidden != cin:
                total += cin * hidden + 2 * hidden
            total += hidden * 9 + 2 * hidden + hidden * cout + 2 * cout
        last = divisible8(1280 * max(1.0, width))
        return total + v2_blocks(width)[-1][2] * last + 2 * last + last * num_classes + num_classes

    assert count(1.0) == 3_504_872  # the formula reproduces torchvision's figure
    with meta_device():
        assert model_info(create_model("mobilenet_v2_075", num_classes=1000)).total_params == count(0.75)
        assert model_info(create_model("mobilenet_v2", num_classes=1000, width_mult=0.5)).total_params == count(0.5)


# ----------------------------------------------------------------- synthetic torchvision checkpoints


def synthetic_checkpoint(keys: Keys, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values in torchvision's layout; BN statistics kept in a sane range so outputs stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in keys:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN weight
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = torch.Size(shape[1:]).numel()
            sd[k] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    return sd


def _bn(x, sd, p, eps=1e-5):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, eps)


def ref_resnet18(sd, x):
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for li in range(1, 5):
        for b in range(2):
            p, stride = f"layer{li}.{b}", 2 if (li > 1 and b == 0) else 1
            out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
    return F.linear(x.mean((2, 3)), sd["fc.weight"], sd["fc.bias"])


def ref_mobilenet_v2(sd, x):
    x = F.relu6(_bn(F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1), sd, "features.0.1"))
    for i, (cin, hidden, cout, stride) in enumerate(v2_blocks(), start=1):
        p, j, h = f"features.{i}.conv", 0, x
        if hidden != cin:
            h = F.relu6(_bn(F.conv2d(h, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
            j = 1
        h = F.relu6(_bn(F.conv2d(h, sd[f"{p}.{j}.0.weight"], stride=stride, padding=1, groups=hidden), sd, f"{p}.{j}.1"))
        h = _bn(F.conv2d(h, sd[f"{p}.{j + 1}.weight"]), sd, f"{p}.{j + 2}")
        x = x + h if (stride == 1 and cin == cout) else h
    x = F.relu6(_bn(F.conv2d(x, sd["features.18.0.weight"]), sd, "features.18.1"))
    return F.linear(x.mean((2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


def ref_mobilenet_v3_small(sd, x):
    bn = lambda x, p: _bn(x, sd, p, eps=1e-3)  # noqa: E731  (torchvision's V3 BN eps)
    x = F.hardswish(bn(F.conv2d(x, sd["features.0.0.weight"], stride=2, padding=1), "features.0.1"))
    for i, (cin, k, exp, cout, se, hs, stride) in enumerate(V3_SMALL, start=1):
        act = F.hardswish if hs else F.relu
        p, j, h = f"features.{i}.block", 0, x
        if exp != cin:
            h = act(bn(F.conv2d(h, sd[f"{p}.0.0.weight"]), f"{p}.0.1"))
            j = 1
        h = act(bn(F.conv2d(h, sd[f"{p}.{j}.0.weight"], stride=stride, padding=k // 2, groups=exp), f"{p}.{j}.1"))
        if se:
            j += 1
            s = F.relu(F.conv2d(h.mean((2, 3), keepdim=True), sd[f"{p}.{j}.fc1.weight"], sd[f"{p}.{j}.fc1.bias"]))
            h = h * F.hardsigmoid(F.conv2d(s, sd[f"{p}.{j}.fc2.weight"], sd[f"{p}.{j}.fc2.bias"]))
        h = bn(F.conv2d(h, sd[f"{p}.{j + 1}.0.weight"]), f"{p}.{j + 1}.1")
        x = x + h if (stride == 1 and cin == cout) else h
    x = F.hardswish(bn(F.conv2d(x, sd["features.12.0.weight"]), "features.12.1"))
    x = F.hardswish(F.linear(x.mean((2, 3)), sd["classifier.0.weight"], sd["classifier.0.bias"]))
    return F.linear(x, sd["classifier.3.weight"], sd["classifier.3.bias"])


REFERENCES = {"resnet18": ref_resnet18, "mobilenet_v2": ref_mobilenet_v2, "mobilenet_v3_small": ref_mobilenet_v3_small}


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_torchvision_checkpoint_loads_strict_and_gives_reference_outputs(name, tmp_path):
    keys = EXPECTED[name](num_classes=10)
    path = tmp_path / f"{name}.pth"
    torch.save(synthetic_checkpoint(keys), path)  # torchvision checkpoints are plain state_dict files
    sd = torch.load(path, weights_only=True)
    model = create_model(name, num_classes=10).eval()
    model.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(x), REFERENCES[name](sd, x)
    assert ours.abs().max() > 1e-3  # a non-trivial output
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "resnet9", "airbench94"])
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = create_model(name).eval()
    torch.save(model.state_dict(), tmp_path / "ckpt.pth")
    torch.manual_seed(1)
    fresh = create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        fresh.load_state_dict(torch.load(tmp_path / "ckpt.pth", weights_only=True), strict=True)
        assert torch.equal(fresh(x), model(x))


def test_torchvision_initialisation():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000)
    w = model.layer3[0].conv2.weight  # kaiming normal, fan_out, ReLU gain
    assert w.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.equal(model.bn1.bias, torch.zeros(64))
    zero = create_model("resnet18", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn2.weight) == 0 for layer in (zero.layer1, zero.layer4) for b in layer)
    mv2 = create_model("mobilenet_v2", num_classes=1000)
    assert mv2.classifier[1].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(mv2.classifier[1].bias) == 0


def test_first_block_and_gradcam_layer_follow_torchvision_names():
    with meta_device():
        r = create_model("resnet50")
        v, vb = create_model("vgg16"), create_model("vgg16_bn")
        m = create_model("mobilenet_v3_large")
    assert r.first_block() is r.relu and r.gradcam_layer() is r.layer4[-1]
    assert v.first_block() is v.features[1] and vb.first_block() is vb.features[2]
    assert v.gradcam_layer() is v.features[-2] and vb.gradcam_layer() is vb.features[-2]  # last ReLU
    assert m.first_block() is m.features[0] and m.gradcam_layer() is m.features[-1]
