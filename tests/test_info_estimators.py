"""MI estimator against closed forms, a hand computation of Miller-Madow, and sklearn (nats -> bits)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from cnnlab.info.estimators import (
    contingency,
    entropy_bits,
    mi_from_counts,
    miller_madow_term,
    mutual_information,
    paired_masking_stats,
    plugin_mi,
)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_binary_symmetric_channel_within_ci():
    """Y uniform on {0,1}, Ŷ = Y flipped with probability p: I = 1 - H(p) bits."""
    p, n = 0.1, 20000
    y = torch.randint(0, 2, (n,), generator=_gen(0))
    flip = torch.rand(n, generator=_gen(1)) < p
    yhat = torch.where(flip, 1 - y, y)
    truth = 1.0 - entropy_bits([p, 1 - p])
    est = mutual_information(y, yhat, n_boot=400, seed=0)
    assert est.ci_low <= truth <= est.ci_high
    assert est.ci_high - est.ci_low < 0.05
    assert abs(est.value - truth) < 0.02


def test_independent_variables_give_zero_within_ci():
    y = torch.randint(0, 4, (5000,), generator=_gen(2))
    yhat = torch.randint(0, 4, (5000,), generator=_gen(3))
    est = mutual_information(y, yhat, n_boot=400, seed=1)
    assert est.ci_low <= 0.0 <= est.ci_high
    assert abs(est.value) < 0.005
    # the plug-in estimate is biased upwards by about (K-1)^2 / (2 N ln 2); the corrected one is not
    assert plugin_mi(contingency(y, yhat)) > est.value


def test_identity_gives_entropy_of_y_within_ci():
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    y = torch.multinomial(probs, 20000, replacement=True, generator=_gen(4))
    est = mutual_information(y, y, n_boot=400, seed=2)
    truth = entropy_bits(probs.tolist())
    assert est.ci_low <= truth <= est.ci_high
    assert abs(est.value - truth) < 0.02


def test_miller_madow_term_by_hand():
    # N = 11; non-empty joint cells 4, non-empty rows 2, non-empty columns 2 (a third class never occurs)
    counts = np.array([[5, 2, 0], [1, 3, 0], [0, 0, 0]])
    n = counts.sum()
    hand_plugin = 0.0
    for i in range(3):
        for j in range(3):
            if counts[i, j]:
                pij = counts[i, j] / n
                hand_plugin += pij * math.log2(pij / (counts[i].sum() / n * counts[:, j].sum() / n))
    hand_term = (4 - 2 - 2 + 1) / (2 * n * math.log(2))
    assert plugin_mi(counts) == pytest.approx(hand_plugin, abs=1e-12)
    assert miller_madow_term(counts) == pytest.approx(hand_term, abs=1e-15)
    assert mi_from_counts(counts) == pytest.approx(hand_plugin - hand_term, abs=1e-12)
    assert mi_from_counts(counts, "none") == pytest.approx(hand_plugin, abs=1e-12)
    # a diagonal table (Y = Ŷ over K classes): the correction adds (K - 1) / (2 N ln 2) = the MM bias of H(Y)
    diag = np.diag([3, 4, 5])
    assert mi_from_counts(diag) - plugin_mi(diag) == pytest.approx(2 / (2 * 12 * math.log(2)))


def test_units_are_bits_not_nats():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 700)
    yhat = np.where(rng.random(700) < 0.6, y, rng.integers(0, 5, 700))
    ours = plugin_mi(contingency(y, yhat))
    assert ours == pytest.approx(mutual_info_score(y, yhat) / math.log(2), rel=1e-10)


def test_paired_stats_and_input_checks():
    y = torch.randint(0, 3, (400,), generator=_gen(5))
    same = paired_masking_stats(y, y, torch.stack([y, y]), num_classes=3, n_boot=100)
    assert same["mi_diff"].value == 0.0 and same["mi_diff"].ci_low == 0.0 and same["mi_diff"].ci_high == 0.0
    assert same["acc_drop"].value == 0.0 and same["acc_unmasked"].value == 1.0
    noisy = torch.where(torch.rand(400, generator=_gen(6)) < 0.5, torch.zeros_like(y), y)
    st = paired_masking_stats(y, y, noisy.view(1, -1), num_classes=3, n_boot=200, seed=3)
    assert st["mi_diff"].value > 0 and st["mi_diff"].ci_low > 0
    assert st["acc_drop"].value == pytest.approx(float((noisy != y).float().mean()))
    assert st["mi_diff"].value == pytest.approx(st["mi_unmasked"].value - st["mi_masked"].value)
    again = paired_masking_stats(y, y, noisy.view(1, -1), num_classes=3, n_boot=200, seed=3)
    assert again["mi_diff"] == st["mi_diff"]  # seeded bootstrap
    with pytest.raises(ValueError, match="same length"):
        contingency([0, 1], [0])
    with pytest.raises(ValueError, match="num_classes"):
        contingency([0, 3], [0, 1], num_classes=3)
    with pytest.raises(ValueError, match="correction"):
        mi_from_counts(np.eye(2), "jackknife")
