"""Masking + mutual information for one trained model: MI(Y; Ŷ) unmasked vs first-layer-masked, per split.

Design (fixes to the prior code's flaws, see the module docs of ``estimators`` and ``masking``):
a fixed number of evaluation examples per split (a seeded subset, independent of any training batch
size), eval mode and no augmentation on both the train and the test split, fixed keep fractions with
a fixed number of seeded masks, Miller-Madow-corrected MI in bits with paired bootstrap intervals, the
plain accuracy drop beside the MI drop, and the generalisation gap from clean eval-mode accuracies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from cnnlab.engine.analysis_run import AnalysisRun
from cnnlab.info.estimators import CORRECTIONS, paired_masking_stats
from cnnlab.info.masking import activation_shape, draw_masks, masked_output
from cnnlab.models.registry import masking_layer
from cnnlab.utils.seeding import make_generator

SPLITS = ("train", "test")
_CACHE_BYTES = 512 * 2**20  # hold transformed evaluation inputs up to this size


@dataclass(frozen=True)
class MIConfig:
    """Settings of the masking-MI analysis (stored with every result; a change invalidates a cached result)."""

    keeps: tuple[float, ...] = (0.25, 0.5, 0.75)
    n_masks: int = 10
    n_examples: int = 2000
    mask_seed: int = 0
    seed: int = 0  # example subset and bootstrap resamples
    n_boot: int = 1000
    confidence: float = 0.95
    correction: str = "miller-madow"
    batch_size: int = 500
    gap_examples: int | None = None  # examples per split for the accuracy gap (None: the whole split)
    splits: tuple[str, ...] = field(default=SPLITS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keeps", tuple(float(k) for k in self.keeps))
        object.__setattr__(self, "splits", tuple(self.splits))
        if not self.keeps or any(not 0.0 < k < 1.0 for k in self.keeps):
            raise ValueError(f"keeps: every keep fraction must be in (0, 1), got {list(self.keeps)}")
        for name in ("n_masks", "n_examples", "n_boot", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gap_examples is not None and self.gap_examples < 1:
            raise ValueError(f"gap_examples must be >= 1 or None, got {self.gap_examples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {self.correction!r}")
        bad = [s for s in self.splits if s not in SPLITS]
        if bad or not self.splits:
            raise ValueError(f"splits must be a non-empty subset of {', '.join(SPLITS)}, got {list(self.splits)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keeps"] = list(self.keeps)
        d["splits"] = list(self.splits)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MIConfig":
        return cls(**{**d, "keeps": tuple(d["keeps"]), "splits": tuple(d.get("splits", SPLITS))})


def select_examples(n_total: int, n: int, seed: int, split: str) -> torch.Tensor:
    """Sorted indices of ``min(n, n_total)`` examples: a seeded random subset (all when n >= n_total)."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=make_generator(seed, f"mi/examples/{split}"))[:n].sort().values


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
            batch_size: int = 500, mask: torch.Tensor | None = None, layer: nn.Module | None = None) -> torch.Tensor:
    """Eval-mode argmax predictions (CPU int64) of ``images`` (uint8 through ``transform``, or ready inputs
    when ``transform`` is None); with ``mask``, the masking layer's output is masked."""
    if model.training:
        raise ValueError("predict() needs the model in eval mode (call model.eval())")
    tf = transform if transform is not None else (lambda t: t)

    def run() -> torch.Tensor:
        return torch.cat([model(tf(images[i:i + batch_size])).argmax(dim=1).cpu()
                          for i in range(0, images.shape[0], batch_size)])

    if mask is None:
        return run()
    with masked_output(layer if layer is not None else masking_layer(model), mask):
        return run()


def clean_accuracy(run: AnalysisRun, split: str, n: int | None = None, seed: int = 0, batch_size: int = 500) -> tuple[float, int]:
    """Eval-mode accuracy without augmentation on ``split`` (a seeded subset of ``n`` examples, or all)."""
    data = run.split(split)
    idx = select_examples(len(data), n if n is not None else len(data), seed, f"gap/{split}")
    pred = predict(run.model, data.images[idx], run.transform, batch_size)
    return float((pred == data.labels[idx]).float().mean()), int(idx.numel())


def masks_per_split(cfg: MIConfig) -> int:
    """Masked evaluations of one split: the unit ``progress`` counts in (len(keeps) x n_masks)."""
    return len(cfg.keeps) * cfg.n_masks


def masking_mi(run: AnalysisRun, split: str, cfg: MIConfig, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """MI / accuracy unmasked vs masked on ``cfg.n_examples`` examples of ``split``, per keep fraction.

    ``progress(1)`` is called after each masked evaluation (``masks_per_split(cfg)`` of them)."""
    data = run.split(split)
    idx = select_examples(len(data), cfg.n_examples, cfg.seed, split)
    images, labels = data.images[idx], data.labels[idx]
    layer = masking_layer(run.model)
    shape = activation_shape(run.model, run.transform(images[:1]), layer)
    # Transform once and reuse for all masks when the inputs are small enough to hold.
    out_numel = images.shape[0] * int(torch.tensor(run.transform(images[:1]).shape[1:]).prod())
    inputs, tf = (run.transform(images), None) if out_numel * 4 <= _CACHE_BYTES else (images, run.transform)
    ref = predict(run.model, inputs, tf, cfg.batch_size)
    num_classes = run.dataset.num_classes
    per_keep = []
    for keep in cfg.keeps:
        masks = draw_masks(shape, keep, cfg.n_masks, cfg.mask_seed)
        per_mask = []
        for m in masks:
            per_mask.append(predict(run.model, inputs, tf, cfg.batch_size, mask=m, layer=layer))
            if progress is not None:
                progress(1)
        preds = torch.stack(per_mask)
        stats = paired_masking_stats(labels, ref, preds, num_classes=num_classes, correction=cfg.correction,
                                     n_boot=cfg.n_boot, confidence=cfg.confidence, seed=cfg.seed,
                                     stream=f"mi/bootstrap/{split}")
        per_keep.append({
            "keep": keep, **{k: v.to_dict() for k, v in stats.items()},
            "acc_masked_per_mask": [float((p == labels).float().mean()) for p in preds],
        })
    return {"split": split, "n_examples": int(idx.numel()), "split_size": len(data), "mask_shape": list(shape),
            "keeps": per_keep}


def mi_report(run: AnalysisRun, cfg: MIConfig | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The full analysis of one model: masking MI per split plus clean accuracies and the generalisation gap.

    ``progress`` as in :func:`masking_mi`, over all splits (``len(cfg.splits) * masks_per_split(cfg)`` calls)."""
    cfg = cfg or MIConfig()
    run.model.eval()
    splits = {s: masking_mi(run, s, cfg, progress) for s in cfg.splits}
    acc: dict[str, Any] = {}
    if set(cfg.splits) == set(SPLITS):
        tr, n_tr = clean_accuracy(run, "train", cfg.gap_examples, cfg.seed, cfg.batch_size)
        te, n_te = clean_accuracy(run, "test", cfg.gap_examples, cfg.seed, cfg.batch_size)
        acc = {"train_clean": tr, "test": te, "gen_gap": tr - te, "n_train": n_tr, "n_test": n_te}
    return {"version": 1, "units": "bits", "estimator": f"plug-in, {cfg.correction} correction, percentile bootstrap",
            "mask_policy": "exactly round(keep*C*H*W) elements kept; one mask for all images; seed path "
                           "derive_seed(mask_seed, 'mask/{keep}/{k}')",
            "config": cfg.to_dict(), "num_classes": run.dataset.num_classes, "resolution": run.resolution,
            "splits": splits, "accuracy": acc}


__all__ = ["MIConfig", "SPLITS", "clean_accuracy", "masking_mi", "masks_per_split", "mi_report", "predict", "select_examples"]
