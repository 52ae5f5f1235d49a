"""Population training: M members trained at once with the engine's ``train_step``.

Members may differ in initial weights (one model per member, or one shared), data order (one
``BatchLoader`` per member, or one shared: then every member sees the same batch and vmap uses in_dims
None for it), per-example weights (a weight matrix M x N; zero drops an example but keeps the batch
layout, so BatchNorm statistics still include it) and learning rate (a per-member multiplier of one
schedule). Backends (:mod:`cnnlab.population.backends`):

- ``vmap``: one vmapped step of all members; ``loop``: member after member in this process;
- ``procs``: the members split into chunks, each trained by the loop in its own process with one
  thread per core (members never interact, so this equals the loop up to float rounding);
- ``auto``: times one step of each candidate on the real batch (a few members) and picks the
  fastest estimated total, counting process start-up for ``procs``.
"""

from __future__ import annotations

import io
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from cnnlab.data.augment import Augment
from cnnlab.data.batches import BatchLoader
from cnnlab.engine.step import StepSettings, TrainState
from cnnlab.population.backends import make_stepper, member_losses
from cnnlab.population.stack import Population
from cnnlab.population.state import PopulationState
from cnnlab.utils.io import save_torch_atomic, write_json_atomic

BACKENDS = ("auto", "vmap", "loop", "procs")
# Start-up of the worker processes in seconds, by start method, measured on the 2-core CPU machine this
# project is benchmarked on: "fork" (used when each worker gets one thread, so no OpenMP pool is
# inherited) ~0.1 s; "spawn" re-imports torch and cnnlab ~2.5 s. Only used by ``auto``'s estimate.
PROCESS_STARTUP_S = {"fork": 0.2, "spawn": 2.5}

LrFn = Callable[[int], float]
ProgressFn = Callable[[int], None]


@dataclass
class EvalSet:
    """Held-out data evaluated after epochs: uint8 images, labels and the eval transform.

    ``augment``: its deterministic ``eval_transform`` (channels, resize, normalisation) is applied;
    None means x / 255.
    """

    images: Tensor
    labels: Tensor
    augment: Augment | None = None
    batch_size: int = 1000
    channels_last: bool = False

    def batches(self, device: torch.device) -> Iterator[tuple[Tensor, Tensor]]:
        for s in range(0, len(self.labels), self.batch_size):
            raw = self.images[s:s + self.batch_size].to(device)
            if self.augment is not None:
                x = self.augment.eval_transform(raw, channels_last=self.channels_last)
            else:
                x = raw.float() / 255.0
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[s:s + self.batch_size].to(device)


@dataclass
class _Plan:
    """Everything needed to train the members (picklable: sent whole to worker processes)."""

    models: list[nn.Module]
    loaders: list[BatchLoader]
    settings: StepSettings
    epochs: int
    lr: LrFn | float
    lr_scale: list[float]
    member_weights: Tensor | None
    eval_set: EvalSet | None
    eval_every: int
    seed: int
    size: int
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1

    @property
    def shared_batch(self) -> bool:
        return len(self.loaders) == 1

    @property
    def device(self) -> torch.device:
        return self.loaders[0].device

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loaders[0])

    def lr_at(self, step: int) -> float:
        return float(self.lr(step)) if callable(self.lr) else float(self.lr)

    def initial_state(self, ids: Sequence[int]) -> PopulationState:
        opt = self.settings.optimizer
        if len(self.models) == 1:
            m = self.models[0]
            st = TrainState.from_model(m, opt)
            frozen = {n: p.detach() for n, p in m.named_parameters() if not p.requires_grad}
            return PopulationState.stack([st] * len(ids), [frozen] * len(ids) if frozen else None)
        states, frozens = [], []
        for i in ids:
            m = self.models[i]
            states.append(TrainState.from_model(m, opt))
            frozens.append({n: p.detach() for n, p in m.named_parameters() if not p.requires_grad})
        return PopulationState.stack(states, frozens if frozens[0] else None)

    def batch(self, epoch: int, i: int, ids: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """(x, y, w) of batch i: x/y shared (B, ...) or per member (M, B, ...); w always (M, B)."""
        mw = self.member_weights
        if self.shared_batch:
            b = self.loaders[0].batch(epoch, i)
            if mw is None:
                w = b.w.expand(len(ids), -1)
            else:
                w = b.w[None] * mw.index_select(0, torch.as_tensor(list(ids), device=mw.device))[:, b.index]
            return b.x, b.y, w
        bs = [self.loaders[m].batch(epoch, i) for m in ids]
        ws = [b.w if mw is None else b.w * mw[m, b.index] for m, b in zip(ids, bs)]
        return torch.stack([b.x for b in bs]), torch.stack([b.y for b in bs]), torch.stack(ws)


@dataclass
class PopulationResult:
    """The trained members and how they got there.

    ``state``: stacked final state (dim 0 = member). ``history``: one record per epoch with per-member
    lists (train_loss, train_acc, lr and, when evaluated, test_loss, test_acc). ``backend``: the backend
    that ran; ``choice``: how ``auto`` chose it (probe timings, estimates), else None.
    """

    state: PopulationState
    history: list[dict[str, Any]]
    backend: str
    choice: dict[str, Any] | None
    train_time_s: float
    model: nn.Module = field(repr=False)

    @property
    def size(self) -> int:
        return self.state.size

    def population(self) -> Population:
        return self.state.population(self.model)

    def members(self) -> list[nn.Module]:
        """Each trained member as an ordinary module in eval mode."""
        return self.population().unstack()

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def train_population(
    model: nn.Module | Sequence[nn.Module],
    loaders: BatchLoader | Sequence[BatchLoader],
    settings: StepSettings,
    *,
    epochs: int,
    lr: LrFn | float,
    lr_scale: Sequence[float] | Tensor | None = None,
    member_weights: Tensor | None = None,
    members: int | None = None,
    eval_set: EvalSet | None = None,
    eval_every: int = 1,
    backend: str = "auto",
    workers: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
) -> PopulationResult:
    """Train a population with the engine's step and return the stacked final state.

    Each member runs exactly what ``Trainer.fit`` runs for one model: for every batch of every epoch,
    ``train_step(model, state, x, y, w, lr, settings)`` with loss ``sum_i w_i * loss_i / batch_size``.

    - ``model``: the initial weights, one module shared by all members or one per member.
    - ``loaders``: the data order, one ``BatchLoader`` shared by all members (every member sees the same
      batches: the LDS / subset-training case) or one per member (equal sizes and batch size).
    - ``settings``: the engine's StepSettings (optimizer, label smoothing, clipping, ...). Frozen
      parameters are taken from each member's model.
    - ``lr``: the schedule, a function of the 0-based optimizer step (e.g. ``Schedule.lr``) or a constant;
      ``lr_scale``: one multiplier per member (member m uses ``lr(t) * lr_scale[m]``).
    - ``member_weights``: (M, N) per-example weights by dataset index, multiplied onto the loader's own
      weights; zero drops an example from member m's loss (the batch layout is unchanged, so BatchNorm
      statistics still include it). This is how many subset models are trained for LDS::

          parts = build_run(config)                       # shared init, order, augmentation
          res = train_population(parts.model, parts.train_loader, parts.settings,
                                 epochs=config.train.epochs, lr=parts.schedule.lr,
                                 member_weights=masks.float())           # masks: (K, N) bool
          models = res.members()

    - ``members``: M, needed only when nothing else says it.
    - ``eval_set``: evaluated (eval mode, per member) every ``eval_every`` epochs and after the last.
    - ``backend``: auto | vmap | loop | procs; ``workers``: processes for ``procs`` (default: CPU cores).
    - ``seed``: seeds the dropout masks (per member and step) of models that have dropout.
    - ``progress``: called with the number of member-steps just completed.
    - ``checkpoint_dir``: every ``checkpoint_every`` epochs each group of members trained together (all of
      them for vmap/loop, one chunk per worker for procs) saves its state and history there atomically;
      a later call with the same arguments continues each group from its last saved epoch (bitwise, with
      the same backend and workers, which a resumed ``auto`` reads back from the directory).
    """
    plan = _make_plan(model, loaders, settings, epochs, lr, lr_scale, member_weights, members, eval_set, eval_every, seed)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    n_workers = _default_workers(plan.size) if workers is None else workers
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if checkpoint_dir is not None:
        plan.checkpoint_dir, plan.checkpoint_every = Path(checkpoint_dir), checkpoint_every
    choice = None
    if backend == "auto":
        choice = _recorded_choice(plan)
        if choice is None:
            choice = _cached_choice(plan, n_workers)
            _record_choice(plan, choice, n_workers)
        backend = choice["backend"]
        n_workers = choice.get("workers", n_workers)
    t0 = time.perf_counter()
    ids = list(range(plan.size))
    if backend == "procs":
        if plan.device.type != "cpu":
            raise ValueError("backend 'procs' runs on the CPU; use vmap or loop on an accelerator")
        if not _lr_picklable(plan):
            raise ValueError("backend 'procs' sends the lr schedule to worker processes: pass a module-level "
                             "function or a Schedule's .lr, not a lambda or closure")
        state, history = _train_processes(plan, ids, n_workers, progress)
    else:
        state, history = _train_members(plan, backend, ids, progress)
    template = model if isinstance(model, nn.Module) else list(model)[0]
    return PopulationResult(state, history, backend, choice, time.perf_counter() - t0, template)


def _make_plan(model, loaders, settings, epochs, lr, lr_scale, member_weights, members, eval_set, eval_every, seed) -> _Plan:
    models = [model] if isinstance(model, nn.Module) else list(model)
    loader_list = [loaders] if isinstance(loaders, BatchLoader) else list(loaders)
    if not models:
        raise ValueError("model: give one module or a non-empty list of modules")
    if not loader_list:
        raise ValueError("loaders: give one BatchLoader or a non-empty list")
    sizes: dict[str, int] = {}
    if len(models) > 1:
        sizes["model (one per member)"] = len(models)
    if len(loader_list) > 1:
        sizes["loaders (one per member)"] = len(loader_list)
    if member_weights is not None:
        if member_weights.ndim != 2:
            raise ValueError(f"member_weights must be (members, N), got shape {tuple(member_weights.shape)}")
        sizes["member_weights rows"] = member_weights.shape[0]
    if lr_scale is not None:
        lr_scale = [float(v) for v in (lr_scale.tolist() if isinstance(lr_scale, Tensor) else lr_scale)]
        sizes["lr_scale"] = len(lr_scale)
    if members is not None:
        sizes["members"] = members
    if len(set(sizes.values())) > 1:
        raise ValueError("the population size is ambiguous: " + ", ".join(f"{k} = {v}" for k, v in sizes.items()))
    size = next(iter(sizes.values())) if sizes else 1
    if size < 1:
        raise ValueError(f"a population needs at least one member, got {size}")
    first = loader_list[0]
    for j, ld in enumerate(loader_list[1:], start=1):
        if (len(ld), ld.batch_size, ld.num_examples, ld.device) != (len(first), first.batch_size, first.num_examples, first.device):
            raise ValueError(f"loader {j} differs from loader 0 in batches per epoch, batch size, examples or device; "
                             "per-member loaders must share all of them (only the seed may differ)")
        if ld.world_size != 1:
            raise ValueError("population loaders must be single-process (world_size 1)")
    if member_weights is not None:
        n = first.images.shape[0]
        if member_weights.shape[1] != n:
            raise ValueError(f"member_weights must have one column per dataset example ({n}), got {member_weights.shape[1]}")
        if not torch.isfinite(member_weights).all():
            raise ValueError("member_weights must be finite")
        member_weights = member_weights.detach().to(first.device, torch.float32)
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if eval_every < 1:
        raise ValueError(f"eval_every must be >= 1, got {eval_every}")
    models = [m.to(first.device) for m in models]
    return _Plan(models, loader_list, settings, epochs, lr, lr_scale or [1.0] * size, member_weights, eval_set,
                 eval_every, seed, size)


def _default_workers(size: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, size))


# ---------------------------------------------------------------------------- in-process training
def _train_members(plan: _Plan, backend: str, ids: Sequence[int], progress: ProgressFn | None) -> tuple[PopulationState, list[dict]]:
    start, state, history = _load_checkpoint(plan, ids)
    stepper = make_stepper(backend, plan.models[0], plan.settings, state, member_ids=ids, seed=plan.seed)
    m = len(ids)
    if progress is not None and start:
        progress(m * start * plan.steps_per_epoch)  # the member-steps done before the resume
    for epoch in range(start, plan.epochs):
        t0 = time.perf_counter()
        loss_sum = torch.zeros(m, dtype=torch.float64, device=plan.device)  # on device: no sync per step
        correct = torch.zeros(m, dtype=torch.long, device=plan.device)
        seen = 0
        for i in range(plan.steps_per_epoch):
            x, y, w = plan.batch(epoch, i, ids)
            base = plan.lr_at(stepper.current_step)
            lrs = [base * plan.lr_scale[j] for j in ids]
            loss, corr = stepper.step(x, y, w, lrs, shared=plan.shared_batch)
            loss_sum += loss.detach().double()
            correct += corr
            seen += w.shape[1]
            if progress is not None:
                progress(m)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": (epoch + 1) * plan.steps_per_epoch, "lr": lrs,
                                  "train_loss": (loss_sum / plan.steps_per_epoch).cpu().tolist(),
                                  "train_acc": (correct.double() / max(seen, 1)).cpu().tolist(),
                                  "train_time_s": time.perf_counter() - t0}
        if plan.eval_set is not None and ((epoch + 1) % plan.eval_every == 0 or epoch + 1 == plan.epochs):
            record.update(_evaluate(stepper, plan.eval_set, plan.device))
        history.append(record)
        if plan.checkpoint_dir is not None and ((epoch + 1) % plan.checkpoint_every == 0 or epoch + 1 == plan.epochs):
            save_torch_atomic(_checkpoint_path(plan, ids), {"format": CHECKPOINT_FORMAT, "ids": list(ids), "epoch": epoch + 1,
                                                           "state": stepper.state().to("cpu").tensors(), "history": history})
    return stepper.state(), history


# ---------------------------------------------------------------------------- checkpoints (resume)
CHECKPOINT_FORMAT = "cnnlab-population-checkpoint-v1"


def _checkpoint_path(plan: _Plan, ids: Sequence[int]) -> Path:
    assert plan.checkpoint_dir is not None
    return plan.checkpoint_dir / f"members_{ids[0]}-{ids[-1]}_of_{plan.size}.pt"


def _load_checkpoint(plan: _Plan, ids: Sequence[int]) -> tuple[int, PopulationState, list[dict]]:
    """(first epoch to run, state, history so far) of the members ``ids``: from their checkpoint when one
    exists for exactly this group, else from the initial weights."""
    path = _checkpoint_path(plan, ids) if plan.checkpoint_dir is not None else None
    if path is None or not path.is_file():
        return 0, plan.initial_state(ids), []
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file: say which
        raise ValueError(f"cannot read population checkpoint {path}: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("ids") != list(ids):
        raise ValueError(f"{path} is not a population checkpoint of members {ids[0]}..{ids[-1]}")
    if not 0 < int(ckpt["epoch"]) <= plan.epochs:
        raise ValueError(f"{path} holds epoch {ckpt['epoch']} of a longer run; this one has {plan.epochs} epochs")
    return int(ckpt["epoch"]), PopulationState.from_tensors(ckpt["state"]).to(plan.device), list(ckpt["history"])


def _recorded_choice(plan: _Plan) -> dict[str, Any] | None:
    """The backend an interrupted run chose (so its checkpoints fit the resumed run's member groups)."""
    if plan.checkpoint_dir is None or not (plan.checkpoint_dir / "backend.json").is_file():
        return None
    import json

    path = plan.checkpoint_dir / "backend.json"
    try:
        choice = json.loads(path.read_text(encoding="utf-8"))
        if choice["backend"] not in BACKENDS or choice["backend"] == "auto":
            raise ValueError(f"unknown backend {choice['backend']!r}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read {path} (the backend an interrupted run chose): {e}") from None
    return {**choice, "reason": f"resumed with the backend the run chose before: {choice.get('reason', '')}"}


def _record_choice(plan: _Plan, choice: dict[str, Any], workers: int) -> None:
    if plan.checkpoint_dir is not None:
        write_json_atomic(plan.checkpoint_dir / "backend.json", {**choice, "workers": workers})


@torch.no_grad()
def _evaluate(stepper, eval_set: EvalSet, device: torch.device) -> dict[str, list[float]]:
    loss = torch.zeros(stepper.size, dtype=torch.float64)
    correct = torch.zeros(stepper.size, dtype=torch.long)
    n = 0
    for x, y in eval_set.batches(device):
        lo, co = member_losses(stepper.eval_logits(x), y)
        loss += lo.double().cpu()
        correct += co.cpu()
        n += len(y)
    if n == 0:
        raise ValueError("the eval set is empty")
    return {"test_loss": (loss / n).tolist(), "test_acc": (correct.double() / n).tolist()}


# ---------------------------------------------------------------------------- worker processes
_PROGRESS_QUEUE = None


def _init_worker(threads: int, queue) -> None:
    global _PROGRESS_QUEUE
    torch.set_num_threads(threads)
    _PROGRESS_QUEUE = queue


def _worker_train(plan: _Plan, ids: list[int]) -> tuple[bytes, list[dict]]:
    def report(n: int) -> None:
        if _PROGRESS_QUEUE is not None:
            _PROGRESS_QUEUE.put(n)

    state, history = _train_members(plan, "loop", ids, report)
    buf = io.BytesIO()
    torch.save(state.tensors(), buf)
    return buf.getvalue(), history


def _chunks(ids: Sequence[int], parts: int) -> list[list[int]]:
    parts = max(1, min(parts, len(ids)))
    k, r = divmod(len(ids), parts)
    out, s = [], 0
    for p in range(parts):
        e = s + k + (1 if p < r else 0)
        out.append(list(ids[s:e]))
        s = e
    return out


def _train_processes(plan: _Plan, ids: Sequence[int], workers: int, progress: ProgressFn | None) -> tuple[PopulationState, list[dict]]:
    import torch.multiprocessing as mp  # registers torch's tensor reductions for the pipes

    chunks = _chunks(ids, workers)
    threads = _worker_threads(len(chunks))
    ctx = mp.get_context(_start_method(threads))
    queue = ctx.Queue()
    with ProcessPoolExecutor(max_workers=len(chunks), mp_context=ctx, initializer=_init_worker, initargs=(threads, queue)) as ex:
        futures = [ex.submit(_worker_train, plan, c) for c in chunks]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
        _drain(queue, progress)
        results = [f.result() for f in futures]
    states = [PopulationState.from_tensors(torch.load(io.BytesIO(b), weights_only=True)) for b, _ in results]
    state = PopulationState.concat(states).to(plan.device)
    return state, _merge_histories([h for _, h in results])


def _lr_picklable(plan: _Plan) -> bool:
    import pickle

    try:
        pickle.dumps(plan.lr)
    except Exception:
        return False
    return True


def _worker_threads(workers: int) -> int:
    return max(1, _default_workers(10**6) // workers)


def _start_method(threads: int) -> str:
    """fork is near-instant but only safe without an inherited OpenMP pool, i.e. with one thread per worker."""
    return "fork" if threads == 1 and os.name == "posix" else "spawn"


def _drain(queue, progress: ProgressFn | None) -> None:
    import queue as _q

    while True:
        try:
            n = queue.get_nowait()
        except (_q.Empty, OSError, ValueError):
            return
        if progress is not None:
            progress(n)


def _merge_histories(parts: list[list[dict]]) -> list[dict]:
    merged = []
    for records in zip(*parts):
        out: dict[str, Any] = {}
        for k, v in records[0].items():
            if isinstance(v, list):
                out[k] = [x for r in records for x in r[k]]
            elif k == "train_time_s":
                out[k] = max(r[k] for r in records)
            else:
                out[k] = v
        merged.append(out)
    return merged


# ---------------------------------------------------------------------------- auto choice
_CHOICES: dict[tuple, dict[str, Any]] = {}


def _cached_choice(plan: _Plan, workers: int) -> dict[str, Any]:
    """``choose_backend``, remembered per (architecture, batch, population, device, threads) in this process,
    so repeated calls (e.g. LDS training subset models chunk by chunk) probe once."""
    m = plan.models[0]
    x, _, _ = plan.batch(0, 0, [0])
    key = (type(m).__qualname__, tuple((n, tuple(p.shape)) for n, p in m.named_parameters()), tuple(x.shape), x.dtype,
           plan.shared_batch, plan.size, plan.epochs * plan.steps_per_epoch, workers, str(plan.device),
           torch.get_num_threads(), type(plan.settings.optimizer).__name__, plan.settings.autocast_dtype)
    if key not in _CHOICES:
        _CHOICES[key] = choose_backend(plan, workers)
        return _CHOICES[key]
    return {**_CHOICES[key], "cached": True}


def _time_steps(plan: _Plan, backend: str, ids: list[int], *, threads: int | None = None,
                give_up: float = math.inf) -> tuple[float, float | None]:
    """(first step, steady step) seconds for members ``ids``; the steady step is None when the first step
    alone took longer than ``give_up`` (the candidate is then slower than one already timed)."""
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        stepper = make_stepper(backend, plan.models[0], plan.settings, plan.initial_state(ids), member_ids=ids, seed=plan.seed)
        x, y, w = plan.batch(0, 0, ids)
        lrs = [plan.lr_at(0) * plan.lr_scale[j] for j in ids]
        sync = torch.cuda.synchronize if plan.device.type == "cuda" else (lambda: None)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            stepper.step(x, y, w, lrs, shared=plan.shared_batch)
            sync()
            times.append(time.perf_counter() - t)
            if times[0] > give_up:
                return times[0], None
        return times[0], times[1]
    finally:
        torch.set_num_threads(saved)


def choose_backend(plan: _Plan, workers: int, probe_members: int = 2) -> dict[str, Any]:
    """Pick the backend with the smallest estimated training time from a short probe.

    Times a first and a second step of ``min(M, probe_members)`` members on the first real batch with each
    candidate (``procs`` is timed as the loop on one thread), scales the second to M members and all steps,
    and adds process start-up for ``procs``. Candidates are timed likeliest-fastest first (CPU: procs, loop,
    vmap; accelerators: vmap, loop); one whose first step alone outlasts the best estimate so far is not
    timed further, and the in-process loop is not timed when even perfect thread scaling of the one-thread
    timing could not beat the best. Returns the choice with the timings it rests on.
    """
    ids = list(range(min(plan.size, probe_members)))
    k = len(ids)
    steps = plan.epochs * plan.steps_per_epoch
    cpu = plan.device.type == "cpu"
    procs_ok = cpu and workers > 1 and plan.size > 1 and _lr_picklable(plan)
    order = (["procs"] if procs_ok else []) + (["loop", "vmap"] if cpu else ["vmap", "loop"])
    per_step: dict[str, float] = {}
    estimates: dict[str, float] = {}
    skipped: dict[str, str] = {}
    one_thread: float | None = None  # seconds per member-step of the loop on one thread
    for name in order:
        best = min(estimates.values(), default=math.inf)
        if name == "procs":
            n_chunks = min(workers, plan.size)
            first, step = _time_steps(plan, "loop", ids, threads=1, give_up=best)
            if step is not None:
                one_thread = step / k
                per_step[name] = one_thread * math.ceil(plan.size / n_chunks)
                estimates[name] = per_step[name] * steps + PROCESS_STARTUP_S[_start_method(_worker_threads(n_chunks))]
            else:
                skipped[name] = f"its first step took {first:.2f}s, more than the best estimated total {best:.2f}s"
            continue
        if name == "loop" and one_thread is not None:
            # the in-process loop on T threads is at best T times the one-thread loop: skip it when even that loses
            bound = one_thread * plan.size * steps / max(1, torch.get_num_threads())
            if bound >= best:
                skipped[name] = (f"even perfect scaling over {torch.get_num_threads()} threads ({bound:.2f}s) "
                                 f"cannot beat {best:.2f}s")
                continue
        first, step = _time_steps(plan, name, ids, give_up=best)
        if step is not None:
            per_step[name] = step * plan.size / k
            estimates[name] = per_step[name] * steps
        else:
            skipped[name] = f"its first step took {first:.2f}s, more than the best estimated total {best:.2f}s"
    best_name = min(estimates, key=estimates.get)
    reason = f"fastest estimated total on {plan.device.type}: " + ", ".join(
        f"{n} {estimates[n]:.2f}s" for n in sorted(estimates, key=estimates.get))
    if skipped:
        reason += "; not timed further: " + ", ".join(skipped)
    return {"backend": best_name, "device": str(plan.device), "probe_members": k, "workers": workers,
            "seconds_per_step": per_step, "estimated_total_s": estimates, "skipped": skipped, "reason": reason}
