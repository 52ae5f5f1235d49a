"""Resolution-comparison metrics on constructed maps with known answers."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cnnlab.explain.compare import compare_maps, run_labels, spearman, to_common_grid, topk_iou, topk_mask


def test_spearman_known_answers_and_scipy():
    a = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(spearman(a, a), 1.0)
    np.testing.assert_allclose(spearman(a, -a), -1.0)
    np.testing.assert_allclose(spearman(a, a.exp()), 1.0)  # rank-based: any increasing transform
    b = torch.randn(3, 6, 6, generator=torch.Generator().manual_seed(1))
    b[0, 0, :3] = b[0, 0, 3]  # ties
    ref = [spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(3)]
    np.testing.assert_allclose(spearman(a, b), ref, rtol=1e-10)
    assert np.isnan(spearman(torch.ones(1, 4, 4), a[:1, :4, :4])[0])


def test_topk_iou_known_answers():
    a = torch.arange(16.0).view(1, 4, 4)
    assert topk_iou(a, a, 0.25)[0] == 1.0
    assert topk_iou(a, -a, 0.25)[0] == 0.0  # top 4 vs bottom 4: disjoint
    b = a.clone()
    b[0, 3, 3] = -1.0  # a's top-4 = {12,13,14,15}; b's = {11,12,13,14}: 3 shared of 5
    assert topk_iou(a, b, 0.25)[0] == pytest.approx(3 / 5)
    assert topk_mask(a, 0.1).sum() == 2  # ceil(0.1 * 16)
    with pytest.raises(ValueError, match="fraction"):
        topk_iou(a, a, 0.0)


def test_common_grid_is_area_mean_of_abs():
    m = torch.tensor([[[1.0, -3.0, 0.0, 0.0], [5.0, 7.0, 0.0, 4.0], [0.0] * 4, [2.0, 2.0, -2.0, -2.0]]])
    g = to_common_grid(m, 2)
    torch.testing.assert_close(g, torch.tensor([[[4.0, 1.0], [1.0, 1.0]]], dtype=torch.float64))


def test_compare_maps_on_a_shared_pattern():
    """A 8px map and the same pattern at 16px (nearest upsampling) agree perfectly on the 8px grid."""
    low = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(2))
    high = low.repeat_interleave(2, 1).repeat_interleave(2, 2)
    other = torch.randn(4, 16, 16, generator=torch.Generator().manual_seed(3))
    res = compare_maps({"8px": low, "16px": high, "16px:b": other}, topk=0.1)
    assert res["grid"] == 8 and res["labels"] == ["8px", "16px", "16px:b"]
    assert res["spearman"][0][1] == pytest.approx(1.0) and res["iou"][0][1] == pytest.approx(1.0)
    assert abs(res["spearman"][0][2]) < 0.5 and len(res["pairs"]) == 3
    with pytest.raises(ValueError, match="same images"):
        compare_maps({"a": low, "b": high[:2]})
    assert run_labels([32, 64, 64], ["a", "b", "c"]) == ["32px", "64px:b", "64px:c"]
