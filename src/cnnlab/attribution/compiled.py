"""A reversed training step compiled with torch.compile (inductor), for long MAGIC replays.

Eagerly, reversing a step runs hundreds of small kernels: the double backward of BatchNorm and of
GELU are chains of elementwise ops, each reading and writing whole activations. Compiled, they fuse.
The function compiled is still the engine's own ``train_step`` (traced through ``torch.func.vjp``,
with the ``func`` differentiation path), so the replay keeps one definition of the step; results
differ from the eager VJP only by float rounding. Compiling costs minutes once per batch shape and
number of cotangents (seconds when inductor's on-disk cache holds the graph), so it pays off for long runs.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Sequence

import torch
from torch import Tensor, nn

from cnnlab.engine.step import StepSettings, TrainState, self_recording_bn, train_step

log = logging.getLogger("cnnlab.attribution")


class CompiledReverseStep:
    """VJPs of one training step for up to ``chunk`` cotangents per compiled call.

    ``layout`` is the replay's :class:`~cnnlab.attribution.replay.StateLayout`. The K cotangents of a
    step go through in chunks of at most ``chunk``: within a chunk the recomputed step is shared, and
    each distinct (batch shape, chunk size) compiles once. If compiling fails (an op dynamo cannot
    trace, no C++ compiler), :attr:`error` says why and callers fall back to the eager VJP.
    """

    def __init__(self, model: nn.Module, settings: StepSettings, layout, *, chunk: int = 4):
        # (``chunk`` >= 1 is checked where users set it: Replay's ``compile_chunk``)
        self.model = self_recording_bn(copy.deepcopy(model))  # a private copy: the user's model is not patched
        self.settings = settings
        self.layout = layout
        self.chunk = chunk
        self.error: str | None = None
        self.compile_s = 0.0  # wall time of the calls that compiled (each includes one execution)
        self._seen: set[tuple] = set()
        self._fn = torch.compile(self._pullbacks, dynamic=False, fullgraph=True)

    def _pullbacks(self, flat: list[Tensor], like: TrainState, x: Tensor, y: Tensor, w: Tensor, lr: Tensor,
                   cots: list[list[Tensor]]) -> list[tuple[list[Tensor], Tensor]]:
        def step(flat: list[Tensor], w: Tensor) -> list[Tensor]:
            new, _ = train_step(self.model, self.layout.rebuild(list(flat), like), x, y, w, lr, self.settings,
                                create_graph=True, differentiation="func")
            return self.layout.flatten(new)

        pullback = torch.func.vjp(step, flat, w)[1]
        return [pullback(c) for c in cots]

    def __call__(self, state: TrainState, x: Tensor, y: Tensor, w: Tensor, lr: float,
                 cot: Sequence[Tensor]) -> list[Tensor] | None:
        """(K, *shape) cotangents of the state before the step, then (K, B) for ``w``; None if compiling failed."""
        if self.error is not None:
            return None
        flat = [t.detach() for t in self.layout.flatten(state)]
        # constants of the state (integer buffers, the step counter) enter as tensors, so that the graph is
        # not specialised to the step; every float slot is replaced by ``flat`` inside the trace
        like = TrainState({}, {n: b for n, b in state.buffers.items() if not b.is_floating_point()},
                          {n: {} for n in state.opt_state},
                          torch.tensor(state.step, device=x.device))  # type: ignore[arg-type]  # a tensor on purpose
        lr_t = torch.tensor(lr, dtype=w.dtype, device=w.device)
        k = cot[0].shape[0]
        rows: list[tuple[list[Tensor], Tensor]] = []
        for a in range(0, k, self.chunk):
            chunk = [[c[i] for c in cot] for i in range(a, min(k, a + self.chunk))]
            key = (tuple(x.shape), len(chunk))
            t0 = time.perf_counter()
            try:
                rows += self._fn(flat, like, x, y, w.detach(), lr_t, chunk)
            except Exception as e:  # noqa: BLE001 - any tracing or backend failure: fall back to eager VJPs
                self.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
                log.warning("MAGIC: compiling the reversed step failed, using the eager VJP (%s)", self.error)
                return None
            if key not in self._seen:
                self._seen.add(key)
                self.compile_s += time.perf_counter() - t0
        n = len(flat)
        return [torch.stack([r[0][j] for r in rows]) for j in range(n)] + [torch.stack([r[1] for r in rows])]
