"""Learning-rate schedules as pure functions of the step, so a replay can recompute any step's rate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def onecycle_factor(step: int, total_steps: int, pct_start: float, anneal: str, div_factor: float,
                    final_div_factor: float) -> float:
    """torch.optim.lr_scheduler.OneCycleLR (two phases), as a multiplier of max_lr."""
    initial = 1.0 / div_factor
    final = initial / final_div_factor
    end1 = float(pct_start * total_steps) - 1
    end2 = total_steps - 1
    interp = _cos_anneal if anneal == "cos" else _linear_anneal
    if step <= end1:
        return interp(initial, 1.0, step / end1 if end1 > 0 else 1.0)
    return interp(1.0, final, min(1.0, (step - end1) / (end2 - end1)) if end2 > end1 else 1.0)


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _linear_anneal(start: float, end: float, pct: float) -> float:
    return (end - start) * pct + start


@dataclass
class Schedule:
    """Learning rate at optimizer step ``step`` (0-based) = base_lr × warm-up × schedule × plateau factor.

    ``kind``: constant | onecycle | cosine | step | multistep | exponential | plateau. Epoch-based kinds
    change at epoch boundaries; onecycle and cosine move every step (cosine per epoch if ``interval``
    is "epoch"). The plateau factor is the only state, changed by ``observe(metric)`` once per epoch.
    """

    kind: str
    base_lr: float
    steps_per_epoch: int
    epochs: int
    warmup_steps: int = 0
    options: dict = field(default_factory=dict)
    plateau_factor: float = 1.0
    _best: float | None = None
    _bad_epochs: int = 0
    _cooldown: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr(self, step: int) -> float:
        o = self.options
        epoch = step // self.steps_per_epoch
        if self.kind in ("constant", "plateau"):
            f = 1.0
        elif self.kind == "onecycle":
            f = onecycle_factor(step, self.total_steps, o["pct_start"], o["anneal_strategy"], o["div_factor"], o["final_div_factor"])
        elif self.kind == "cosine":
            t, T = (epoch, self.epochs) if o.get("interval") == "epoch" else (step, self.total_steps)
            eta = o.get("eta_min", 0.0) / self.base_lr
            f = eta + (1 - eta) * (1 + math.cos(math.pi * min(t, T) / T)) / 2
        elif self.kind == "step":
            f = o["gamma"] ** (epoch // o["step_size"])
        elif self.kind == "multistep":
            f = o["gamma"] ** sum(1 for m in o["milestones"] if epoch >= m)
        elif self.kind == "exponential":
            f = o["gamma"] ** epoch
        else:
            raise ValueError(f"unknown schedule {self.kind!r}")
        if self.warmup_steps and step < self.warmup_steps:
            f *= (step + 1) / self.warmup_steps
        return self.base_lr * f * self.plateau_factor

    def observe(self, value: float) -> bool:
        """Feed the plateau metric at an epoch end; returns True when the rate was reduced."""
        if self.kind != "plateau":
            return False
        o = self.options
        better = (lambda a, b: a < b * (1 - o["threshold"])) if o["mode"] == "min" else (lambda a, b: a > b * (1 + o["threshold"]))
        if self._best is None or better(value, self._best):
            self._best, self._bad_epochs = value, 0
        else:
            self._bad_epochs += 1
        if self._cooldown > 0:
            self._cooldown -= 1
            self._bad_epochs = 0
        if self._bad_epochs > o["patience"]:
            new = max(self.plateau_factor * o["factor"], o["min_lr"] / self.base_lr)
            reduced = new < self.plateau_factor
            self.plateau_factor, self._cooldown, self._bad_epochs = new, o["cooldown"], 0
            return reduced
        return False

    def state_dict(self) -> dict:
        return {"plateau_factor": self.plateau_factor, "best": self._best, "bad_epochs": self._bad_epochs, "cooldown": self._cooldown}

    def load_state_dict(self, d: dict) -> None:
        self.plateau_factor, self._best = d["plateau_factor"], d["best"]
        self._bad_epochs, self._cooldown = d["bad_epochs"], d["cooldown"]
