"""Family-specific behaviour: rn9 pooling/scale/width/bias, airbench whitening/dirac/frozen BN,
option-A shortcuts, batchnorm/dropout switches, SimpleResNet blocks."""


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import create_model, model_info
from cnnlab.models.airbench import dirac_init_
from cnnlab.models.cifar_resnet import ShortcutA
from cnnlab.models.registry import meta_device


def meta(name, **kw):
    with meta_device():
        return create_model(name, **kw)


# ---------------------------------------------------------------------------------------- ResNet-9


def test_resnet9_global_lse_pooling_lies_between_average_and_max():
    """rn9 with the seed's (mean-based) LSE as its global pool: at eps -> 0 it is the average-pool rn9."""
    torch.manual_seed(0)
    avg = create_model("resnet9", pooling="avg").eval()
    lse = create_model("resnet9", pooling="lse", lse_eps=1e-6).eval()
    lse.load_state_dict(avg.state_dict())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lse(x), avg(x), rtol=1e-4, atol=1e-5)


def test_resnet9_output_scale_multiplies_logits():
    a, b = create_model("resnet9").eval(), create_model("resnet9", output_scale=1.0).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), 0.2 * b(x))


def test_resnet9_width_and_bias_options_change_exactly_the_expected_parameters():
    base = model_info(meta("resnet9")).total_params
    conv_out = 64 + 128 + 128 + 128 + 256 + 256 + 256 + 128  # eight convs
    assert model_info(meta("resnet9", bias=True)).total_params == base + conv_out
    half = meta("resnet9", width=0.5)
    assert [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 64, 64, 128, 128, 128, 64]
    assert half.fc.in_features == 64


def test_resnet9_structure_follows_rn9():
    m = meta("resnet9")
    convs = [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert convs == [(3, 1, 1), (5, 2, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 1), (3, 1, 0)]
    assert m.fc.bias is None and isinstance(m.pool, nn.AdaptiveMaxPool2d) and isinstance(m[4], nn.MaxPool2d)
    assert m.gradcam_layer() is m[6] and m.features[0].in_channels == 3


# ---------------------------------------------------------------------------------------- airbench


def correlated_images(n=64, c=3, size=12, seed=0):
    """Zero-mean images with strong channel and neighbouring-pixel correlations."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, size + 1, size + 1, generator=g, dtype=torch.float64)
    z = (z[..., 1:, 1:] + z[..., :-1, 1:] + z[..., 1:, :-1] + 0.5 * z[..., :-1, :-1])  # spatial smoothing
    mix = torch.tensor([[1.0, 0.8, 0.3], [0.0, 0.6, 0.5], [0.0, 0.0, 0.4]], dtype=torch.float64)[:c, :c]
    return torch.einsum("dc,nchw->ndhw", mix, z).float()


def patch_covariance(x, weight):
    """Covariance of the conv outputs over all positions, computed by explicit patch slicing."""
    n, c, h, w = x.shape
    patches = torch.stack([x[:, :, i:i + 2, j:j + 2].reshape(n, -1) for i in range(h - 1) for j in range(w - 1)], 1)
    out = patches.reshape(-1, c * 4).double() @ weight.reshape(weight.shape[0], -1).double().T
    return out.T @ out / out.shape[0], patches.reshape(-1, c * 4).double()


def test_airbench_whitening_gives_identity_covariance():
    model = create_model("airbench94")
    x = correlated_images()
    cov_before, _ = patch_covariance(x, model.whiten.weight[:12])
    assert (cov_before - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5  # a real change follows
    eigvals = model.init_whitening(x, eps=1e-8)
    w = model.whiten.weight
    cov_after, patches = patch_covariance(x, w[:12])
    torch.testing.assert_close(cov_after, torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(w[12:], -w[:12])
    # the returned spectrum is that of the patch second-moment matrix (numpy, computed independently)
    ref = np.sort(np.linalg.eigvalsh((patches.T @ patches / patches.shape[0]).numpy()))[::-1]
    np.testing.assert_allclose(eigvals.double().numpy(), ref, rtol=1e-4)
    # the same through an actual convolution with the layer's weights (no bias)
    out = F.conv2d(x, w)
    flat = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1).double()
    torch.testing.assert_close(flat @ flat.T / flat.shape[1], torch.eye(12, dtype=torch.float64), atol=1e-3, rtol=0)


def eigvals_mid(x):
    """Median eigenvalue of the patch second-moment matrix."""
    _, patches = patch_covariance(x, torch.zeros(1, 3, 2, 2))
    return float(np.median(np.linalg.eigvalsh((patches.T @ patches / patches.shape[0]).numpy())))


def test_airbench_whitening_eps_shrinks_low_variance_directions_and_checks_input():
    model = create_model("airbench94")
    x = correlated_images()
    eps = eigvals_mid(x)
    eigvals = model.init_whitening(x, eps=eps).double()
    cov, _ = patch_covariance(x, model.whiten.weight[:12])
    # output variance along eigendirection k is lambda_k / (lambda_k + eps): < 1/2 below the median
    torch.testing.assert_close(cov, torch.diag(eigvals / (eigvals + eps)), atol=1e-4, rtol=1e-3)
    with pytest.raises(ValueError, match=r"normalised float images of shape \(N, 3, H, W\)"):
        model.init_whitening((x * 50).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.init_whitening(x[:, :1])


def test_airbench_whitening_in_one_channel_model():
    model = create_model("airbench94", in_channels=1)
    assert model.whiten.weight.shape == (8, 1, 2, 2) and model.block1.conv1.in_channels == 8
    x = correlated_images(c=1)
    model.init_whitening(x, eps=1e-8)
    cov, _ = patch_covariance(x, model.whiten.weight[:4])
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=1e-4, rtol=0)


def test_airbench_frozen_parameters_and_counts():
    m = create_model("airbench94")
    info = model_info(m)
    assert info.total_params == 1_972_792
    assert info.total_params - info.trainable_params == 288 + 2 * (64 + 256 + 256)  # whitening + BN scales
    assert not m.whiten.weight.requires_grad and m.whiten.bias.requires_grad
    assert not m.block2.norm1.weight.requires_grad and m.block2.norm1.bias.requires_grad
    free = model_info(create_model("airbench94", freeze_bn_weights=False))
    assert free.total_params - free.trainable_params == 288
    assert m.block1.norm1.eps == 1e-12 and m.block1.norm1.momentum == 0.4 and m.scale == pytest.approx(1 / 9)


def test_airbench_dirac_init_makes_the_first_filters_identity():
    torch.manual_seed(0)
    m = create_model("airbench94")
    x = torch.randn(2, 64, 8, 8)
    conv = m.block2.conv1  # 64 -> 256
    torch.testing.assert_close(F.conv2d(x, conv.weight[:64], padding=1), x)
    assert conv.weight[64:].abs().sum() > 0  # the remaining filters keep their random init
    plain = create_model("airbench94", dirac_init=False).block2.conv1
    assert not torch.allclose(F.conv2d(x, plain.weight[:64], padding=1), x, atol=0.1)
    w = torch.randn(3, 5, 3, 3)  # fewer outputs than inputs: identity on the first 3 channels
    dirac_init_(w)
    torch.testing.assert_close(F.conv2d(torch.ones(1, 5, 4, 4), w, padding=1), torch.ones(1, 3, 4, 4))


def test_airbench_pool_matches_maxpool3_at_32px():
    m = create_model("airbench94").eval()
    feats = []
    m.block3.register_forward_hook(lambda mod, i, o: feats.append(o))
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert feats[0].shape[-2:] == (3, 3)
    torch.testing.assert_close(out, m.head(F.max_pool2d(feats[0], 3).flatten(1)) / 9)


# ----------------------------------------------------------------------------------- CIFAR ResNets


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = ShortcutA(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


# He et al. Table 6 counts with parameter-free option-A shortcuts
OPTION_A = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_depth_counts_conv_layers(depth):
    m = meta(f"resnet{depth}", shortcut="A")
    assert model_info(m).total_params == OPTION_A[depth]
    n_conv = sum(isinstance(x, nn.Conv2d) for x in m.modules())
    assert n_conv + 1 == depth  # 6n+2 weighted layers: convs plus the linear head
    # option B (the default) adds two 1x1 conv + BN projections: 16->32 and 32->64
    assert model_info(meta(f"resnet{depth}")).total_params - OPTION_A[depth] == 16 * 32 + 64 + 32 * 64 + 128
    assert [len(m.layer1), len(m.layer2), len(m.layer3)] == [(depth - 2) // 6] * 3


def test_cifar_resnet_without_batchnorm_and_with_dropout():
    plain = meta("resnet20", batchnorm=False)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in plain.modules())
    convs = [x for x in plain.modules() if isinstance(x, nn.Conv2d)]
    assert all(c.bias is not None for c in convs)
    bn_params = 2 * sum(c.out_channels for c in convs)
    assert model_info(plain).total_params == 272_474 - bn_params + sum(c.out_channels for c in convs)
    assert all(c.bias is None for c in meta("resnet20").modules() if isinstance(c, nn.Conv2d))
    torch.manual_seed(0)
    m = create_model("resnet20", dropout=0.5)
    assert m.dropout.p == 0.5
    x = torch.randn(2, 3, 16, 16)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


# ---------------------------------------------------------------------------------------- CIFAR VGG


def test_cifar_vgg_batchnorm_switch_and_layout():
    bn = meta("vgg11_cifar")
    assert isinstance(bn.features[1], nn.BatchNorm2d) and bn.classifier.in_features == 512
    plain = meta("vgg11_cifar", batchnorm=False)
    assert model_info(plain).total_params == 9_231_114 - 2 * (64 + 128 + 256 * 2 + 512 * 4)
    assert bn.gradcam_layer() is bn.body[-2]  # the last conv block, before the final max pool
    assert sum(isinstance(x, nn.Conv2d) for x in meta("vgg16_cifar").modules()) == 13


# ------------------------------------------------------------------------------------ SimpleResNet


def test_simple_resnet_blocks_option_and_stem():
    m = meta("resnet4stage")
    stem = m.conv1
    assert (stem.in_channels, stem.kernel_size, stem.stride) == (1, (3, 3), (1, 1))
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    deeper = meta("simple_resnet", blocks=(1, 2, 1, 1))
    extra = 2 * (128 * 128 * 9 + 2 * 128)  # one more 128-wide BasicBlock
    assert model_info(deeper).total_params - model_info(meta("simple_resnet", blocks=(1, 1, 1, 1))).total_params == extra


def test_resnet4stage_on_emnist_size_input():
    m = create_model("resnet4stage", num_classes=47).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 47)
