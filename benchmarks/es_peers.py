"""cnnlab's evolution strategies against EvoTorch's on the same problem, same budget, interleaved.

Problem: ``configs/es_digits.yaml`` (tiny_cnn widths [8, 16, 32], 6,274 parameters, sklearn digits),
one shared training batch of 128 per generation, fitness = negative cross-entropy with BatchNorm on
batch statistics, 32 candidates per generation for every algorithm, one thread. Both tools start from
the same vector (the run's model) and score candidates with the same function (cnnlab's
``BatchFitness`` on generation g's batch, under the same C allocator: cnnlab's ES runs keep freed memory for
reuse, and the EvoTorch process is given that too), so only the search algorithm and its overhead differ; the
final center is scored on the test split the same way (BatchNorm re-estimated). Every (seed,
algorithm, tool) runs in its own process; the two tools alternate order from seed to seed.

Pairs (cnnlab ``es.algorithm`` and settings -> EvoTorch 0.6.1 searcher):
  openai      OpenAI-ES, Adam lr 0.03, sigma 0.05, mirrored, centered ranks -> PGPE(adam, stdev_lr 0, centered, symmetric)
  pgpe        PGPE, ClipUp lr 0.03 (max speed 0.06), stdev_lr 0.1, max change 0.2 -> PGPE(clipup, same)
  pgpe_adam   PGPE, Adam lr 0.03, stdev_lr 0.1, max change 0.2 -> PGPE(adam, same)
  snes        SNES, published defaults but population 32 -> SNES(popsize 32, defaults)
  sep_cmaes   sep-CMA-ES (Ros & Hansen 2008), population 32 -> CMAES(separable=True, popsize 32) with the same
              algorithm: Ros & Hansen's c_c = 4/(n+4) and c_cov split into c_1 = c_cov/mu_cov and
              c_mu = c_cov (1 - 1/mu_cov), active=False (like with like: given the same noise the two centers
              agree to float rounding, max |difference| 4e-7 after 100 generations)
  sep_cmaes_pycma  the same cnnlab run -> CMAES(separable=True, popsize 32) with EvoTorch's defaults, which
              are another setting, not the paper's: pycma's separable rates (c_c ~ 1/sqrt(n), c_1, c_mu) and
              active CMA (negative weights for the worse half)

    pip install 'cnnlab[bench]'     # or: pip install evotorch==0.6.1 (the benchmark's only extra)
    python benchmarks/es_peers.py [--problem digits|mnist] [--generations 100] [--seeds 0 1 2] [--pairs openai pgpe ...]
                                  [--no-write] [--lockstep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from _report import SHARED_MNIST  # noqa: E402

PAIRS = {
    "openai": ({"es.algorithm": "openai", "es.optimizer": "adam", "es.lr": 0.03},
               "PGPE(optimizer=adam, stdev_learning_rate=0)"),
    "pgpe": ({"es.algorithm": "pgpe", "es.optimizer": "clipup", "es.lr": 0.03},
             "PGPE(optimizer=clipup, stdev_learning_rate=0.1, stdev_max_change=0.2)"),
    "pgpe_adam": ({"es.algorithm": "pgpe", "es.optimizer": "adam", "es.lr": 0.03},
                  "PGPE(optimizer=adam, stdev_learning_rate=0.1, stdev_max_change=0.2)"),
    "snes": ({"es.algorithm": "snes"}, "SNES(popsize=32)"),
    "sep_cmaes": ({"es.algorithm": "sep_cmaes"}, "CMAES(separable=True, popsize=32, Ros & Hansen's c_c, c_1, c_mu, active=False)"),
    "sep_cmaes_pycma": ({"es.algorithm": "sep_cmaes"}, "CMAES(separable=True, popsize=32), EvoTorch's defaults (pycma rates, active)"),
}


MNIST_DIR = SHARED_MNIST


def _dataset(problem: str):
    """None for the digits config's own data; ``mnist``: 28x28 MNIST t10k split 8,000 / 2,000 (an EMNIST-like stand-in)."""
    if problem == "digits":
        return None
    from mnist_accuracy import shared_mnist_split

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"--problem mnist needs the MNIST t10k IDX files in {MNIST_DIR}")
    return shared_mnist_split(MNIST_DIR)


def _run(pair: str, seed: int, generations: int, problem: str):
    from cnnlab.population.es_run import ESRun

    return ESRun(_config(pair, seed, generations), dataset=_dataset(problem))


def _config(pair: str, seed: int, generations: int):
    from cnnlab.population.config import ESRunConfig, load

    # es.mean_fitness_every=0: EvoTorch scores only the candidates, so cnnlab skips its curve of the mean (a 33rd row)
    base = {"es.generations": generations, "es.eval_every": generations, "es.checkpoint_every": generations,
            "es.mean_fitness_every": 0,
            "es.population": 32, "es.sigma": 0.05, "es.threads": 1, "seed": seed}
    over = {**base, **PAIRS[pair][0]}
    return load(ESRunConfig, ROOT / "configs" / "es_digits.yaml", [f"{k}={v}" for k, v in over.items()])


class TimedFitness:
    """The run's fitness function, timed: what the two tools share is subtracted to leave each one's own work."""

    def __init__(self, fitness):
        self.fitness, self.seconds = fitness, []

    def batch(self, generation: int):
        return self.fitness.batch(generation)

    def __call__(self, candidates, generation: int):
        t0 = time.perf_counter()
        out = self.fitness(candidates, generation)
        self.seconds.append(time.perf_counter() - t0)
        return out


def _timings(total: list[float], fitness: list[float]) -> dict:
    return {"s_per_gen": statistics.median(total), "fitness_s": statistics.median(fitness),
            "own_s": statistics.median(t - f for t, f in zip(total, fitness))}


def run_cnnlab(pair: str, seed: int, generations: int, problem: str) -> dict:
    import warnings

    warnings.filterwarnings("ignore", message="not used by")
    run = _run(pair, seed, generations, problem)
    run.batch_fitness = timed = TimedFitness(run.batch_fitness)
    result = run.run(progress=False)
    times = [h["time_s"] for h in result["history"][:-1]]  # the last generation also scores the test split
    return {"test_acc": result["final"]["test_acc"], **_timings(times, timed.seconds[:-1])}


def run_evotorch(pair: str, seed: int, generations: int, problem: str) -> dict:
    import warnings

    import torch
    from evotorch import Problem
    from evotorch.algorithms import CMAES, PGPE, SNES

    warnings.filterwarnings("ignore")
    # the same model, start vector, batches and fitness; and the same allocator (an ESRun keeps freed memory)
    run = _run(pair, seed, generations, problem)
    x0 = run.strategy.center.clone()
    fitness = TimedFitness(run.batch_fitness)
    state = {"generation": 0}

    def evaluate(values: torch.Tensor) -> torch.Tensor:
        return fitness(values, state["generation"])

    torch.manual_seed(seed)
    problem = Problem("max", evaluate, solution_length=x0.numel(), vectorized=True, initial_bounds=(-1, 1),
                      dtype=torch.float32, seed=seed)
    common = {"popsize": 32, "center_init": x0}
    if pair == "openai":
        searcher = PGPE(problem, center_learning_rate=0.03, stdev_learning_rate=0.0, stdev_init=0.05, optimizer="adam",
                        ranking_method="centered", stdev_max_change=None, symmetric=True, **common)
    elif pair in ("pgpe", "pgpe_adam"):
        searcher = PGPE(problem, center_learning_rate=0.03, stdev_learning_rate=0.1, stdev_init=0.05,
                        optimizer="clipup" if pair == "pgpe" else "adam", ranking_method="centered",
                        stdev_max_change=0.2, symmetric=True, **common)
    elif pair == "snes":
        searcher = SNES(problem, stdev_init=0.05, **common)
    elif pair == "sep_cmaes":
        searcher = CMAES(problem, stdev_init=0.05, separable=True, **_ros_hansen_rates(run.strategy), **common)
    else:
        searcher = CMAES(problem, stdev_init=0.05, separable=True, **common)
    times = []
    for g in range(generations):
        state["generation"] = g
        t0 = time.perf_counter()
        searcher.step()
        times.append(time.perf_counter() - t0)
    center = searcher.status["center"].clone().as_subclass(torch.Tensor).float()
    return {"test_acc": run.evaluate_mean(center)["test_acc"], **_timings(times, fitness.seconds)}


def _ros_hansen_rates(strategy) -> dict:
    """cnnlab's sep-CMA-ES rates in EvoTorch's terms (tensors: EvoTorch 0.6.1 calls .cpu() on given c_1, c_mu)."""
    import torch

    t = lambda v: torch.tensor(float(v))  # noqa: E731
    return {"c_c": t(strategy.c_c), "c_1": t(strategy.c_cov / strategy.mu_cov),
            "c_mu": t(strategy.c_cov * (1 - 1 / strategy.mu_cov)), "active": False}


def lockstep_sep_cmaes(seed: int, generations: int, problem: str) -> dict:
    """cnnlab's sep-CMA-ES and EvoTorch's CMAES(separable=True) on the same noise z in one process: with Ros &
    Hansen's rates EvoTorch follows cnnlab to float rounding (the implementations agree); with EvoTorch's
    defaults it takes another path (another setting). Returns the largest center differences and accuracies."""
    import logging
    import warnings

    import torch
    from evotorch import Problem
    from evotorch.algorithms import CMAES

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    run = _run("sep_cmaes", seed, generations, problem)
    es, fit, x0 = run.strategy, run.batch_fitness, run.strategy.center.clone()
    state = {"generation": 0}

    def searcher(**rates):
        p = Problem("max", lambda v: fit(v, state["generation"]), solution_length=x0.numel(), vectorized=True,
                    initial_bounds=(-1, 1), dtype=torch.float32, seed=seed)
        p.make_gaussian = lambda num_solutions=None, **kw: es.noise(state["generation"]).clone()  # cnnlab's draw
        return CMAES(p, stdev_init=0.05, separable=True, popsize=32, center_init=x0, **rates)

    same, default = searcher(**_ros_hansen_rates(es)), searcher()
    gap = {"same_rates": 0.0, "evotorch_defaults": 0.0}
    for g in range(generations):
        state["generation"] = g
        same.step()
        default.step()
        es.tell(fit(es.ask(), g))
        for k, other in (("same_rates", same), ("evotorch_defaults", default)):
            gap[k] = max(gap[k], float((es.center - other.m.as_subclass(torch.Tensor)).abs().max()))
    acc = lambda v: run.evaluate_mean(v.as_subclass(torch.Tensor).float())["test_acc"]  # noqa: E731
    return {"seed": seed, "max_center_diff": gap, "test_acc": {"cnnlab": acc(es.center), "evotorch_same_rates": acc(same.m),
                                                            "evotorch_defaults": acc(default.m)}}


def _child(tool: str, pair: str, seed: int, generations: int, problem: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, __file__, "--child", tool, pair, str(seed), str(generations), problem],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{tool} {pair} seed {seed} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--problem", choices=["digits", "mnist"], default="digits",
                    help="digits: configs/es_digits.yaml's data; mnist: 28x28 MNIST t10k split 8k/2k (EMNIST-like, CPU-sized)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--lockstep", action="store_true",
                    help="only compare the sep-CMA-ES updates on the same noise, per seed (prints JSON; writes nothing)")
    ap.add_argument("--child", nargs=5, metavar=("TOOL", "PAIR", "SEED", "GENERATIONS", "PROBLEM"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(1)
        tool, pair, seed, gens, problem = args.child
        fn = run_cnnlab if tool == "cnnlab" else run_evotorch
        print(json.dumps(fn(pair, int(seed), int(gens), problem)))
        return
    if args.lockstep:
        for seed in args.seeds:
            print(json.dumps(lockstep_sep_cmaes(seed, args.generations, args.problem)), flush=True)
        return
    import torch

    try:
        import evotorch
    except ImportError:
        sys.exit("this benchmark needs EvoTorch: pip install 'cnnlab[bench]' (or evotorch==0.6.1)")
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, str], list[dict]] = {}
    done: dict[tuple, dict] = {}  # sep_cmaes and sep_cmaes_pycma share cnnlab's run of a seed
    for i, seed in enumerate(args.seeds):
        for pair in args.pairs:
            tools = ["cnnlab", "evotorch"] if (i % 2 == 0) else ["evotorch", "cnnlab"]
            for tool in tools:
                key = (tool, json.dumps(PAIRS[pair][0], sort_keys=True) if tool == "cnnlab" else pair, seed)
                if key not in done:
                    done[key] = _child(tool, pair, seed, args.generations, args.problem)
                r = done[key]
                results.setdefault((pair, tool), []).append(r)
                print(f"seed {seed} {pair:10s} {tool:9s} test acc {r['test_acc']:.3f}  {r['s_per_gen'] * 1000:.1f} ms/gen "
                      f"(fitness {r['fitness_s'] * 1000:.1f}, own {r['own_s'] * 1000:.2f})", flush=True)
    load_after = os.getloadavg()[0]

    def summary(rs: list[dict]) -> tuple[float, ...]:
        accs = [r["test_acc"] for r in rs]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        return statistics.mean(accs), min(accs), max(accs), med("s_per_gen"), med("fitness_s"), med("own_s")

    def pooled(c: tuple[float, ...], e: tuple[float, ...]) -> float:
        """EvoTorch's time per generation over cnnlab's with the shared fitness (the same function on the same 32
        rows in both) at the mean of the two processes' medians: what is left is each tool's own work, without the
        process-to-process noise of the identical part."""
        f = (c[4] + e[4]) / 2
        return (f + e[5]) / (f + c[5])

    rows, verdicts = [], []
    for pair in args.pairs:
        c, e = summary(results[(pair, "cnnlab")]), summary(results[(pair, "evotorch")])
        ca, ea = [r["test_acc"] for r in results[(pair, "cnnlab")]], [r["test_acc"] for r in results[(pair, "evotorch")]]
        # seed noise: two standard errors of the difference of the means (0 with a single seed)
        sd = 2 * (statistics.variance(ca) / len(ca) + statistics.variance(ea) / len(ea)) ** 0.5 if len(ca) > 1 else 0.0
        rows.append(f"| {pair} | {PAIRS[pair][1]} | {c[0]:.3f} ({c[1]:.3f}-{c[2]:.3f}) | {e[0]:.3f} ({e[1]:.3f}-{e[2]:.3f}) "
                    f"| {c[3] * 1000:.1f} | {e[3] * 1000:.1f} | {e[3] / c[3]:.2f}x | {pooled(c, e):.2f}x "
                    f"| {c[4] * 1000:.1f} / {e[4] * 1000:.1f} | {c[5] * 1000:.2f} / {e[5] * 1000:.2f} |")
        acc_ok = c[0] >= e[0] - sd
        verdicts.append(f"- {pair}: accuracy {'matches or beats' if c[0] >= e[0] else ('within seed noise of' if acc_ok else 'BELOW')} "
                        f"EvoTorch's ({c[0]:.3f} vs {e[0]:.3f}; two standard errors of the difference {sd:.3f}); "
                        f"{'faster' if pooled(c, e) > 1 else 'SLOWER'} per generation with the shared fitness pooled "
                        f"({pooled(c, e):.2f}x; raw totals {e[3] / c[3]:.2f}x); "
                        f"its own work per generation beyond the shared fitness {c[5] * 1000:.2f} ms against "
                        f"EvoTorch's {e[5] * 1000:.2f} ms ({'less' if c[5] < e[5] else 'MORE'}).")
    if args.problem == "digits":
        problem = "`configs/es_digits.yaml` (tiny_cnn [8, 16, 32], 6,274 parameters, sklearn digits, 360 test images)"
        not_done = ("The CPU-sized EMNIST-like problem is `--problem mnist` (its own section, when run; EMNIST itself "
                    "is a user download, not on this machine); the EMNIST SimpleResNet config on CUDA needs a GPU.")
    else:
        problem = ("the same config on 28x28 handwritten digits as a CPU-sized EMNIST-like subset: the official MNIST "
                   "t10k images split 8,000 train / 2,000 test (EMNIST is not on this machine)")
        not_done = "Not measured here: EMNIST itself and the EMNIST SimpleResNet config on CUDA (no GPU here)."
    body = f"""cnnlab's ES algorithms against EvoTorch {evotorch.__version__} on {problem}: {args.generations} generations, 32 candidates per generation for every algorithm, one shared training batch of 128 per generation, sigma (initial) 0.05, one thread, seeds {', '.join(map(str, args.seeds))}, each (seed, algorithm, tool) in its own process, the tools' order alternating per seed. Both start from the run's model and score candidates with the same function (cnnlab's `BatchFitness`: BatchNorm on batch statistics, negative cross-entropy), so the comparison isolates the algorithms and their per-generation overhead; test accuracy = the final center on the test split after re-estimating BatchNorm statistics. Times per generation = medians over generations, then over seeds: total; the shared fitness function's part (the 32 candidates in both: cnnlab's default also scores its mean each generation for the fitness curve, one more row, which `es.mean_fitness_every=0` turns off here, as EvoTorch has no such curve); and the tool's own work (total minus fitness: sampling, ranking, the update, bookkeeping), which is where the tools differ and which the load on the machine disturbs least. `python benchmarks/es_peers.py --problem {args.problem} --generations {args.generations} --seeds {' '.join(map(str, args.seeds))}`.

Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}; 1-min load average {load_before:.1f} before, {load_after:.1f} after (a load well above 1 means other jobs shared the machine and the totals are noisy); the ratios come from interleaved runs in one sitting. Both processes keep freed memory for reuse (cnnlab's ES runs do; the EvoTorch process is given the same allocator for the borrowed fitness).

| cnnlab `es.algorithm` | EvoTorch counterpart | cnnlab test acc (min-max) | EvoTorch test acc (min-max) | cnnlab ms/gen | EvoTorch ms/gen | speed-up (raw totals) | speed-up (shared fitness pooled) | fitness ms/gen cnnlab / EvoTorch | own ms/gen cnnlab / EvoTorch |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(verdicts)}

{not_done}"""
    print(body)
    if not args.no_write:
        from _report import write_section

        title = "Evolution strategies vs EvoTorch (benchmarks/es_peers.py)"
        write_section(title if args.problem == "digits" else title.replace("EvoTorch", "EvoTorch, 28x28 MNIST subset"), body)


if __name__ == "__main__":
    main()
