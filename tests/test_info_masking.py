"""First-layer masks and the masking-MI analysis on an in-memory tiny model."""

import pytest
import torch

from cnnlab.data import load_dataset
from cnnlab.explain import AnalysisRun
from cnnlab.info import MIConfig, activation_shape, draw_masks, masked_output, mi_report, select_examples
from cnnlab.models import create_deterministic_model, masking_layer
from cnnlab.utils.seeding import derive_seed


def _model():
    return create_deterministic_model(0, "tiny_cnn", "mask-test", num_classes=10, in_channels=1).eval()


def test_masks_are_exact_seeded_and_shared():
    m = draw_masks((4, 3, 5), 0.25, 3, mask_seed=7)
    assert m.shape == (3, 4, 3, 5)
    assert m.sum(dim=(1, 2, 3)).tolist() == [15.0, 15.0, 15.0]  # round(0.25 * 60)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, draw_masks((4, 3, 5), 0.25, 3, mask_seed=7))  # another run, same shape -> same masks
    assert not torch.equal(m[0], m[1])
    assert not torch.equal(m, draw_masks((4, 3, 5), 0.25, 3, mask_seed=8))
    # mask k is a permutation drawn from derive_seed(mask_seed, "mask/{keep}/{k}")
    gen = torch.Generator().manual_seed(derive_seed(7, "mask/0.25/2"))
    ref = torch.zeros(60)
    ref[torch.randperm(60, generator=gen)[:15]] = 1.0
    assert torch.equal(m[2].flatten(), ref)
    with pytest.raises(ValueError, match="keep fraction"):
        draw_masks((2, 2), 1.5, 1, 0)


def test_mask_hook_changes_only_the_masked_block():
    model = _model()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    block = masking_layer(model)
    shape = activation_shape(model, x)
    assert shape == (16, 8, 8)
    mask = draw_masks(shape, 0.5, 1, mask_seed=0)[0]
    seen = {}
    hooks = [
        block[0].register_forward_hook(lambda m, i, o: seen.__setitem__("conv", o.detach().clone())),
        block[1].register_forward_hook(lambda m, i, o: seen.__setitem__("bn", o.detach().clone())),
        # what the next layer receives = the block's output after any hook on it
        model.stages.register_forward_pre_hook(lambda m, i: seen.__setitem__("block", i[0].detach().clone())),
        model.stages.register_forward_hook(lambda m, i, o: seen.__setitem__("stages", o.detach().clone())),
    ]
    with torch.no_grad():
        model(x)
        clean = dict(seen)
        with masked_output(block, mask):
            model(x)
        masked = dict(seen)
        model(x)
        after = dict(seen)
    for h in hooks:
        h.remove()
    assert torch.equal(masked["conv"], clean["conv"]) and torch.equal(masked["bn"], clean["bn"])  # before: untouched
    keep = mask.bool().expand_as(clean["block"])
    assert (masked["block"][~keep] == 0).all()  # exactly zero where the mask is zero
    assert torch.equal(masked["block"][keep], clean["block"][keep])  # unchanged elsewhere
    assert (clean["block"][~keep] != 0).any()  # (the mask really removed something)
    assert not torch.equal(masked["stages"], clean["stages"])
    assert torch.equal(after["stages"], clean["stages"])  # the hook is gone after the with-block
    with pytest.raises(ValueError, match="does not match"):
        with torch.no_grad(), masked_output(block, torch.ones(3, 2, 2)):
            model(x)


def test_select_examples_fixed_and_capped():
    a = select_examples(1000, 100, 0, "train")
    assert torch.equal(a, select_examples(1000, 100, 0, "train")) and a.numel() == 100
    assert torch.equal(a, a.sort().values) and not torch.equal(a, select_examples(1000, 100, 0, "test"))
    assert torch.equal(select_examples(50, 100, 0, "train"), torch.arange(50))


def test_mi_report_on_in_memory_model_is_independent_of_batch_size():
    ds = load_dataset("digits")
    run = AnalysisRun.from_model(_model(), ds)
    cfg = MIConfig(keeps=(0.5,), n_masks=2, n_examples=150, n_boot=50, batch_size=64, gap_examples=200)
    rep = mi_report(run, cfg)
    rep2 = mi_report(run, MIConfig(**{**cfg.to_dict(), "keeps": (0.5,), "splits": ("train", "test"), "batch_size": 7}))
    assert rep["splits"] == rep2["splits"]
    te = rep["splits"]["test"]
    assert te["n_examples"] == 150 and te["mask_shape"] == [16, 8, 8]
    k = te["keeps"][0]
    assert k["mi_diff"]["value"] == pytest.approx(k["mi_unmasked"]["value"] - k["mi_masked"]["value"])
    assert k["acc_drop"]["value"] == pytest.approx(k["acc_unmasked"]["value"] - sum(k["acc_masked_per_mask"]) / 2, abs=1e-6)
    acc = rep["accuracy"]
    assert acc["gen_gap"] == pytest.approx(acc["train_clean"] - acc["test"]) and acc["n_train"] == 200
    assert rep["units"] == "bits"
    with pytest.raises(ValueError, match="keeps"):
        MIConfig(keeps=(0.0,))
