"""LDS: masks, statistics against an independent rank computation, subset training equal to the Trainer,
resumable studies, MAGIC's LDS floor that wrong scores cannot reach, and the baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.attribution import compute_magic, lds_statistics, make_masks, predictions, train_subset_phi
from cnnlab.attribution.baselines import tracin_scores, trak_available, trak_scores
from cnnlab.attribution import lds as lds_mod
from cnnlab.attribution.lds import LDSStudy, Regime, full_weights, population_available, train_subsets_population
from cnnlab.attribution.magic import measure_state, prepare_config, target_data
from cnnlab.attribution.replay import Replay
from cnnlab.data import load_dataset
from cnnlab.engine.config import build_config
from cnnlab.engine.setup import build_run
from cnnlab.engine.step import per_example_loss
from cnnlab.engine.trainer import Trainer

TARGETS = [0, 3, 9, 14]


def smooth_raw():
    return {
        "seed": 1,
        "model": {"name": "tiny_cnn", "options": {"widths": [4, 8], "activation": "gelu", "pool": "avg"}},
        "data": {"name": "digits", "subset": 64},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "onecycle", "pct_start": 0.3},
        "train": {"epochs": 2, "batch_size": 16, "device": "cpu"},
    }


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def magic(digits):
    return compute_magic(build_config(smooth_raw()), targets=TARGETS, dataset=digits, checkpointing="all")


def test_masks_drop_exactly_the_fraction_and_are_reproducible():
    keep = make_masks(200, 0.05, 6, seed=4)
    assert keep.shape == (6, 200) and keep.dtype == torch.bool
    assert ((~keep).sum(1) == 10).all()
    assert torch.equal(keep, make_masks(200, 0.05, 6, seed=4))
    assert not torch.equal(keep, make_masks(200, 0.05, 6, seed=5))
    assert len({tuple(r.tolist()) for r in keep}) == 6
    with pytest.raises(ValueError, match="at least 3"):
        Regime(0.5, 2)


def _spearman_by_ranks(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = a.argsort().argsort().astype(float), b.argsort().argsort().astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def test_lds_statistics_match_an_independent_rank_correlation():
    gen = torch.Generator().manual_seed(0)
    actual = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    pred = actual + 0.7 * torch.randn(30, 5, generator=gen, dtype=torch.float64)
    stats = lds_statistics(pred, actual, bootstrap=500)
    ref = [_spearman_by_ranks(pred[:, j].numpy(), actual[:, j].numpy()) for j in range(5)]
    np.testing.assert_allclose(stats["spearman_per_target"], ref, rtol=1e-12)
    assert stats["lds"] == pytest.approx(np.mean(ref))
    assert stats["ci"][0] <= stats["lds"] <= stats["ci"][1]
    assert lds_statistics(actual, actual)["lds"] == pytest.approx(1.0)
    assert lds_statistics(-actual, actual)["lds"] == pytest.approx(-1.0)
    # predictions are minus the summed scores of the dropped examples
    keep = torch.tensor([[True, False, True], [False, False, True]])
    scores = torch.tensor([[1.0], [2.0], [4.0]])
    assert predictions(scores, keep).flatten().tolist() == [-2.0, -3.0]


def test_subset_training_is_bitwise_the_trainer_with_weights(digits):
    config = prepare_config(build_config(smooth_raw()))
    parts = build_run(config, dataset=digits)
    keep = make_masks(64, 0.25, 3, seed=0)[1]
    w = full_weights(keep, parts.train_loader.indices, len(digits.train))
    trainer = Trainer(config, None, dataset=digits, weights=w, progress=False)
    trainer.fit()
    x, y = target_data(trainer.parts, TARGETS)
    with torch.no_grad():
        expected = measure_state(trainer.parts, trainer.state, x, y, "loss").double()
    assert torch.equal(train_subset_phi(config, w, TARGETS, "loss", digits), expected)
    full = Replay(build_run(config, dataset=digits)).forward()
    assert not torch.equal(full.params["fc.weight"], trainer.state.params["fc.weight"])  # the weights mattered


def test_magic_lds_is_high_and_wrong_scores_cannot_reach_it(digits, magic, tmp_path):
    study = LDSStudy(tmp_path, Regime(0.1, 12, seed=0), config=build_config(smooth_raw()),
                     train_indices=magic.train_indices, targets=TARGETS, num_train=len(digits.train), dataset=digits)
    study.train(engine="step")
    actual = study.actual()
    good = lds_statistics(predictions(magic.scores, study.keep), actual)["lds"]
    flipped = lds_statistics(predictions(-magic.scores, study.keep), actual)["lds"]
    rand = torch.randn(magic.scores.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    random = lds_statistics(predictions(rand, study.keep), actual)["lds"]
    assert good > 0.9, good
    assert flipped < -0.9 and random < 0.7, (flipped, random)


def test_study_resumes_and_keeps_finished_models(digits, magic, tmp_path):
    kw = dict(config=build_config(smooth_raw()), train_indices=magic.train_indices, targets=TARGETS,
              num_train=len(digits.train), dataset=digits)
    regime = Regime(0.5, 4, seed=2)
    study = LDSStudy(tmp_path, regime, **kw)
    study.train(engine="step")
    first = study.actual()
    stamp = {k: study.record_path(k).stat().st_mtime_ns for k in range(4)}
    study.record_path(2).unlink()  # as if killed before model 2 finished
    again = LDSStudy(tmp_path, regime, **kw)
    assert again.pending() == [2]
    again.train(engine="step")
    assert torch.equal(again.actual(), first)
    assert all(again.record_path(k).stat().st_mtime_ns == stamp[k] for k in (0, 1, 3))
    from cnnlab.attribution.store import Scores

    summary = again.evaluate({"magic": Scores(magic.scores, magic.train_indices, magic.target_indices, "loss", "magic")})
    assert summary["methods"]["magic"]["models"] == 4
    with pytest.raises(ValueError, match="holds subset models for other targets;"):
        LDSStudy(tmp_path, regime, **{**kw, "targets": [1, 2]})


@pytest.mark.skipif(not population_available(), reason="cnnlab.population not installed")
def test_population_engine_trains_the_same_subset_models(digits):
    config = build_config(smooth_raw())
    parts = build_run(prepare_config(config), dataset=digits)
    keep = make_masks(64, 0.25, 3, seed=0)
    w = torch.stack([full_weights(k, parts.train_loader.indices, len(digits.train)) for k in keep])
    pop = train_subsets_population(config, w, TARGETS, "loss", digits, backend="loop", workers=1)
    one = torch.stack([train_subset_phi(config, w[k], TARGETS, "loss", digits) for k in range(3)])
    torch.testing.assert_close(pop, one, rtol=1e-5, atol=1e-6)


def test_tracin_matches_a_plain_autograd_dot_product(digits, magic):
    config = prepare_config(build_config(smooth_raw()))
    parts = build_run(config, dataset=digits)
    state = Replay(parts).forward()
    rows = torch.arange(5)
    s = tracin_scores(parts, state, magic.train_indices[rows], magic.target_indices, "loss")
    model = parts.model
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(state.params[n])
        for n, b in model.named_buffers():
            b.copy_(state.buffers[n])
    model.eval()

    def flat_grad(loss):
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])

    xt, yt = target_data(parts, TARGETS)
    for r in rows.tolist():
        i = int(magic.train_indices[r])
        xi = parts.eval_images(digits.train.images[i:i + 1], 0, 1)
        gi = flat_grad(per_example_loss(model(xi), digits.train.labels[i:i + 1])[0])
        for j in range(len(TARGETS)):
            gt = flat_grad(torch.nn.functional.cross_entropy(model(xt[j:j + 1]), yt[j:j + 1]))
            assert float(s.scores[r, j]) == pytest.approx(-float(gi @ gt), rel=1e-4, abs=1e-9)


@pytest.mark.skipif(not trak_available(), reason="optional package traker not installed")
def test_trak_baseline_runs_on_cpu(digits, magic, tmp_path):
    config = prepare_config(build_config(smooth_raw()))
    parts = build_run(config, dataset=digits)
    state = Replay(parts).forward()
    s = trak_scores(parts, state, magic.train_indices, magic.target_indices, "loss", work_dir=tmp_path / "trak")
    assert s.scores.shape == magic.scores.shape and torch.isfinite(s.scores).all() and s.scores.abs().max() > 0
    m = trak_scores(parts, state, magic.train_indices, magic.target_indices, "margin", work_dir=tmp_path / "trak")
    torch.testing.assert_close(m.scores, -s.scores)  # same TRAK margin scores, loss convention flips the sign


@pytest.mark.slow
def test_worker_processes_train_the_same_models_as_one_process(digits, magic, tmp_path, monkeypatch):
    kw = dict(config=build_config(smooth_raw()), train_indices=magic.train_indices, targets=TARGETS,
              num_train=len(digits.train))
    serial = LDSStudy(tmp_path / "a", Regime(0.25, 4), dataset=digits, **kw)
    serial.train(engine="step")
    here = []  # models this process trains itself (the spawned worker does not see this patch)
    monkeypatch.setattr(lds_mod, "train_subset_phi", lambda *a, **k: here.append(1) or train_subset_phi(*a, **k))
    parallel = LDSStudy(tmp_path / "b", Regime(0.25, 4), **kw)  # workers load digits by name
    parallel.train(workers=2, engine="step")
    assert torch.equal(parallel.actual(), serial.actual())
    assert 1 <= len(here) < 4  # this process is one of the two workers; the spawned one trains the first models
