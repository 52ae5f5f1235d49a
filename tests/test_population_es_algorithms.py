"""The ES family on closed-form problems: convergence, sigma adaptation, a step-by-step sep-CMA-ES reference, resume."""

import io
import math

import numpy as np
import pytest
import torch

from cnnlab.population.es import ES_ALGORITHMS, create_es, get_es
from cnnlab.population.es_algorithms import nes_utilities
from cnnlab.population.es_optim import ClipUp
from cnnlab.engine.optim import ParamGroup


def sphere(x):
    return -(x**2).sum(-1)


def ellipsoid(x):  # condition number 1e6
    n = x.shape[-1]
    w = 10 ** (6 * torch.arange(n, dtype=x.dtype) / (n - 1))
    return -(w * x**2).sum(-1)


def generations_to(es, f, target: float, limit: int) -> int | None:
    """First generation after which the center's loss -f is below ``target`` (None if not within ``limit``)."""
    for g in range(limit):
        es.step(f)
        if -float(f(es.center[None])) < target:
            return g + 1
    return None


# (algorithm, settings, problem, target loss, within generations); measured with seed 0 (first hit in brackets)
CONVERGENCE = [
    ("openai", dict(sigma=0.1, lr=0.05), sphere, 1e-2, 100),                      # 54
    ("pgpe", dict(sigma=0.5, lr=0.05, population=20), sphere, 1e-2, 120),        # 77 (ClipUp)
    ("pgpe", dict(sigma=0.5, lr=0.05, population=20, optimizer="adam"), sphere, 1e-3, 150),      # 97
    ("pgpe", dict(sigma=0.5, lr=0.05, population=20, optimizer="adam"), ellipsoid, 1e-2, 500),   # 346
    ("snes", dict(sigma=0.5), sphere, 1e-8, 300),                                  # 172
    ("snes", dict(sigma=0.5), ellipsoid, 1e-8, 400),                               # 268
    ("sep_cmaes", dict(sigma=0.5), sphere, 1e-8, 200),                             # 109
    ("sep_cmaes", dict(sigma=0.5), ellipsoid, 1e-8, 400),                          # 287
]


def test_registry_lists_every_algorithm():
    assert set(ES_ALGORITHMS) == {"openai", "pgpe", "snes", "sep_cmaes"}
    with pytest.raises(ValueError, match="unknown ES algorithm 'xnes'"):
        get_es("xnes")
    with pytest.raises(ValueError, match="snes has no setting"):
        create_es("snes", torch.zeros(3), 0, lr=0.1)


@pytest.mark.parametrize("name,settings,f,target,limit", CONVERGENCE,
                         ids=[f"{c[0]}-{c[2].__name__}-{c[1].get('optimizer', '')}" for c in CONVERGENCE])
def test_converges_on_closed_form_problems(name, settings, f, target, limit):
    es = create_es(name, torch.ones(10, dtype=torch.float64), seed=0, **settings)
    start = -float(f(es.center[None]))
    hit = generations_to(es, f, target, limit)
    assert hit is not None, f"{name} did not reach {target} within {limit} generations (from {start})"


@pytest.mark.parametrize("name", ["pgpe", "snes", "sep_cmaes"])
def test_sigma_adaptation_shrinks_on_the_sphere(name):
    kw = dict(sigma=0.5, lr=0.05, population=20, optimizer="adam") if name == "pgpe" else dict(sigma=0.5)
    es = create_es(name, torch.ones(10, dtype=torch.float64), seed=1, **kw)
    spread = []
    for _ in range(300 if name == "pgpe" else 100):  # PGPE's stdev roughly halves every 50 generations here
        es.step(sphere)
        spread.append(float(es.stdev.max()))
    assert spread[-1] < 0.1 * 0.5, es.stdev
    assert spread[len(spread) // 2] < spread[len(spread) // 4]  # shrinking along the way, not only at the end


def test_sep_cmaes_matches_the_papers_update_step_by_step():
    """Ros & Hansen (2008) sep-CMA-ES written out in numpy float64, fed the strategy's own draws."""
    n, sigma0 = 8, 0.3
    es = create_es("sep_cmaes", torch.linspace(-1, 1, n, dtype=torch.float64), seed=3, sigma=sigma0)
    lam = 4 + int(np.floor(3 * np.log(n)))
    mu = lam // 2
    w = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    w /= w.sum()
    mueff = 1 / np.sum(w**2)
    cs = (mueff + 2) / (n + mueff + 3)
    ds = 1 + 2 * max(0, np.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    cc = 4 / (n + 4)
    ccov = (n + 2) / 3 * (1 / mueff * 2 / (n + np.sqrt(2)) ** 2
                          + (1 - 1 / mueff) * min(1, (2 * mueff - 1) / ((n + 2) ** 2 + mueff)))
    chin = np.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    m, sigma, C = np.linspace(-1, 1, n), sigma0, np.ones(n)
    ps, pc = np.zeros(n), np.zeros(n)
    assert es.popsize == lam
    for g in range(40):
        z = es.noise().numpy()
        x = m + sigma * np.sqrt(C) * z
        np.testing.assert_allclose(es.ask().numpy(), x, rtol=1e-12, atol=1e-14)
        fit = ellipsoid(torch.from_numpy(x))
        es.tell(fit)
        best = np.argsort(-fit.numpy(), kind="stable")[:mu]
        y = (x[best] - m) / sigma
        yw = w @ y
        m = m + sigma * yw
        ps = (1 - cs) * ps + np.sqrt(cs * (2 - cs) * mueff) * yw / np.sqrt(C)
        hs = np.linalg.norm(ps) / np.sqrt(1 - (1 - cs) ** (2 * (g + 1))) < (1.4 + 2 / (n + 1)) * chin
        pc = (1 - cc) * pc + hs * np.sqrt(cc * (2 - cc) * mueff) * yw
        C = (1 - ccov) * C + ccov / mueff * (pc**2 + (1 - hs) * cc * (2 - cc) * C) + ccov * (1 - 1 / mueff) * (w @ y**2)
        sigma = sigma * np.exp(cs / ds * (np.linalg.norm(ps) / chin - 1))
    np.testing.assert_allclose(es.center.numpy(), m, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(es.diag_c.numpy(), C, rtol=1e-9)
    assert float(es.sigma) == pytest.approx(sigma, rel=1e-9)
    assert -float(ellipsoid(es.center[None])) < -float(ellipsoid(torch.linspace(-1, 1, n, dtype=torch.float64)[None]))


def test_snes_and_pgpe_single_updates_match_their_formulas():
    n = 5
    c0 = torch.arange(n, dtype=torch.float64) / n
    snes = create_es("snes", c0, seed=4, sigma=0.2)
    x = snes.ask()
    z = snes.noise()
    f = sphere(x)
    snes.tell(f)
    lam = 4 + math.floor(3 * math.log(n))
    rank = torch.argsort(torch.argsort(-f))  # 0 = best
    raw = torch.clamp(math.log(lam / 2 + 1) - torch.log(rank.double() + 1), min=0)
    u = raw / raw.sum() - 1 / lam
    eta_s = (3 + math.log(n)) / (5 * math.sqrt(n))
    torch.testing.assert_close(snes.center, c0 + 0.2 * (u @ z))
    torch.testing.assert_close(snes.stdev, 0.2 * torch.exp(eta_s / 2 * (u @ (z**2 - 1))))

    pgpe = create_es("pgpe", c0, seed=5, sigma=0.2, population=6, optimizer="sgd", momentum=0.0, lr=0.1,
                     shaping="none", stdev_max_change=None)
    x = pgpe.ask()
    eps = pgpe.noise() * 0.2
    f = sphere(x)
    pgpe.tell(f)
    u = f - f.mean()
    fp, fm = u[:3], u[3:]
    g_c = ((fp - fm) / 2) @ eps / 3
    g_s = ((fp + fm) / 2) @ ((eps**2 - 0.04) / 0.2) / 3
    torch.testing.assert_close(pgpe.center, c0 + 0.1 * g_c)
    torch.testing.assert_close(pgpe.stdev, 0.2 + 0.1 * g_s)


def test_pgpe_bounds_the_relative_stdev_change():
    es = create_es("pgpe", torch.zeros(50), seed=0, sigma=1.0, population=10, stdev_lr=100.0)
    es.step(lambda c: -(c**2).sum(-1))
    assert (es.stdev >= 0.8 - 1e-6).all() and (es.stdev <= 1.2 + 1e-6).all()
    assert not torch.allclose(es.stdev, torch.ones(50))


def test_nes_utilities():
    f = torch.tensor([3.0, 1.0, 2.0, 0.0, 5.0, 4.0])
    u = nes_utilities(f)
    assert abs(float(u.sum())) < 1e-12
    assert list(torch.argsort(-u)[:3]) == [4, 5, 0]  # best fitness, best utility
    assert float(u[3]) == pytest.approx(-1 / 6)  # the worse half gets only the -1/n offset


def test_clipup_normalised_step_and_speed_limit():
    opt = ClipUp([ParamGroup("mean", ("mean",), 0.0)], lr=0.1, momentum=0.9)
    p = {"mean": torch.zeros(4)}
    st = opt.init_state(p)
    grad = {"mean": torch.tensor([-30.0, 0.0, -40.0, 0.0])}  # loss gradient; ascent is +[3, 0, 4, 0]/5
    p1, st = opt.update(p, grad, st, 0.1, 1)
    torch.testing.assert_close(p1["mean"], torch.tensor([0.06, 0.0, 0.08, 0.0]))
    for k in range(2, 50):
        p1, st = opt.update(p1, grad, st, 0.1, k)
        assert float(st["mean"]["velocity"].norm()) <= 0.2 + 1e-6  # max_speed = 2 lr
    assert float(st["mean"]["velocity"].norm()) == pytest.approx(0.2, rel=1e-5)


ALL = [("openai", dict(population=8, sigma=0.1, lr=0.05)), ("openai", dict(population=8, optimizer="clipup")),
       ("pgpe", dict(population=8)), ("pgpe", dict(population=8, optimizer="adam", antithetic=False)),
       ("snes", dict()), ("sep_cmaes", dict())]


@pytest.mark.parametrize("name,settings", ALL, ids=[f"{a}-{i}" for i, (a, _) in enumerate(ALL)])
def test_interrupted_and_resumed_equals_uninterrupted(name, settings):
    def run(es, n):
        for _ in range(n):
            es.step(ellipsoid)

    x0 = torch.linspace(-1, 1, 7)
    a = create_es(name, x0, 9, **settings)
    run(a, 6)
    b = create_es(name, x0, 9, **settings)
    run(b, 3)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    c = create_es(name, torch.zeros(7), 9, **settings)
    c.load_state_dict(torch.load(buf, weights_only=True))
    run(c, 3)
    assert c.generation == 6
    assert torch.equal(a.center, c.center) and torch.equal(a.stdev, c.stdev)
    with pytest.raises(ValueError, match="different settings or seed"):
        create_es(name, x0, 10, **settings).load_state_dict(b.state_dict())
    other = "snes" if name != "snes" else "sep_cmaes"
    with pytest.raises(ValueError, match=f"algorithm {name!r}"):
        create_es(other, x0, 9).load_state_dict(b.state_dict())


def test_tell_needs_ask_and_valid_fitness():
    es = create_es("snes", torch.zeros(4), 0)
    with pytest.raises(RuntimeError, match="call ask"):
        es.tell(torch.zeros(es.popsize))
    es.ask()
    with pytest.raises(ValueError, match="non-finite"):
        es.tell(torch.full((es.popsize,), math.nan))


def test_sep_cmaes_scales_to_a_million_parameters():
    es = create_es("sep_cmaes", torch.zeros(10**6), 0, sigma=0.1)
    assert es.popsize == 4 + math.floor(3 * math.log(10**6))  # 45
    x = es.ask()
    es.tell(-(x[:, :1000] ** 2).sum(-1))
    assert es.diag_c.shape == (10**6,) and torch.isfinite(es.diag_c).all()
