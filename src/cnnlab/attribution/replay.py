"""REPLAY: exact reverse-mode differentiation through a whole deterministic training run.

The run is ``state_{t+1} = train_step(state_t, batch_t, w[batch_t.index], lr(t))`` for t < T, with every
batch recomputable (``loader.batch(epoch, i)``). Reversing step t recomputes it from a stored state_t
with ``create_graph=True`` and takes one vector-Jacobian product: the cotangent of state_t and the
contribution to d phi / d w for the batch's examples. K measurements share one replay and one
recompute per step: K cotangents either batched through ``is_grads_batched`` (vmap; fast on GPUs) or as
K VJPs on one retained graph (faster on CPUs, where vmap turns convolutions into grouped ones), or,
with ``compile=True``, through a torch.compile'd VJP of the same step (:mod:`cnnlab.attribution.compiled`).

The state helpers live in :mod:`cnnlab.attribution.states`, the training callback that keeps a replay's
states in :mod:`cnnlab.attribution.record`; their names are re-exported here.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from cnnlab.attribution.checkpointing import Checkpointing, make_checkpointing
from cnnlab.attribution.compiled import CompiledReverseStep
from cnnlab.attribution.record import RecordReplayStates
from cnnlab.attribution.states import StateLayout, move_state, state_nbytes
from cnnlab.data.batches import Batch
from cnnlab.engine.setup import RunParts
from cnnlab.engine.step import TrainState, train_step
from cnnlab.utils.memory import peak_rss_bytes


@dataclass
class ReplayStats:
    """What a replay cost: steps run, states kept, memory, wall time, and which VJP path ran."""

    checkpointing: str
    steps: int
    targets: int = 0
    forward_steps: int = 0      # steps run without a graph (the first forward pass included)
    reused_states: int = 0      # states taken from the training run instead of a first forward pass
    recomputed_steps: int = 0   # forward_steps beyond the first pass
    reverse_steps: int = 0      # steps recomputed with a graph and differentiated
    peak_stored_states: int = 0
    state_bytes: int = 0
    peak_stored_bytes: int = 0
    cuda_peak_bytes: int | None = None
    max_rss_bytes: int | None = None  # peak RSS of the process (CPU)
    vjp_path: str = ""
    compile_s: float = 0.0  # compiled replay: wall time of the calls that compiled the reversed step
    forward_s: float = 0.0
    reverse_s: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


MeasureState = Callable[[TrainState], Tensor]
VJP_MODES = ("auto", "batched", "looped")


class Replay:
    """Forward and reverse passes through the run described by ``parts`` (see the module doc).

    ``dtype``: float32 (bitwise the Trainer's run on CPU) or float64 (for exactness checks); the model,
    data and weights are converted. ``weights``: per-example training weights (N_train,), ones by
    default; the step's weights are ``weights[batch.index]``. ``offload``: keep stored states on the CPU.
    ``vjp``: how K cotangents go through a step: "batched" (one ``is_grads_batched`` VJP, falling back to
    "looped" if an op has no batching rule), "looped" (K VJPs on one retained graph) or "auto" (batched on
    CUDA, looped elsewhere). ``compile``: reverse each step with a torch.compile'd VJP
    (:class:`~cnnlab.attribution.compiled.CompiledReverseStep`, ``compile_chunk`` cotangents per call;
    equal to the eager VJP up to float rounding, falls back to it if compiling fails).
    ``progress(done, total)`` is called after each reversed step.
    """

    def __init__(self, parts: RunParts, *, dtype: torch.dtype = torch.float32, weights: Tensor | None = None,
                 checkpointing: str | Checkpointing = "log", tree_k: int = 4, offload: bool = False,
                 vjp: str = "auto", compile: bool = False, compile_chunk: int = 4,
                 progress: Callable[[int, int], None] | None = None):
        self.parts = parts
        self.model = parts.model
        self.device = parts.device
        self.dtype = dtype
        self.loader = parts.train_loader
        if dtype != torch.float32:
            self.model.to(dtype)
            self.loader.dtype = dtype
        self.settings = dataclasses.replace(
            parts.settings, frozen={n: p.detach() for n, p in self.model.named_parameters() if not p.requires_grad})
        n = len(parts.dataset.train)
        w = torch.ones(n, dtype=dtype) if weights is None else weights.detach().to(dtype)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {tuple(w.shape)}")
        self.weights = w.to(self.device)
        self.strategy = make_checkpointing(checkpointing, tree_k)
        self.offload = offload and self.device.type != "cpu"
        if vjp not in VJP_MODES:
            raise ValueError(f"vjp must be one of {', '.join(VJP_MODES)}, got {vjp!r}")
        self.batched = vjp == "batched" or (vjp == "auto" and self.device.type == "cuda")
        if compile_chunk < 1:
            raise ValueError(f"compile_chunk must be >= 1, got {compile_chunk}")
        self.compile, self.compile_chunk = compile, compile_chunk
        self._compiled: CompiledReverseStep | None = None
        self.progress = progress
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * parts.config.train.epochs
        self._store: dict[int, TrainState] = {}
        self.stats = ReplayStats(self.strategy.describe(), self.total_steps)

    # ------------------------------------------------------------------ the run, forwards
    def initial_state(self) -> TrainState:
        return TrainState.from_model(self.model, self.settings.optimizer)

    def batch(self, t: int) -> Batch:
        return self.loader.batch(t // self.steps_per_epoch, t % self.steps_per_epoch)

    def step(self, state: TrainState, t: int) -> TrainState:
        """Step t without a graph: what the Trainer does."""
        b = self.batch(t)
        new, _ = train_step(self.model, state, b.x, b.y, self.weights[b.index], self.parts.schedule.lr(t), self.settings)
        self.stats.forward_steps += 1
        # explicit BN statistics are computed from params that required grad: cut that history, or every
        # stored state would keep its step's activations alive
        return TrainState(new.params, {k: v.detach() for k, v in new.buffers.items()}, new.opt_state, new.step,
                          new.loss_scale, new.good_steps)

    def forward(self, state: TrainState | None = None, start: int = 0, end: int | None = None,
                keep: set[int] | frozenset[int] = frozenset()) -> TrainState:
        """Run steps [start, end) from ``state`` (state ``start``); store the states at positions in ``keep``."""
        self.model.train()
        s = self.initial_state() if state is None else state
        end = self.total_steps if end is None else end
        if start in keep and start not in self._store:
            self._put(start, s)
        for t in range(start, end):
            s = self.step(s, t)
            if t + 1 in keep and t + 1 not in self._store:
                self._put(t + 1, s)
        return s

    # ------------------------------------------------------------------ the run, backwards
    def metagradient(self, measure: MeasureState, num_targets: int,
                     states: Mapping[int, TrainState] | None = None) -> tuple[Tensor, Tensor, TrainState]:
        """d phi / d w for the K-vector measurement ``measure(final state)``.

        ``states``: states of the same run recorded while it trained (step -> state, e.g. by
        :class:`RecordReplayStates`); when they hold every position of the first pass and the final state,
        that pass is skipped (it would recompute them: bitwise the same on CPU), otherwise it runs.
        Returns (tau K×N_train over dataset indices, phi (K,), the final state).
        """
        self.stats = ReplayStats(self.strategy.describe(), self.total_steps, targets=num_targets)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        T = self.total_steps
        self._store.clear()
        first = self.first_pass_positions()
        if states is not None and all(p in states for p in [*first, T]):
            self._check_states(states, [*first, T])
            for p in first:  # (offloaded states stay on the CPU)
                self._put(p, states[p] if self.offload else move_state(states[p], self.device))
            final = move_state(states[T], self.device)
            self.stats.reused_states = len(first) + 1
        else:
            s0 = self.initial_state()
            self._put(0, s0)
            final = self.forward(s0, 0, T, keep=set(first))
        first_forward = self.stats.forward_steps
        t1 = time.perf_counter()
        self.layout = StateLayout.of(final)
        if self.compile and self._compiled is None:
            self._compiled = CompiledReverseStep(self.model, self.settings, self.layout, chunk=self.compile_chunk)
        phi, cot = self._measure_vjp(measure, final, num_targets)
        self.tau = torch.zeros(num_targets, self.weights.shape[0], dtype=self.dtype, device=self.device)
        self._reverse(0, T, 0, cot)
        self._store.clear()
        self.stats.recomputed_steps = self.stats.forward_steps - first_forward
        self.stats.forward_s = t1 - t0
        self.stats.reverse_s = time.perf_counter() - t1
        if self.device.type == "cuda":
            self.stats.cuda_peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        self.stats.max_rss_bytes = peak_rss_bytes()
        if self._compiled is not None:
            c = self._compiled
            self.stats.compile_s = c.compile_s
            self.stats.vjp_path = (f"compiled ({c.chunk} per call)" if c.error is None
                                   else f"{self.stats.vjp_path} (compiling failed: {c.error})")
        return self.tau, phi.detach(), final

    def _check_states(self, states: Mapping[int, TrainState], positions: list[int]) -> None:
        """Recorded states must be this run's: the step they claim, this replay's dtype and parameter shapes."""
        ref = {n: q for n, q in self.model.named_parameters() if q.requires_grad}  # what a state's params hold
        for p in positions:
            s = states[p]
            if s.step != p:
                raise ValueError(f"states[{p}] is the state after step {s.step}, not {p}")
            for name, t in ref.items():
                got = s.params.get(name)
                if got is None or got.shape != t.shape or got.dtype != t.dtype:
                    raise ValueError(f"states[{p}] does not belong to this run: parameter {name!r} is "
                                     f"{None if got is None else (tuple(got.shape), got.dtype)}, the replay's model has "
                                     f"{(tuple(t.shape), t.dtype)}")

    def first_pass_positions(self) -> list[int]:
        """Steps whose states the first forward pass stores (the final state, step T, is needed too)."""
        return self._needed(0, self.total_steps, 0)

    def _needed(self, a: int, b: int, depth: int) -> list[int]:
        starts = self.strategy.split(a, b, depth)
        return list(range(a, b)) if starts is None else starts

    def _reverse(self, a: int, b: int, depth: int, cot: list[Tensor]) -> list[Tensor]:
        starts = self.strategy.split(a, b, depth)
        needed = list(range(a, b)) if starts is None else starts
        missing = [p for p in needed if p not in self._store]
        if missing:
            self.forward(self._get(a), a, max(missing), keep=set(missing))
        if starts is None:
            for t in range(b - 1, a - 1, -1):
                cot = self._vjp_step(t, self._pop(t), cot)
            return cot
        bounds = starts + [b]
        for j in range(len(starts) - 1, -1, -1):
            cot = self._reverse(bounds[j], bounds[j + 1], depth + 1, cot)
        return cot

    def _put(self, t: int, state: TrainState) -> None:
        self._store[t] = move_state(state, torch.device("cpu")) if self.offload else state
        if not self.stats.state_bytes:
            self.stats.state_bytes = state_nbytes(state)
        self.stats.peak_stored_states = max(self.stats.peak_stored_states, len(self._store))
        self.stats.peak_stored_bytes = self.stats.peak_stored_states * self.stats.state_bytes

    def _get(self, t: int) -> TrainState:
        s = self._store[t]
        return move_state(s, self.device) if self.offload else s

    def _pop(self, t: int) -> TrainState:
        s = self._get(t)
        del self._store[t]
        return s

    def _measure_vjp(self, measure: MeasureState, final: TrainState, k: int) -> tuple[Tensor, list[Tensor]]:
        leaves, s = self.layout.leaves(final)
        self.model.eval()
        try:
            with torch.enable_grad():
                phi = measure(s)
        finally:
            self.model.train()
        if phi.shape != (k,):
            raise ValueError(f"the measurement returned shape {tuple(phi.shape)}, expected ({k},)")
        eye = torch.eye(k, dtype=phi.dtype, device=phi.device)
        grads = self._vjp([phi], leaves, [eye], k)
        return phi, grads

    def _vjp_step(self, t: int, state: TrainState, cot: list[Tensor]) -> list[Tensor]:
        b = self.batch(t)
        grads = None
        if self._compiled is not None:  # None back when compiling failed: the eager VJP below
            with torch.enable_grad():
                grads = self._compiled(state, b.x, b.y, self.weights[b.index], self.parts.schedule.lr(t), cot)
        if grads is None:
            leaves, s = self.layout.leaves(state)
            w = self.weights[b.index].detach().requires_grad_(True)
            with torch.enable_grad():
                new, _ = train_step(self.model, s, b.x, b.y, w, self.parts.schedule.lr(t), self.settings, create_graph=True)
            grads = self._vjp(self.layout.flatten(new), leaves + [w], cot, len(cot[0]) if cot else 0)
        self.tau.index_add_(1, b.index, grads[-1].to(self.tau.dtype))
        self.stats.reverse_steps += 1
        if self.progress is not None:
            self.progress(self.stats.reverse_steps, self.total_steps)
        return grads[:-1]

    def _vjp(self, outputs: list[Tensor], inputs: list[Tensor], cot: list[Tensor], k: int) -> list[Tensor]:
        """Σ_out cot_k · d out / d inputs for each of the K cotangent rows -> one (K, *input) tensor per input."""
        pairs = [(o, c) for o, c in zip(outputs, cot) if o.requires_grad]
        outs, cots = [p[0] for p in pairs], [p[1] for p in pairs]
        grads: list[Tensor | None] | None = None
        if k == 1:
            self.stats.vjp_path = "single"
            grads = [g if g is None else g[None] for g in torch.autograd.grad(
                outs, inputs, [c[0] for c in cots], allow_unused=True)]
        elif self.batched and self.stats.vjp_path in ("", "batched"):
            try:
                # retain the graph so that a failure part-way can still fall back to looped VJPs on it
                grads = list(torch.autograd.grad(outs, inputs, cots, is_grads_batched=True, allow_unused=True,
                                                 retain_graph=True))
                self.stats.vjp_path = "batched"
            except RuntimeError as e:  # an op without a batching rule for its double backward
                self.stats.vjp_path = f"looped (is_grads_batched failed: {str(e).splitlines()[0][:160]})"
        if grads is None:
            if not self.stats.vjp_path:
                self.stats.vjp_path = "looped"
            rows = [torch.autograd.grad(outs, inputs, [c[i] for c in cots], allow_unused=True, retain_graph=i < k - 1)
                    for i in range(k)]
            grads = [None if rows[0][j] is None else torch.stack([r[j] for r in rows]) for j in range(len(inputs))]
        return [torch.zeros((k, *x.shape), dtype=x.dtype, device=x.device) if g is None else g
                for g, x in zip(grads, inputs)]

__all__ = ["MeasureState", "RecordReplayStates", "Replay", "ReplayStats", "StateLayout", "VJP_MODES", "move_state",
           "peak_rss_bytes", "state_nbytes"]
