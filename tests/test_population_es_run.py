"""`cnnlab population es` with every algorithm: CLI, configs, bitwise resume, fitness on workers (processes, Ray)."""

import json
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.engine.config import ConfigError
from cnnlab.population.config import ESRunConfig, load
from cnnlab.population.es_run import ESRun, run_es

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
runner = CliRunner()
SMALL = ["es.generations=4", "es.batch_size=32", "es.eval_every=2", "es.checkpoint_every=2", "es.eval_batch_size=400",
         "es.bn_calibration_batches=2", "model.options.widths=[4,8]", "es.threads=1"]
ALGORITHMS = ["openai", "pgpe", "snes", "sep_cmaes"]
# es_digits.yaml sets OpenAI-ES keys that the other algorithms ignore (one test checks the warning)
pytestmark = pytest.mark.filterwarnings("ignore:not used by:UserWarning")


def _cfg(*overrides: str) -> ESRunConfig:
    return load(ESRunConfig, CONFIGS / "es_digits.yaml", [*SMALL, *overrides])


def _text(res) -> str:
    return " ".join(res.output.split())


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cli_reaches_every_algorithm(tmp_path, algorithm):
    out = tmp_path / algorithm
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), *SMALL, "es.population=8",
                              f"es.algorithm={algorithm}", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["algorithm"] == algorithm and result["population"] == 8 and result["generations"] == 4
    assert result["final"]["test_acc"] is not None
    saved = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert saved["es"]["algorithm"] == algorithm


def test_algorithm_defaults_and_unused_keys():
    cfg = _cfg("es.algorithm=snes")  # es_digits.yaml sets population 32 and OpenAI-ES's lr/optimizer/shaping
    with pytest.warns(UserWarning, match="not used by snes.*es.lr"):
        run = ESRun(cfg)
    assert run.strategy.popsize == 32  # the config's population applies to every algorithm
    assert {"es.lr", "es.optimizer", "es.shaping", "es.antithetic"} <= set(run.warnings[0].split(": ")[1].split(", "))
    bare = ESRunConfig.model_validate({"model": {"name": "tiny_cnn", "options": {"widths": [4, 8]}},
                                       "data": {"name": "digits"}, "es": {"algorithm": "sep_cmaes", "batch_size": 32}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = ESRun(bare)
    n = run.layout.size
    assert run.strategy.popsize == 4 + int(__import__("math").floor(3 * __import__("math").log(n)))
    pgpe = ESRun(ESRunConfig.model_validate({**bare.model_dump(), "es": {"algorithm": "pgpe", "batch_size": 32}}))
    assert pgpe.settings.optimizer == "clipup" and pgpe.settings.stdev_lr == 0.1  # published defaults


def test_options_are_validated_before_compute():
    with pytest.raises(ConfigError, match="pgpe has no option.*stdev_lrr.*stdev_lr"):
        _cfg("es.algorithm=pgpe", "es.options.stdev_lrr=0.1")
    with pytest.raises(ConfigError, match="shared settings are es"):
        _cfg("es.algorithm=pgpe", "es.options.sigma=0.1")
    with pytest.raises(ConfigError, match="stdev_max_change"):
        _cfg("es.algorithm=pgpe", "es.options.stdev_max_change=2")
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), "es.algorithm=xnes"])
    assert res.exit_code == 2 and "es.algorithm" in _text(res) and "Traceback" not in _text(res)
    with pytest.raises(ConfigError, match="es.options.stdev_lr: pgpe expects float, got True"):
        _cfg("es.algorithm=pgpe", "es.options.stdev_lr=true")
    with pytest.raises(ConfigError, match="es.options.center_lr"):
        _cfg("es.algorithm=snes", "es.options.center_lr=fast")
    cfg = _cfg("es.algorithm=snes", "es.options.center_lr=0.5", "es.options.stdev_lr=0.01")
    assert cfg.es.algorithm_settings().center_lr == 0.5


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_resume_is_bitwise_for_every_algorithm(tmp_path, algorithm):
    common = [f"es.algorithm={algorithm}", "es.population=8", "es.checkpoint_every=3"]
    straight = ESRun(_cfg(*common, "es.generations=6"), tmp_path / "straight")
    straight.run(progress=False)
    run_es(_cfg(*common, "es.generations=3"), tmp_path / "resumed", progress=False)
    resumed = ESRun(_cfg(*common, "es.generations=6"), tmp_path / "resumed")
    result = resumed.run(resume=True, progress=False)
    assert torch.equal(resumed.strategy.center, straight.strategy.center)
    assert torch.equal(resumed.strategy.stdev, straight.strategy.stdev)
    assert [h["fitness_mean"] for h in result["history"]] == [h["fitness_mean"] for h in straight.history]
    res = runner.invoke(app, ["population", "es", str(CONFIGS / "es_digits.yaml"), *SMALL, *common, "es.generations=8",
                              "es.algorithm=" + ("snes" if algorithm != "snes" else "pgpe"), "--out",
                              str(tmp_path / "resumed"), "--resume"])
    assert res.exit_code == 2 and "es.algorithm" in _text(res)


@pytest.mark.parametrize("algorithm", ["openai", "sep_cmaes"])
def test_fitness_on_worker_processes_equals_one_process(tmp_path, algorithm):
    common = [f"es.algorithm={algorithm}", "es.population=8", "es.generations=3"]
    one = ESRun(_cfg(*common))
    one.run(progress=False)
    two = ESRun(_cfg(*common, "es.workers=2"))
    result = two.run(progress=False)
    assert torch.equal(one.strategy.center, two.strategy.center)
    assert [h["fitness_mean"] for h in one.history] == [h["fitness_mean"] for h in result["history"]]
    assert [h["mean_fitness"] for h in one.history] == [h["mean_fitness"] for h in result["history"]]


def test_loop_backend_agrees_with_vmap_and_shards_exactly():
    run = ESRun(_cfg("es.population=8"))
    x, y = run.batch(0)
    cand = run.strategy.ask()
    vm = run.batch_fitness.on_batch(cand, x, y)
    run.batch_fitness.backend = "loop"
    lp = run.batch_fitness.on_batch(cand, x, y)
    torch.testing.assert_close(lp, vm, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.cat([run.batch_fitness.on_batch(cand[:3], x, y), run.batch_fitness.on_batch(cand[3:], x, y)]), lp)
    one = ESRun(_cfg("es.population=8", "es.generations=2", "es.backend=loop"))
    one.run(progress=False)
    two = ESRun(_cfg("es.population=8", "es.generations=2", "es.backend=loop", "es.workers=2"))
    two.run(progress=False)
    assert torch.equal(one.strategy.center, two.strategy.center)


def test_workers_may_change_on_resume(tmp_path):
    common = ["es.algorithm=snes", "es.population=8", "es.checkpoint_every=2"]
    straight = ESRun(_cfg(*common))
    straight.run(progress=False)
    run_es(_cfg(*common, "es.generations=2"), tmp_path / "r", progress=False)
    resumed = ESRun(_cfg(*common, "es.workers=3"), tmp_path / "r")
    resumed.run(resume=True, progress=False)
    assert torch.equal(resumed.strategy.center, straight.strategy.center)


def test_fitness_on_ray_actors_equals_one_process():
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="es.executor: ray needs Ray installed"):
            ESRun(_cfg("es.workers=2", "es.executor=ray"))
        pytest.skip("Ray is not installed (pip install 'cnnlab[ray]'); the Ray fitness actors are not tested here")
    common = ["es.algorithm=pgpe", "es.population=8", "es.generations=2"]
    one = ESRun(_cfg(*common))
    one.run(progress=False)
    on_ray = ESRun(_cfg(*common, "es.workers=2", "es.executor=ray"))
    result = on_ray.run(progress=False)
    assert torch.equal(one.strategy.center, on_ray.strategy.center)
    assert [h["fitness_mean"] for h in one.history] == [h["fitness_mean"] for h in result["history"]]


def test_fitness_executors_are_a_registry():
    from cnnlab.population.es_workers import FITNESS_EXECUTORS, InProcess, LocalProcesses, make_pool

    assert FITNESS_EXECUTORS.names() == ["local", "ray"]
    run = ESRun(_cfg("es.population=4"))
    with make_pool(run.batch_fitness, workers=1, executor="local") as pool:
        assert isinstance(pool, InProcess)
        cand = run.strategy.ask()
        assert torch.equal(pool(cand, 0), run.batch_fitness(cand, 0))
    with make_pool(run.batch_fitness, workers=2, executor="local") as pool:
        assert isinstance(pool, LocalProcesses)
        assert torch.equal(pool(cand, 0), run.batch_fitness(cand, 0))
    with pytest.raises(ValueError, match="unknown ES fitness executor 'lokal'. Did you mean 'local'"):
        make_pool(run.batch_fitness, executor="lokal")


def test_progress_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    """Off a terminal the ES run prints plain k/N lines (every line here: interval 0) with the fitness."""
    monkeypatch.setenv("CNNLAB_PROGRESS_INTERVAL", "0")
    ESRun(_cfg("es.population=4")).run(progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("ES tiny_cnn:")]
    assert [ln.split()[2] for ln in lines] == ["0/4", "1/4", "2/4", "3/4", "4/4"]
    assert "fitness" in lines[-1] and "(100%)" in lines[-1]
    ESRun(_cfg("es.population=4")).run(progress=False)
    assert "ES tiny_cnn" not in capsys.readouterr().err


def test_the_mean_is_scored_every_mean_fitness_every_generations_without_changing_the_search(tmp_path):
    runs = {}
    for every in (1, 0, 3):
        cfg = _cfg("es.generations=6", "es.eval_every=6", "es.checkpoint_every=6", "es.population=8", f"es.mean_fitness_every={every}")
        run = ESRun(cfg, tmp_path / str(every))
        runs[every] = (run.run(progress=False), run.strategy.center.clone())
    scored = {every: [h["generation"] for h in r["history"] if "mean_fitness" in h] for every, (r, _) in runs.items()}
    assert scored == {1: [1, 2, 3, 4, 5, 6], 0: [], 3: [1, 4, 6]}  # records count generations from 1; the last always
    assert torch.equal(runs[0][1], runs[1][1]) and torch.equal(runs[3][1], runs[1][1])  # the same trajectory
    assert [r["evaluations"] for r, _ in runs.values()] == [(6 * 8 + n) * 32 for n in (6, 0, 3)]
    assert runs[0][0]["first"] == {} and (tmp_path / "0" / "fitness.png").exists()
    assert runs[3][0]["final"]["mean_fitness"] == runs[1][0]["final"]["mean_fitness"]
