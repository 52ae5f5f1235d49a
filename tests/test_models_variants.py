"""Named variants over one builder: ``model_args`` fix the architecture (not options a caller may set),
``defaults`` bake options in; the family tables give the published layer counts."""

import pytest
import torch
from torch import nn

from cnnlab.models import create_model, list_models, model_info, model_options, register_model
from cnnlab.models.registry import _REGISTRY, get_entry, meta_device


class Stack(nn.Module):
    """``depth`` conv layers of ``width`` channels: a toy builder with an architecture argument."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1)]
        layers += [nn.Conv2d(width, width, 3, padding=1) for _ in range(depth - 1)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture()
def stack_variants():
    register_model("test_stack2", family="test_stack", model_args=dict(depth=2))(Stack)
    register_model("test_stack5_wide", family="test_stack", model_args=dict(depth=5), width=8)(Stack)
    yield
    for name in ("test_stack2", "test_stack5_wide"):
        _REGISTRY._entries.pop(name, None)


def test_model_args_fix_the_architecture_and_are_not_options(stack_variants):
    two = create_model("test_stack2", num_classes=3)
    wide = create_model("test_stack5_wide", num_classes=3)
    assert len(two.features) == 2 and len(wide.features) == 5
    # counted by hand: first conv 3*w*9 + w, then (depth-1) convs w*w*9 + w, head w*3 + 3
    assert model_info(two).total_params == (3 * 4 * 9 + 4) + (4 * 4 * 9 + 4) + (4 * 3 + 3)
    assert model_info(wide).total_params == (3 * 8 * 9 + 8) + 4 * (8 * 8 * 9 + 8) + (8 * 3 + 3)
    assert model_options("test_stack2") == {"width": ("int", 4)}
    assert model_options("test_stack5_wide") == {"width": ("int", 8)}  # the variant's baked-in default
    assert len(create_model("test_stack5_wide", width=2).fc.weight[0]) == 2  # a default may be overridden
    with pytest.raises(ValueError, match=r"does not accept option\(s\) 'depth'; accepted: width"):
        create_model("test_stack2", depth=7)
    assert list_models(family="test_stack") == ["test_stack2", "test_stack5_wide"]


def test_model_args_the_builder_does_not_take_are_refused():
    with pytest.raises(ValueError, match=r"model_args \['depht'\] are not parameters of Stack"):
        register_model("test_stack_typo", family="test_stack", model_args=dict(depht=3))(Stack)
    with pytest.raises(ValueError, match=r"default option\(s\) \['depth'\]"):  # fixed by model_args, not an option
        register_model("test_stack_dup", family="test_stack", model_args=dict(depth=3), depth=4)(Stack)
    assert "test_stack_typo" not in list_models() and "test_stack_dup" not in list_models()


@pytest.mark.parametrize("name, counts", [
    ("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3]), ("resnet50", [3, 4, 6, 3]), ("resnet101", [3, 4, 23, 3]),
])
def test_torchvision_resnet_variants_have_the_published_stage_depths(name, counts):
    with meta_device():
        m = create_model(name)
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == counts
    assert get_entry(name).model_args["layers"] == counts and "layers" not in model_options(name)


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_variants_have_6n_plus_2_layers(depth):
    with meta_device():
        m = create_model(f"resnet{depth}")
    convs = [mod for name, mod in m.named_modules() if isinstance(mod, nn.Conv2d) and "shortcut" not in name]
    assert len(convs) + 1 == depth  # 6n 3x3 convs + the stem, plus the linear head


@pytest.mark.parametrize("name, convs, bn", [("vgg11", 8, False), ("vgg13_bn", 10, True), ("vgg16", 13, False),
                                             ("vgg11_cifar", 8, True), ("vgg16_cifar", 13, True)])
def test_vgg_variants_have_the_configurations_conv_counts(name, convs, bn):
    with meta_device():
        m = create_model(name)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == convs
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == bn


def test_mobilenet_v3_variants_differ_only_in_arch():
    with meta_device():
        small, large = create_model("mobilenet_v3_small"), create_model("mobilenet_v3_large")
    # 11 and 15 bottlenecks between the stem and the last 1x1 conv (Howard et al., Tables 1-2)
    assert len(small.features) == 11 + 2 and len(large.features) == 15 + 2
    assert model_options("mobilenet_v3_small") == model_options("mobilenet_v3_large")
    assert torch.Size([10, 1024]) == small.classifier[-1].weight.shape
