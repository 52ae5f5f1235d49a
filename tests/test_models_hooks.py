"""The ``init_from_data`` hook: the engine calls it on any model that defines it (a user model by import
path, airbench), with the normalised training images, and never when weights are loaded."""

import sys

import pytest
import torch
from torch import nn

from cnnlab.models import InitFromData, create_deterministic_model, create_model

MODULE = "cnnlab_test_hook_nets"

USER_CODE = '''
import torch
from torch import nn

CALLS = []


class DataInitNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, num_classes)

    def init_from_data(self, images):
        CALLS.append(images.clone())
        with torch.no_grad():  # a data-dependent init: the head's bias from the data's mean
            self.fc.bias.fill_(float(images.mean()))

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def make(num_classes, in_channels=3):
    return DataInitNet(num_classes, in_channels)
'''


@pytest.fixture()
def user_module(tmp_path):
    (tmp_path / f"{MODULE}.py").write_text(USER_CODE)
    sys.path.insert(0, str(tmp_path))
    import importlib

    mod = importlib.import_module(MODULE)
    yield mod
    sys.path.remove(str(tmp_path))
    sys.modules.pop(MODULE, None)


def _config(model: dict, n: int = 40):
    from cnnlab.engine.config import build_config

    return build_config({"model": model, "data": {"name": "digits", "subset": n},
                         "train": {"device": "cpu", "epochs": 1, "batch_size": 8}})


def test_user_model_by_import_path_gets_the_normalised_training_images(user_module):
    from cnnlab.engine.setup import build_run

    parts = build_run(_config({"name": f"{MODULE}:make"}))
    assert len(user_module.CALLS) == 1
    batch = user_module.CALLS[0]
    ds = parts.dataset
    assert batch.shape == (len(ds.train), ds.in_channels, ds.resolution, ds.resolution) == (len(ds.train), 1, 8, 8)
    assert batch.dtype == torch.float32
    # independently: the training images in [0, 1], less the channel mean, over the channel std
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    torch.testing.assert_close(batch, (ds.train.images.float() / 255 - mean) / std, atol=1e-5, rtol=1e-5)
    assert parts.model.fc.bias[0].item() == pytest.approx(batch.mean().item(), rel=1e-5)


def test_the_hook_is_skipped_when_weights_are_loaded(user_module, tmp_path):
    from cnnlab.engine.setup import build_run

    path = tmp_path / "w.pt"
    torch.save(user_module.make(10, 1).state_dict(), path)
    build_run(_config({"name": f"{MODULE}:make", "weights": str(path)}))
    assert user_module.CALLS == []


def test_models_without_the_hook_are_not_data_initialised():
    plain = create_model("tiny_cnn")
    assert not isinstance(plain, InitFromData)
    assert isinstance(create_model("airbench94"), InitFromData)


def test_airbench_hook_is_its_whitening_with_default_settings():
    a = create_deterministic_model(0, "airbench94", "m")
    b = create_deterministic_model(0, "airbench94", "m")
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:, 1] += 0.8 * x[:, 0]  # correlated channels: whitening is not the identity
    assert a.init_from_data(x) is None
    b.init_whitening(x)
    assert not torch.equal(a.whiten.weight, create_deterministic_model(0, "airbench94", "m").whiten.weight)
    assert torch.equal(a.whiten.weight, b.whiten.weight)


def test_a_protocol_not_a_base_class():
    class Mine(nn.Module):
        def init_from_data(self, images):
            pass

    assert isinstance(Mine(), InitFromData)
