import pytest
import torch

from cnnlab.models import UnknownModelError, create_deterministic_model, create_model, list_models, model_info


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError, match="tiny_cnn"):
        create_model("tiny_cn")


def test_bad_option_names_the_option_and_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'depthh'.*accepted: widths"):
        create_model("tiny_cnn", depthh=3)


def test_bad_init_is_rejected():
    with pytest.raises(ValueError, match="kaiming"):
        create_model("tiny_cnn", init="orthogonal")


def test_list_models_pattern():
    assert list_models("tiny*") == ["tiny_cnn"]
    assert "simple_cnn" in list_models()


def test_deterministic_model_same_id_same_weights_other_id_other_weights():
    a = create_deterministic_model(0, "tiny_cnn", "a")
    b = create_deterministic_model(0, "tiny_cnn", "a")
    c = create_deterministic_model(0, "tiny_cnn", "b")
    d = create_deterministic_model(1, "tiny_cnn", "a")
    for (ka, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.fc.weight, c.fc.weight)
    assert not torch.equal(a.fc.weight, d.fc.weight)


def test_deterministic_model_does_not_perturb_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_deterministic_model(0, "tiny_cnn", "x")
    assert torch.equal(torch.rand(3), expected)


def test_model_info_counts_trainable():
    m = create_model("tiny_cnn")
    m.fc.weight.requires_grad_(False)
    info = model_info(m)
    assert info.total_params - info.trainable_params == m.fc.weight.numel()
    assert info.size_mb > 0
