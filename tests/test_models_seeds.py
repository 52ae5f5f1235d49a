"""The seeds' own models, built independently here from the architecture facts (plain torch, not the
registry), against cnnlab's: parameter count, state_dict keys and shapes in order, and outputs after
loading one model's state_dict into the other with ``strict=True``."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import LogSumExpPool2d, create_model, model_info

# ------------------------------------------------------------------ reference pieces, written from the facts


class RefLSE(nn.Module):
    """(1/eps) * log(mean(exp(eps * x))) per window, straight from the definition (no stabilisation)."""

    def __init__(self, eps, k=None, s=None):
        super().__init__()
        self.eps, self.k, self.s = eps, k, s or k

    def forward(self, x):
        e = torch.exp(self.eps * x)
        m = e.mean((2, 3), keepdim=True) if self.k is None else F.avg_pool2d(e, self.k, self.s)
        return torch.log(m) / self.eps


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x):
        return x * self.c


class Res(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return x + self.module(x)


def cbr(cin, cout, k=3, s=1, p=1, bias=False):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, bias=bias), nn.BatchNorm2d(cout), nn.ReLU())


def ref_rn9(num_classes=10, w=1.0, bias=False, pool=None, gpool=None, scale=0.2):
    a, b, c = int(64 * w), int(128 * w), int(256 * w)
    return nn.Sequential(
        cbr(3, a, bias=bias), cbr(a, b, 5, 2, 2, bias=bias), Res(nn.Sequential(cbr(b, b, bias=bias), cbr(b, b, bias=bias))),
        cbr(b, c, bias=bias), pool or nn.MaxPool2d(2), Res(nn.Sequential(cbr(c, c, bias=bias), cbr(c, c, bias=bias))),
        cbr(c, b, 3, 1, 0, bias=bias), gpool or nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(b, num_classes, bias=False),
        Scale(scale))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class RefTable(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 160, 3, 1, 1, bias=False), nn.BatchNorm2d(160)
        self.layer1 = nn.Sequential(Block(160, 160, 1))
        self.layer2 = nn.Sequential(Block(160, 320, 2))
        self.layer3 = nn.Sequential(Block(320, 640, 2))
        self.layer4 = nn.Sequential(Block(640, 1280, 2))
        self.pool = RefLSE(0.1)
        self.linear_original = nn.Linear(1280, num_classes)
        self.linear = nn.Sequential()  # the seed wraps the same Linear: keys linear.linear.*
        self.linear.linear = self.linear_original

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear_original(self.pool(x).flatten(1)) * 0.04


def ref_airbench_adapted(num_classes=10):
    def blk(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), RefLSE(0.1, 2), nn.BatchNorm2d(cout), nn.GELU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())
    return nn.Sequential(nn.Conv2d(3, 60, 2, bias=True), nn.GELU(), blk(60, 160), blk(160, 640), blk(640, 640),
                         RefLSE(0.1, 3), nn.Flatten(), nn.Linear(640, num_classes, bias=False), Scale(0.04))


class RefSimpleResNet(nn.Module):
    """Seed 004's SimpleResNet, [1, 1, 1, 1], one input channel."""

    def __init__(self, num_classes=10, blocks=(1, 1, 1, 1)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64)
        cin, layers = 64, []
        for i, (c, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            layers.append(nn.Sequential(*[Block(cin if j == 0 else c, c, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]))
            cin = c
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.avgpool(x).flatten(1))


class CifarBlock(nn.Module):
    def __init__(self, cin, cout, stride, bn):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=not bn)
        self.bn1 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=not bn)
        self.bn2 = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=not bn), nn.BatchNorm2d(cout) if bn else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class RefCifarResNet(nn.Module):
    def __init__(self, n, bn=True, dropout=False):
        super().__init__()
        stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=not bn)] + ([nn.BatchNorm2d(16)] if bn else []) + [nn.ReLU()]
        self.features = nn.Sequential(*stem)
        cin, stages = 16, []
        for i, c in enumerate((16, 32, 64)):
            stages.append(nn.Sequential(*[CifarBlock(cin if j == 0 else c, c, 2 if (j == 0 and i) else 1, bn) for j in range(n)]))
            cin = c
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(64, 10)) if dropout else nn.Linear(64, 10)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.features(x))))
        return self.classifier(self.avgpool(x).flatten(1))


# ------------------------------------------------------------------------------------------ checks


def randomise(model, seed):
    """Non-trivial BN statistics and biases, so a wrong key mapping would change outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                if name.endswith("running_var"):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif name.endswith(("running_mean", "bias")):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


def same_layout(ours, ref):
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]


def same_outputs(ours, ref, x, atol=1e-5):
    ours.load_state_dict(randomise(ref, 0).state_dict(), strict=True)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=atol)
    # and back: the other way round loads strictly too
    ref.load_state_dict(ours.state_dict(), strict=True)


def x32(n=2, c=3, res=32, seed=0):
    return torch.randn(n, c, res, res, generator=torch.Generator().manual_seed(seed))


SEED_COUNTS = [
    ("resnet9", 2_274_880), ("resnet9_paper", 14_200_000), ("resnet9_table", 30_597_930),
    ("airbench94_adapted", 12_310_540), ("resnet4stage", 4_902_090),
    ("resnet20", 272_474), ("resnet32", 466_906), ("resnet44", 661_338), ("resnet56", 855_770), ("resnet110", 1_730_714),
]


@pytest.mark.parametrize("name,count", SEED_COUNTS)
def test_seed_parameter_counts(name, count):
    from cnnlab.models.registry import meta_device

    with meta_device():
        assert model_info(create_model(name, num_classes=10)).total_params == count


def test_rn9_is_the_seeds_construct_rn9():
    torch.manual_seed(0)
    ours, ref = create_model("construct_rn9"), ref_rn9()
    same_layout(ours, ref)
    same_outputs(ours, ref, x32())


def test_resnet9_paper_is_the_seeds_construct_resnet9_paper():
    torch.manual_seed(0)
    ours = create_model("resnet9_paper")
    ref = ref_rn9(w=2.5, bias=True, pool=RefLSE(0.1, 2, 2), gpool=nn.AdaptiveAvgPool2d(1), scale=0.04)
    same_layout(ours, ref)
    convs = [m for m in ours.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.bias is not None and torch.equal(c.bias, torch.zeros_like(c.bias)) for c in convs)  # zero-initialised
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)) for m in ours.modules())
    same_outputs(ours, ref, x32(), atol=1e-5)


def test_resnet9_table_is_the_seeds_table_arch():
    torch.manual_seed(0)
    ours, ref = create_model("ResNet9TableArch"), RefTable()
    same_layout(ours, ref)
    assert ours.linear.linear is ours.linear_original and ours.linear_original.bias is not None
    same_outputs(ours, ref, x32(res=16), atol=1e-5)


def test_airbench94_adapted_is_the_seeds():
    torch.manual_seed(0)
    ours, ref = create_model("make_airbench94_adapted"), ref_airbench_adapted()
    same_layout(ours, ref)
    same_outputs(ours, ref, x32(), atol=1e-5)


def test_seed_option_names_reach_the_same_model():
    from cnnlab.models.registry import meta_device

    with meta_device():
        a = create_model("construct_resnet9_paper", width_multiplier=0.25, final_layer_scale=0.5, pooling_epsilon=0.2, bias_scale=1.0)
        b = create_model("resnet9_paper", width=0.25, output_scale=0.5, lse_eps=0.2)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    assert a.output_scale == 0.5 and a[4].eps == 0.2
    with pytest.raises(ValueError, match="same option"):
        create_model("resnet9_paper", width=1.0, width_multiplier=1.0)


def test_simple_resnet_loads_a_seed_state_dict_strictly():
    from cnnlab.models.simple_resnet import BasicBlock, SimpleResNet

    torch.manual_seed(0)
    ref = RefSimpleResNet(num_classes=47)
    ours = create_model("ResNet4StageCustom", num_classes=47)
    same_layout(ours, ref)
    same_outputs(ours, ref, x32(c=1, res=28))
    assert BasicBlock.expansion == 1
    seed_style = SimpleResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, in_channels=1)  # the seed's constructor
    assert sum(p.numel() for p in seed_style.parameters()) == 4_902_090
    deeper = SimpleResNet(block=BasicBlock, num_blocks_per_stage=[2, 1, 1, 2], num_classes=10, in_channels=1)
    same_layout(deeper, RefSimpleResNet(blocks=(2, 1, 1, 2)))


@pytest.mark.parametrize("depth,bn,dropout", [(20, True, False), (32, False, False), (20, True, True)])
def test_cifar_resnets_are_the_seeds(depth, bn, dropout):
    torch.manual_seed(0)
    ours = create_model(f"ResNet{depth}", use_batchnorm=bn, use_dropout=dropout)
    ref = RefCifarResNet((depth - 2) // 6, bn, dropout)
    same_layout(ours, ref)
    if not bn:
        assert model_info(ours).total_params == 465_674  # ResNet-32 without BN, from the seed's own count
    same_outputs(ours, ref, x32(res=16))


def test_cifar_resnet_init_is_the_seeds():
    torch.manual_seed(0)
    m = create_model("resnet56")
    assert m.fc.weight.std().item() == pytest.approx(0.01, rel=0.1) and torch.all(m.fc.bias == 0)
    conv = m.layer2[1].conv1  # 32 out channels, fan_out = 32 * 9: kaiming std sqrt(2 / fan_out)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (32 * 9)), rel=0.1)


# ------------------------------------------------------------------------------- log-sum-exp pooling


def brute_lse(x, eps, k, s):
    """Window by window in float64, the seed's formula."""
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = np.empty((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = x[:, :, i * s:i * s + k, j * s:j * s + k].reshape(n, c, -1)
            out[:, :, i, j] = np.log(np.mean(np.exp(eps * win), axis=2)) / eps
    return out


@pytest.mark.parametrize("eps,k,s", [(0.1, 2, 2), (1.0, 3, 3), (0.5, 3, 1), (2.0, 2, 1)])
def test_lse_pool_matches_the_definition_window_by_window(eps, k, s):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    out = LogSumExpPool2d(eps, kernel_size=k, stride=s)(x)
    np.testing.assert_allclose(out.numpy(), brute_lse(x.numpy(), eps, k, s), rtol=1e-10, atol=1e-12)


def test_lse_pool_global_matches_the_definition_and_seeds_minus_one():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected = np.log(np.mean(np.exp(0.1 * x.numpy().reshape(2, 4, -1)), axis=2)) / 0.1
    for pool in (LogSumExpPool2d(0.1), LogSumExpPool2d(0.1, kernel_size=-1)):
        out = pool(x)
        assert out.shape == (2, 4, 1, 1)
        np.testing.assert_allclose(out.squeeze((2, 3)).numpy(), expected, rtol=1e-10)


def test_lse_pool_limits_average_at_eps_zero_and_max_at_large_eps():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    avg, mx = F.avg_pool2d(x, 2), F.max_pool2d(x, 2)
    torch.testing.assert_close(LogSumExpPool2d(0.0, 2)(x), avg, rtol=0, atol=0)
    # eps -> 0: tends to the mean (no cancellation: the error shrinks with eps)
    for eps in (1e-3, 1e-6, 1e-9):
        assert (LogSumExpPool2d(eps, 2)(x) - avg).abs().max() <= 2 * eps * float(x.abs().max()) ** 2 + 1e-12
    # always between the window mean and the window max; large eps tends to the max within log(4)/eps
    for eps in (0.1, 1.0, 1e3):
        out = LogSumExpPool2d(eps, 2)(x)
        assert (out >= avg - 1e-12).all() and (out <= mx + 1e-12).all()
        assert (mx - out).max() <= math.log(4) / eps + 1e-12
    # stable where the naive formula overflows
    big = x * 1e4
    out = LogSumExpPool2d(1.0, 2)(big)
    assert torch.isfinite(out).all() and ((F.max_pool2d(big, 2) - out) <= math.log(4) + 1e-6).all()


def test_lse_pool_float32_close_to_average_at_eps_0_1_and_gradients_reach_every_position():
    x = torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(4))
    out = LogSumExpPool2d(0.1, 2)(x)
    ref = torch.from_numpy(brute_lse(x.double().numpy(), 0.1, 2, 2)).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # eps 0.1 is close to average pooling: by Hoeffding's lemma, 0 <= LSE - mean <= eps * range^2 / 8 per window
    spread = F.max_pool2d(x, 2) + F.max_pool2d(-x, 2)
    diff = out - F.avg_pool2d(x, 2)
    assert (diff >= -1e-5).all() and (diff <= 0.1 * spread**2 / 8 + 1e-5).all()
    x64 = x.double().requires_grad_(True)
    LogSumExpPool2d(0.5, 2)(x64).sum().backward()
    assert (x64.grad > 0).all()
    # gradient of the window: softmax(eps * window), checked against torch.autograd.gradcheck
    small = torch.randn(1, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    assert torch.autograd.gradcheck(LogSumExpPool2d(0.7, 2), (small,))
    assert torch.autograd.gradgradcheck(LogSumExpPool2d(0.7, 2), (small,))  # MAGIC differentiates twice


def test_lse_pool_refuses_bad_settings():
    for bad in (-0.1, float("nan"), float("inf"), True, "0.1"):
        with pytest.raises(ValueError, match="lse_eps"):
            LogSumExpPool2d(bad)
    with pytest.raises(ValueError, match="kernel_size"):
        LogSumExpPool2d(0.1, kernel_size=0)


def test_magic_chaos_warning_does_not_fire_for_the_seeds_smooth_resnet9():
    """resnet9_paper has no max pooling left (LSE k2 + global average): MAGIC's ReLU + max-pool warning is
    for rn9, not for it (checked on a CPU-sized member of the family, width 0.25)."""
    from cnnlab.attribution.magic import chaos_warnings
    from cnnlab.engine.config import build_config
    from cnnlab.engine.setup import build_run

    def warnings_for(name):
        cfg = build_config({"model": {"name": name, "options": {"width": 0.25}},
                            "data": {"name": "digits", "subset": 32, "resolution": 16},
                            "optim": {"name": "sgd", "lr": 0.01}, "train": {"device": "cpu", "epochs": 1, "batch_size": 16}})
        return " ".join(chaos_warnings(cfg, build_run(cfg)))

    assert "max pooling" not in warnings_for("resnet9_paper")
    assert "ReLU + max pooling" in warnings_for("resnet9")
