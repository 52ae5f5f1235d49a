"""Baseline attribution methods, scored by LDS beside MAGIC on the same subset models.

All return :class:`cnnlab.attribution.scores.Scores` in MAGIC's convention (tau_i approximates
d phi / d w_i, so removing S changes phi by about -sum_S tau_i):

- ``tracin``: gradient dot product at the final checkpoint, tau_i = -grad l_i . grad phi (one SGD step
  on example i moves phi by -lr grad phi . grad l_i; the positive scale does not matter for LDS).
- ``trak``: TRAK (Park et al. 2023) through the optional ``traker`` package (extra ``attribution``), one
  checkpoint, random projections on the CPU. TRAK scores the target's margin, so for the loss
  measurement the sign is flipped.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from cnnlab.attribution.measures import get_measurement
from cnnlab.attribution.scores import Scores
from cnnlab.engine.setup import RunParts
from cnnlab.engine.step import TrainState, per_example_loss


def _eval_inputs(parts: RunParts, split: str, idx: Tensor) -> tuple[Tensor, Tensor]:
    data = parts.dataset.train if split == "train" else parts.dataset.test
    x = parts.eval_images(data.images[idx], 0, len(idx))
    return x, data.labels[idx].to(parts.device)


def _flat_grads(fn: Callable, params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    g = vmap(grad(fn), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([v.reshape(v.shape[0], -1) for v in g.values()], dim=1)


def tracin_scores(parts: RunParts, state: TrainState, train_indices: Tensor, targets: Tensor,
                  measure: str = "loss", chunk: int = 256) -> Scores:
    """TracIn at the final checkpoint: -(per-example train-loss gradient) . (measurement gradient), eval mode."""
    m = get_measurement(measure)
    model = parts.model.eval()
    params = {n: p.detach() for n, p in state.params.items()}
    consts = {**parts.settings.frozen, **state.buffers}
    smoothing = parts.settings.label_smoothing

    def train_loss(p, x, y):
        logits = functional_call(model, ({**p, **consts}), (x[None],))
        return per_example_loss(logits, y[None], smoothing)[0]

    def phi(p, x, y):
        return m(functional_call(model, ({**p, **consts}), (x[None],)), y[None])[0]

    try:
        xt, yt = _eval_inputs(parts, "test", targets)
        g_test = _flat_grads(phi, params, xt, yt)  # K × P
        out = []
        for start in range(0, train_indices.numel(), chunk):
            idx = train_indices[start:start + chunk]
            x, y = _eval_inputs(parts, "train", idx)
            out.append(-(_flat_grads(train_loss, params, x, y) @ g_test.T))
    finally:
        model.train()
    return Scores(torch.cat(out).double().cpu(), train_indices.clone(), targets.clone(), m.name, "tracin", m.higher_is_better)


def trak_available() -> bool:
    try:
        import trak  # noqa: F401
    except ImportError:
        return False
    return True


def trak_scores(parts: RunParts, state: TrainState, train_indices: Tensor, targets: Tensor, measure: str = "loss",
                *, work_dir: str | Path, proj_dim: int = 512, chunk: int = 256, seed: int = 0) -> Scores:
    """TRAK scores from the final checkpoint (``pip install traker`` / the ``attribution`` extra)."""
    try:
        from trak import TRAKer
    except ImportError:
        raise ImportError("TRAK needs the optional package traker: pip install 'cnnlab[attribution]' (or traker)") from None

    m = get_measurement(measure)
    if m.name not in ("loss", "margin"):
        raise ValueError(f"TRAK scores the correct-class margin; it cannot stand in for measurement {m.name!r}")
    work_dir = Path(work_dir)
    if work_dir.exists():
        shutil.rmtree(work_dir)
    model = parts.model
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state.params:
                p.copy_(state.params[n])
        for n, b in model.named_buffers():
            b.copy_(state.buffers[n])
    model.eval()
    device = str(parts.device) if parts.device.type != "cpu" else "cpu"
    # X^T X of the projected features is inverted: keep proj_dim below the number of training examples
    # where possible, but above 100 (traker 0.3's BasicProjector loses its matrix for a single block <= 100)
    proj_dim = int(max(128, min(proj_dim, train_indices.numel() // 2)))
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # traker's progress bars
            raw = _run_traker(TRAKer, parts, model, train_indices, targets, work_dir, device, proj_dim, chunk, seed)
    finally:
        model.train()
    sign = 1.0 if m.name == "margin" else -1.0
    return Scores(sign * raw, train_indices.clone(), targets.clone(), m.name, "trak", m.higher_is_better)


def _run_traker(TRAKer, parts, model, train_indices, targets, work_dir, device, proj_dim, chunk, seed) -> Tensor:
    import logging

    traker = TRAKer(model=model, task="image_classification", train_set_size=train_indices.numel(),
                    save_dir=str(work_dir), load_from_save_dir=True, device=device, proj_dim=proj_dim,
                    use_half_precision=False, logging_level=logging.WARNING, projector_seed=seed)
    ckpt = {k: v.detach().clone() for k, v in model.state_dict().items()}
    traker.load_checkpoint(ckpt, model_id=0)
    for start in range(0, train_indices.numel(), chunk):
        x, y = _eval_inputs(parts, "train", train_indices[start:start + chunk])
        traker.featurize(batch=(x, y), num_samples=x.shape[0])
    traker.finalize_features()
    traker.start_scoring_checkpoint(exp_name="targets", checkpoint=ckpt, model_id=0, num_targets=targets.numel())
    xt, yt = _eval_inputs(parts, "test", targets)
    traker.score(batch=(xt, yt), num_samples=xt.shape[0])
    return torch.as_tensor(traker.finalize_scores(exp_name="targets"), dtype=torch.float64)


BASELINES = {"tracin": tracin_scores, "trak": trak_scores}
