"""Where ES fitness is computed: in this process, in worker processes, or in Ray actors.

A :class:`BatchFitness` is everything needed to score candidates on generation g's batch (the model's
meta skeleton, its layout and frozen tensors, the seeded loader); it is picklable, so every worker
holds its own copy and receives only candidate rows. The rows are cut into contiguous shards, one per
worker, and the fitness values are put back in order. A vmapped forward's outputs per candidate do
not depend on which other candidates share the call (tested), so with the same thread count per
evaluation the sharded run equals the single-process run bit for bit.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from cnnlab.data.batches import BatchLoader
from cnnlab.engine.setup import apply_malloc
from cnnlab.population.bn import bn_batch_statistics
from cnnlab.population.procs import shards
from cnnlab.population.stack import ParamLayout, stacked_forward
from cnnlab.utils.registry import Registry


@dataclass
class BatchFitness:
    """Fitness (n,) of flat parameter vectors (n, P) on one generation's batch, in vmapped forwards.

    BatchNorm uses batch statistics (running statistics of perturbed weights mean nothing); ``kind`` is
    ``neg_loss`` (negative mean cross-entropy) or ``accuracy``; ``chunk`` bounds candidates per forward;
    ``backend`` ``vmap`` (one vmapped forward, grouped convolutions) or ``loop`` (candidate after
    candidate, plain convolutions: faster for convs on a CPU at larger images; equal up to rounding).
    """

    skeleton: nn.Module
    layout: ParamLayout
    shared: dict[str, Tensor]
    loader: BatchLoader
    kind: str = "neg_loss"
    chunk: Optional[int] = None
    backend: str = "vmap"

    def batch(self, generation: int) -> tuple[Tensor, Tensor]:
        """Batch ``g mod L`` of epoch ``g div L`` of the seeded order."""
        n = len(self.loader)
        b = self.loader.batch(generation // n, generation % n)
        return b.x, b.y

    @torch.no_grad()
    def on_batch(self, candidates: Tensor, x: Tensor, y: Tensor) -> Tensor:
        stacked = self.layout.unflatten(candidates)
        with bn_batch_statistics(self.skeleton):
            if self.backend == "loop":
                logits = torch.stack([functional_call(self.skeleton, ({k: v[i] for k, v in stacked.items()}, self.shared), (x,))
                                      for i in range(candidates.shape[0])]).float()
            else:
                logits = stacked_forward(self.skeleton, stacked, x, shared=self.shared, chunk_size=self.chunk).float()
        if self.kind == "accuracy":
            return (logits.argmax(-1) == y).float().mean(1)
        n, b, c = logits.shape
        return -F.cross_entropy(logits.reshape(n * b, c), y.repeat(n), reduction="none").reshape(n, b).mean(1)

    def __call__(self, candidates: Tensor, generation: int) -> Tensor:
        x, y = self.batch(generation)
        return self.on_batch(candidates.to(x.device), x, y)


class FitnessPool(ABC):
    """Evaluates candidate rows of a generation; ``close()`` releases the workers.

    Subclasses must implement ``__call__(candidates (n, P), generation) -> fitness (n,)`` (the values in
    row order, equal to :class:`BatchFitness` on all rows at once) and ``close()``.
    """

    name = ""

    @abstractmethod
    def __call__(self, candidates: Tensor, generation: int) -> Tensor: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> "FitnessPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcess(FitnessPool):
    name = "in_process"

    def __init__(self, fitness: BatchFitness):
        self.fitness = fitness

    def __call__(self, candidates, generation):
        return self.fitness(candidates, generation)

    def close(self) -> None:
        return None  # nothing was started


_WORKER_FITNESS: Optional[BatchFitness] = None


def _init_worker(fitness: BatchFitness, threads: int) -> None:
    global _WORKER_FITNESS
    torch.set_num_threads(threads)
    apply_malloc(torch.device("cpu"))
    _WORKER_FITNESS = fitness


def _eval_shard(candidates: Tensor, generation: int) -> Tensor:
    assert _WORKER_FITNESS is not None
    return _WORKER_FITNESS(candidates, generation)


class LocalProcesses(FitnessPool):
    """``workers`` processes on this machine (forked with one thread each, else spawned), one shard each."""

    name = "local"

    def __init__(self, fitness: BatchFitness, workers: int, threads: int = 1):
        import os

        import torch.multiprocessing as mp  # registers torch's tensor reductions for the pipes

        if workers < 2:
            raise ValueError(f"LocalProcesses needs workers >= 2, got {workers}")
        method = "fork" if threads == 1 and os.name == "posix" else "spawn"
        self.workers = workers
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method),
                                        initializer=_init_worker, initargs=(fitness, threads))

    def __call__(self, candidates, generation):
        futures = [self.pool.submit(_eval_shard, candidates[s:e].cpu(), generation)
                   for s, e in shards(candidates.shape[0], self.workers)]
        return torch.cat([f.result() for f in futures]).to(candidates.device)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Actor:
    """A Ray actor holding its own copy of the fitness."""

    def __init__(self, fitness: BatchFitness, threads: int):
        _init_worker(fitness, threads)

    def evaluate(self, candidates: Tensor, generation: int) -> Tensor:
        return _eval_shard(candidates, generation)


class RayActors(FitnessPool):
    """``workers`` Ray actors (one CPU each unless ``num_cpus``), on a cluster (``address``) or a local Ray.

    Needs the ``ray`` extra (``pip install 'cnnlab[ray]'``), as the sweep executor ``ray`` does.
    """

    name = "ray"

    def __init__(self, fitness: BatchFitness, workers: int, threads: int = 1, *, address: Optional[str] = None,
                 num_cpus: float = 1.0):
        try:
            import ray
        except ImportError:
            raise ImportError("es.executor ray needs Ray: pip install 'cnnlab[ray]'") from None
        self.ray = ray
        from cnnlab.utils.ray_session import init_ray

        self.started = init_ray(ray, address, workers)
        remote = ray.remote(num_cpus=num_cpus)(_Actor)
        ref = ray.put(fitness)
        self.workers = workers
        self.actors: list[Any] = [remote.remote(ref, threads) for _ in range(workers)]

    def __call__(self, candidates, generation):
        parts = shards(candidates.shape[0], self.workers)
        refs = [a.evaluate.remote(candidates[s:e].cpu(), generation) for a, (s, e) in zip(self.actors, parts)]
        return torch.cat(self.ray.get(refs)).to(candidates.device)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False


FITNESS_EXECUTORS: Registry[Callable[..., FitnessPool]] = Registry(
    "ES fitness executor", error=ValueError, hint="Set es.executor to one of them.")


@FITNESS_EXECUTORS.register("local")
def _local_pool(fitness: BatchFitness, workers: int, threads: int, address: Optional[str]) -> FitnessPool:
    """One worker: this process; more: forked (one thread each) or spawned worker processes (``address`` unused)."""
    return InProcess(fitness) if workers <= 1 else LocalProcesses(fitness, workers, threads)


@FITNESS_EXECUTORS.register("ray")
def _ray_pool(fitness: BatchFitness, workers: int, threads: int, address: Optional[str]) -> FitnessPool:
    """``workers`` Ray actors on the cluster at ``address`` (None: a local Ray started by cnnlab.utils.ray_session)."""
    return RayActors(fitness, workers, threads, address=address)


def make_pool(fitness: BatchFitness, *, workers: int = 1, executor: str = "local", threads: int = 1,
              address: Optional[str] = None) -> FitnessPool:
    """The pool of the executor named ``executor`` in :data:`FITNESS_EXECUTORS` (``local``: this process for
    one worker, else worker processes; ``ray``: Ray actors); register another with
    ``@FITNESS_EXECUTORS.register("name")`` on a ``(fitness, workers, threads, address) -> FitnessPool``."""
    return FITNESS_EXECUTORS.get(executor)(fitness, workers, threads, address)
