"""Evolution strategies against analytic references: linear, quadratic and least-squares objectives."""

import pytest
import torch

from cnnlab.population.es import ESSettings, EvolutionStrategy, centered_ranks


def test_centered_ranks_against_scipy_rankdata():
    from scipy.stats import rankdata

    f = torch.tensor([0.3, -1.0, 0.3, 2.0, 0.3, 5.0])
    expected = (rankdata(f.numpy(), method="average") - 1) / (len(f) - 1) - 0.5
    torch.testing.assert_close(centered_ranks(f), torch.tensor(expected, dtype=torch.float32))
    r = centered_ranks(torch.randn(11))
    assert r.min() == -0.5 and r.max() == 0.5 and abs(float(r.sum())) < 1e-6


def test_antithetic_estimate_is_exact_for_linear_objectives():
    """f(x) = a.x + c: g = (1/K) eps^T eps a exactly, for any mean, sigma and offset c."""
    P = 6
    a = torch.randn(P, generator=torch.Generator().manual_seed(0))
    es = EvolutionStrategy(torch.randn(P), ESSettings(population=40, sigma=0.3, shaping="none"), seed=1)
    cand = es.ask()
    noise = es.noise()
    fitness = cand @ a + 3.0
    g = es.gradient(noise, fitness)
    expected = noise.T @ (noise @ a) / noise.shape[0]
    torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)


def test_antithetic_estimate_is_unbiased_for_linear_objectives():
    """Average of the estimate over many generations converges to the true gradient a."""
    P, K, G = 4, 200, 100
    a = torch.tensor([1.0, -2.0, 0.5, 0.0])
    es = EvolutionStrategy(torch.zeros(P), ESSettings(population=2 * K, sigma=0.1, shaping="none", lr=1e-12, optimizer="sgd", momentum=0.0), seed=2)
    total = torch.zeros(P)
    for _ in range(G):
        cand, noise = es.ask(), es.noise()
        total += es.gradient(noise, cand @ a)
        es.tell(cand @ a)  # advances the generation (lr ~ 0 keeps the mean in place)
    mean_g = total / G
    # per component: Var[(a.e) e_j] = |a|^2 + a_j^2, over K*G samples -> 5 standard errors
    se = ((a.norm() ** 2 + a**2) / (K * G)).sqrt()
    assert ((mean_g - a).abs() < 5 * se + 1e-6).all(), (mean_g, a, se)


def test_ranked_estimate_correlates_with_true_gradient_of_a_quadratic():
    P = 20
    g0 = torch.Generator().manual_seed(3)
    A = torch.randn(P, P, generator=g0)
    A = A @ A.T / P + torch.eye(P)
    b = torch.randn(P, generator=g0)
    mean = torch.randn(P, generator=g0)

    def f(x):  # concave quadratic, maximised by ES
        return -0.5 * ((x @ A) * x).sum(-1) + x @ b

    true = b - A @ mean
    for shaping in ("none", "centered_ranks"):
        es = EvolutionStrategy(mean, ESSettings(population=1000, sigma=0.05, shaping=shaping), seed=4)
        cand = es.ask()
        g = es.gradient(es.noise(), f(cand))
        cos = torch.nn.functional.cosine_similarity(g, true, dim=0)
        assert cos > 0.9, (shaping, float(cos))


def test_es_reduces_least_squares_loss_and_sgd_weight_decay_runs():
    g0 = torch.Generator().manual_seed(5)
    X = torch.randn(64, 5, generator=g0)
    w_true = torch.randn(5, generator=g0)
    y = X @ w_true

    def loss(w):  # (n, 5) -> (n,)
        return ((w @ X.T - y) ** 2).mean(-1)

    for settings in (ESSettings(population=20, sigma=0.1, lr=0.05), ESSettings(population=20, sigma=0.1, lr=0.01, optimizer="sgd", weight_decay=1e-4)):
        es = EvolutionStrategy(torch.zeros(5), settings, seed=6)
        start = float(loss(es.mean[None]))
        for _ in range(150):
            stats = es.step(lambda c: -loss(c))
        assert stats["generation"] == 150
        assert float(loss(es.mean[None])) < 0.1 * start, settings


def test_state_dict_resume_is_bitwise_identical():
    def run(es, n):
        for _ in range(n):
            es.step(lambda c: -(c**2).sum(-1))

    s = ESSettings(population=8, sigma=0.1, lr=0.05)
    a = EvolutionStrategy(torch.ones(7), s, seed=9)
    run(a, 6)
    b = EvolutionStrategy(torch.ones(7), s, seed=9)
    run(b, 3)
    state = b.state_dict()
    c = EvolutionStrategy(torch.zeros(7), s, seed=9)
    c.load_state_dict(state)
    run(c, 3)
    assert torch.equal(a.mean, c.mean) and c.generation == 6
    with pytest.raises(ValueError, match="different settings or seed"):
        EvolutionStrategy(torch.ones(7), s, seed=10).load_state_dict(state)


def test_settings_validation():
    with pytest.raises(ValueError, match="even with antithetic"):
        ESSettings(population=7)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        ESSettings(optimizer="lbfgs")
    ESSettings(population=7, antithetic=False)  # odd is fine without mirroring
    es = EvolutionStrategy(torch.zeros(3), ESSettings(population=6), seed=0)
    cand = es.ask()
    torch.testing.assert_close(cand[:3] + cand[3:], torch.zeros(3, 3))  # mirrored pairs
    with pytest.raises(ValueError, match="one value per candidate"):
        es.tell(torch.zeros(5))
