"""The whole model zoo: exact parameter counts, shapes at several resolutions, hook points, option errors.

Large models are built on the meta device (exact shapes and counts, no memory, no compute); cheap ones
also run real forward passes.
"""

import pytest
import torch
from torch import nn

from cnnlab.models import create_model, gradcam_layer, list_models, masking_layer, model_info
from cnnlab.models.registry import get_entry, meta_device

# (name, num_classes) -> exact parameter count, from the public sources in the reference sheet
# (torchvision weights metadata for the ImageNet models, papers / reference code for the CIFAR ones).
EXACT_PARAMS = {
    ("resnet9", 10): 2_274_880,
    ("resnet9_paper", 10): 14_200_000,
    ("resnet9_table", 10): 30_597_930,
    ("airbench94_adapted", 10): 12_310_540,
    ("airbench94", 10): 1_972_792,
    # seed 001's code (option-B projection shortcuts); He et al.'s option A is checked in test_models_families.py
    ("resnet20", 10): 272_474,
    ("resnet32", 10): 466_906,
    ("resnet44", 10): 661_338,
    ("resnet56", 10): 855_770,
    ("resnet110", 10): 1_730_714,
    ("vgg11_cifar", 10): 9_231_114,
    ("vgg13_cifar", 10): 9_416_010,
    ("vgg16_cifar", 10): 14_728_266,
    ("vgg11", 1000): 132_863_336,
    ("vgg13", 1000): 133_047_848,
    ("vgg16", 1000): 138_357_544,
    ("vgg11_bn", 1000): 132_868_840,
    ("vgg13_bn", 1000): 133_053_736,
    ("vgg16_bn", 1000): 138_365_992,
    ("resnet18", 1000): 11_689_512,
    ("resnet34", 1000): 21_797_672,
    ("resnet50", 1000): 25_557_032,
    ("resnet101", 1000): 44_549_160,
    ("mobilenet_v2", 1000): 3_504_872,
    ("mobilenet_v3_small", 1000): 2_542_856,
    ("mobilenet_v3_large", 1000): 5_483_032,
    ("resnet4stage", 10): 4_902_090,
    # kuangliu-style CIFAR ResNet-18 (3x3 stem, BasicBlock 2-2-2-2, 64..512), a widely quoted 11,173,962
    ("simple_resnet", 10): 11_173_962,
    ("tiny_cnn", 10): 24_346,
    ("simple_cnn", 10): 391_466,
}

# Models too large to build for real in a fast test (130M+ parameters); everything about them is checked
# on meta, where they are also cheap (few layers).
META_ONLY = {"vgg11", "vgg13", "vgg16", "vgg11_bn", "vgg13_bn", "vgg16_bn"}


def meta_model(name: str, **kwargs) -> nn.Module:
    with meta_device():
        return create_model(name, **kwargs).eval()


# Counted arithmetically from the channel table in test_models_torchvision.py (no public figure exists).
COUNTED_ELSEWHERE = {"mobilenet_v2_075"}


def test_every_registered_model_has_an_exact_count():
    assert {n for n, _ in EXACT_PARAMS} | COUNTED_ELSEWHERE == set(list_models())


@pytest.mark.parametrize("name,num_classes", sorted(EXACT_PARAMS))
def test_exact_parameter_count(name, num_classes):
    assert model_info(meta_model(name, num_classes=num_classes)).total_params == EXACT_PARAMS[name, num_classes]


def test_meta_and_real_builds_agree_on_counts():
    for name in ("resnet9", "airbench94", "mobilenet_v3_small", "resnet20"):
        assert model_info(create_model(name)).total_params == model_info(meta_model(name)).total_params


def test_head_scales_with_num_classes():
    # only the final linear layer depends on the class count: weight (+ bias) rows
    a = model_info(meta_model("resnet18", num_classes=1000)).total_params
    b = model_info(meta_model("resnet18", num_classes=7)).total_params
    assert a - b == 993 * (512 + 1)
    a = model_info(meta_model("resnet9", num_classes=10)).total_params
    b = model_info(meta_model("resnet9", num_classes=100)).total_params
    assert b - a == 90 * 128  # rn9's head has no bias


def check_forward(model: nn.Module, in_channels: int, resolutions, num_classes: int) -> None:
    """Forward batches of 2 at each resolution; the masking and Grad-CAM layers are modules whose hooks
    fire exactly once per forward, the masking output has the first conv's channels and the Grad-CAM
    output is a 4-d feature map. On CPU the outputs are also finite and tell the two inputs apart."""
    device = next(model.parameters()).device
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    mask_layer, cam_layer = masking_layer(model), gradcam_layer(model)
    assert isinstance(mask_layer, nn.Module) and isinstance(cam_layer, nn.Module)
    seen: dict[str, list[torch.Size]] = {"mask": [], "cam": []}
    handles = [
        mask_layer.register_forward_hook(lambda m, i, o: seen["mask"].append(o.shape)),
        cam_layer.register_forward_hook(lambda m, i, o: seen["cam"].append(o.shape)),
    ]
    with torch.no_grad():
        for res in resolutions:
            seen["mask"].clear(), seen["cam"].clear()
            x = torch.randn(2, in_channels, res, res, generator=torch.Generator().manual_seed(res)).to(device)
            out = model(x)
            assert out.shape == (2, num_classes), (res, out.shape)
            assert len(seen["mask"]) == 1 and len(seen["cam"]) == 1, (res, seen)
            assert seen["mask"][0][:2] == (2, first_conv.out_channels)
            assert len(seen["cam"][0]) == 4
            if device.type != "meta":
                assert torch.isfinite(out).all() and not torch.equal(out[0], out[1])
    for h in handles:
        h.remove()


# Shapes at 224 px are checked on meta (CPU compute there is slow); the deeper CIFAR ResNets repeat
# resnet20's code, so they skip 224. Those three get a real 224 forward below instead.
CIFAR_DEEP = {"resnet32", "resnet44", "resnet56", "resnet110"}
REAL_224 = ("resnet18", "mobilenet_v2", "mobilenet_v3_small")
WIDE = {"resnet9_paper", "resnet9_table", "airbench94_adapted", "vgg16_cifar", "resnet50", "resnet101"}  # real forward at 32 only


def sizes(name, wanted):
    """The wanted resolutions the model takes (airbench94_adapted's final k3 pool limits it to 25..48 px)."""
    top = get_entry(name).max_resolution
    return sorted(r for r in wanted if top is None or r <= top)


@pytest.mark.parametrize("name", sorted(set(list_models()) - META_ONLY))
def test_real_forward_at_min_32_64_and_one_channel(name):
    torch.manual_seed(0)
    min_res = get_entry(name).min_resolution
    model = create_model(name, num_classes=5, in_channels=3).eval()
    check_forward(model, 3, sizes(name, {min_res, 32} if name in WIDE else {min_res, 32, 64}), 5)
    check_forward(create_model(name, num_classes=5, in_channels=1).eval(), 1, [32], 5)


@pytest.mark.parametrize("name", sorted(META_ONLY))
def test_meta_forward_of_the_largest_models(name):
    check_forward(meta_model(name, num_classes=5, in_channels=3), 3, sorted({get_entry(name).min_resolution, 32, 64, 224}), 5)
    check_forward(meta_model(name, num_classes=5, in_channels=1), 1, [32], 5)


@pytest.mark.parametrize("name", sorted(set(list_models()) - META_ONLY - CIFAR_DEEP - set(REAL_224) - {"airbench94_adapted"}))
def test_meta_forward_at_224(name):
    check_forward(meta_model(name, num_classes=5, in_channels=3), 3, [224], 5)


@pytest.mark.parametrize("name,too_small", [("resnet9", 10), ("airbench94", 8), ("vgg11_cifar", 31), ("vgg16", 31)])
def test_min_resolution_is_tight(name, too_small):
    """The registered minimum works and one pixel less fails (checked on meta: same shape rules as CPU)."""
    model = meta_model(name)
    assert get_entry(name).min_resolution == too_small + 1
    model(torch.zeros(1, 3, too_small + 1, too_small + 1, device="meta"))
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, 3, too_small, too_small, device="meta"))


@pytest.mark.parametrize("name", REAL_224)
def test_real_forward_imagenet_resolution(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet9", "airbench94", "resnet20", "vgg11_cifar", "resnet4stage", "mobilenet_v3_small"])
def test_train_step_gives_finite_gradients_to_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=4).train()
    in_ch = get_entry(name).in_channels
    loss = nn.functional.cross_entropy(model(torch.randn(4, in_ch, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        else:
            assert p.grad is None, pname


def test_registered_default_in_channels():
    assert get_entry("resnet4stage").in_channels == 1
    assert create_model("resnet4stage").conv1.in_channels == 1
    assert create_model("resnet4stage", in_channels=3).conv1.in_channels == 3
    assert create_model("resnet9").features[0].in_channels == 3


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("resnet9", {"pooling": "mean"}, r"pooling must be one of max, avg, lse; got 'mean'"),
        ("resnet9", {"width": 0}, r"width must be > 0"),
        ("resnet9", {"pooling": "lse", "lse_eps": -1.0}, r"lse_eps must be a finite number >= 0"),
        ("resnet9", {"poolng": "lse"}, r"'poolng'.*accepted: width, pooling, downsample_pool, lse_eps, output_scale, bias"),
        ("resnet9", {"bias": "maybe"}, r"option 'bias' must be true or false, got 'maybe'"),
        ("resnet20", {"use_batchnorm": "maybe"}, r"option 'batchnorm' must be true or false, got 'maybe'"),
        ("resnet20", {"use_dropout": 1}, r"'use_dropout' must be true or false"),
        ("resnet20", {"shortcut": "C"}, r"shortcut must be 'A'"),
        ("tiny_cnn", {"widths": [-4]}, r"widths"),
        ("tiny_cnn", {"widths": [True, 8]}, r"option 'widths\[0\]' must be an integer"),
        ("resnet9", {"width": float("nan")}, r"option 'width' must be a finite number"),
        ("airbench94", {"widths": (64, 256)}, r"option 'widths' must be a list of 3 values"),
        ("airbench94", {"bn_momentum": 1.5}, r"bn_momentum must be in \[0, 1\]"),
        ("resnet20", {"dropout": 1.5}, r"dropout must be in \[0, 1\)"),
        ("resnet20", {"depth": 21}, r"'depth'.*accepted: batchnorm, dropout, shortcut"),
        ("mobilenet_v2", {"width_mult": 0}, r"width_mult must be > 0"),
        ("mobilenet_v3_large", {"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ("simple_resnet", {"blocks": (1, 1, 1)}, r"blocks must be 4 positive ints"),
        ("vgg11", {"batch_norm": True}, r"'batch_norm'.*accepted: dropout"),
    ],
)
def test_bad_options_are_clear_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


def test_named_variants_are_their_base_with_options():
    a = meta_model("resnet9_paper")
    b = meta_model("resnet9", width=2.5, pooling="avg", downsample_pool="lse", bias=True, output_scale=0.04)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert a.output_scale == b.output_scale == 0.04 and a[4].eps == 0.1 and isinstance(a.pool, nn.AdaptiveAvgPool2d)
    assert model_info(meta_model("mobilenet_v2_075")).total_params == model_info(meta_model("mobilenet_v2", width_mult=0.75)).total_params
    # a caller may override a variant's default
    assert isinstance(meta_model("resnet9_paper", pooling="max").pool, nn.AdaptiveMaxPool2d)


def test_meta_device_context_is_scoped_and_real_builds_are_initialised():
    with meta_device():
        model = create_model("mobilenet_v3_small")
    assert all(p.is_meta for p in model.parameters())
    assert torch.empty(1).device.type == "cpu"  # the context does not leak
    real = create_model("mobilenet_v3_small")
    assert real.classifier[0].weight.std().item() == pytest.approx(0.01, rel=0.1)  # torchvision's N(0, 0.01)


def test_register_rejects_defaults_the_factory_does_not_take():
    from cnnlab.models import register_model
    from cnnlab.models.resnet9 import resnet9

    with pytest.raises(ValueError, match=r"default option\(s\) \['widht'\] are not parameters of resnet9"):
        register_model("resnet9_typo", family="resnet9", widht=2.0)(resnet9)
    assert "resnet9_typo" not in list_models()


def test_small_cnn_head_pool_keeps_a_spatial_map():
    """head_pool=k: adaptive average pool to k x k, flattened into the linear head (counted by hand)."""
    m = create_model("tiny_cnn", num_classes=10, in_channels=1, widths=(16, 32), head_pool=7, activation="gelu", pool="avg")
    # conv 1*16*9 + BN 2*16 + conv 16*32*9 + BN 2*32 + linear (32*7*7)*10 + 10
    assert sum(p.numel() for p in m.parameters()) == 144 + 32 + 4608 + 64 + 15680 + 10
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert m(torch.zeros(2, 1, 64, 64)).shape == (2, 10)  # any input size: the pool is adaptive
    with pytest.raises(ValueError, match="head_pool"):
        create_model("tiny_cnn", head_pool=0)
