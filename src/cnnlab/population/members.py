"""Population training in this process: every epoch of a group of members with one step backend."""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from cnnlab.population.backends import Stepper, make_stepper, member_losses
from cnnlab.population.checkpoints import load_checkpoint, save_checkpoint
from cnnlab.population.plan import EvalSet, ProgressFn, TrainPlan
from cnnlab.population.state import PopulationState


def train_members(plan: TrainPlan, backend: str, ids: Sequence[int], progress: ProgressFn | None) -> tuple[PopulationState, list[dict]]:
    """Train members ``ids`` of the plan in this process with the ``vmap`` or ``loop`` stepper; one history
    record per epoch (per-member lists), checkpoints when the plan has a directory (resumed from there)."""
    start, state, history = load_checkpoint(plan, ids)
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
            record.update(evaluate_members(stepper, plan.eval_set, plan.device))
        history.append(record)
        if plan.checkpoint_dir is not None and ((epoch + 1) % plan.checkpoint_every == 0 or epoch + 1 == plan.epochs):
            save_checkpoint(plan, ids, epoch + 1, stepper.state(), history)
    return stepper.state(), history


@torch.no_grad()
def evaluate_members(stepper: Stepper, eval_set: EvalSet, device: torch.device) -> dict[str, list[float]]:
    """Test loss and accuracy of every member of ``stepper`` on ``eval_set`` (eval mode)."""
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
