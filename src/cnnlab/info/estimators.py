"""Mutual information between labels and predictions, in bits: plug-in + Miller-Madow, bootstrap intervals.

For a contingency table of N pairs (y, ŷ), the plug-in estimate is
``I = sum p(y,ŷ) log2 p(y,ŷ) / (p(y) p(ŷ))``. It is biased upwards by about
``(m_yŷ - m_y - m_ŷ + 1) / (2 N ln 2)`` bits, where m counts the non-empty cells (joint) and the
non-empty rows/columns (marginals) — the Miller-Madow correction applied to H(Y) + H(Ŷ) - H(Y,Ŷ).
The corrected estimate subtracts that term. Confidence intervals are percentile bootstrap intervals
over examples (seeded). Everything is in bits (log base 2), unlike sklearn's ``mutual_info_score`` (nats).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from cnnlab.utils.seeding import make_generator

LN2 = math.log(2.0)
CORRECTIONS = ("miller-madow", "none")


def _as_codes(values: torch.Tensor | np.ndarray | Sequence[int], name: str) -> np.ndarray:
    a = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0):
        raise ValueError(f"{name} must hold non-negative integer class indices")
    return a.astype(np.int64)


def contingency(y: torch.Tensor | np.ndarray | Sequence[int], yhat: torch.Tensor | np.ndarray | Sequence[int],
                num_classes: int | None = None) -> np.ndarray:
    """K×K count table ``counts[y, ŷ]`` (K = ``num_classes`` or 1 + the largest class seen)."""
    a, b = _as_codes(y, "y"), _as_codes(yhat, "yhat")
    if a.shape != b.shape:
        raise ValueError(f"y and yhat must have the same length, got {a.size} and {b.size}")
    k = num_classes if num_classes is not None else int(max(a.max(initial=0), b.max(initial=0))) + 1
    if a.size and max(a.max(), b.max()) >= k:
        raise ValueError(f"class index {int(max(a.max(), b.max()))} >= num_classes={k}")
    return np.bincount(a * k + b, minlength=k * k).reshape(k, k)


def plugin_mi(counts: np.ndarray) -> np.ndarray | float:
    """Plug-in MI in bits of a K×K table, or of a batch B×K×K (returns B values)."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.sum(axis=(-2, -1), keepdims=True)
    if np.any(n == 0):
        raise ValueError("cannot estimate MI from zero examples")
    pxy = c / n
    px = pxy.sum(axis=-1, keepdims=True)
    py = pxy.sum(axis=-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pxy > 0, pxy * np.log2(pxy / (px * py)), 0.0)
    out = terms.sum(axis=(-2, -1))
    return float(out) if out.ndim == 0 else out


def miller_madow_term(counts: np.ndarray) -> np.ndarray | float:
    """The plug-in bias estimate ``(m_xy - m_x - m_y + 1) / (2 N ln 2)`` bits (subtracted by the correction)."""
    c = np.asarray(counts)
    n = c.sum(axis=(-2, -1)).astype(np.float64)
    m_xy = (c > 0).sum(axis=(-2, -1))
    m_x = (c.sum(axis=-1) > 0).sum(axis=-1)
    m_y = (c.sum(axis=-2) > 0).sum(axis=-1)
    out = (m_xy - m_x - m_y + 1) / (2.0 * n * LN2)
    return float(out) if np.ndim(out) == 0 else out


def mi_from_counts(counts: np.ndarray, correction: str = "miller-madow") -> np.ndarray | float:
    """MI in bits of a table (or batch of tables), bias-corrected unless ``correction="none"``."""
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    mi = plugin_mi(counts)
    return mi - miller_madow_term(counts) if correction == "miller-madow" else mi


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a bootstrap percentile interval."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def bootstrap_indices(n: int, n_boot: int, seed: int, stream: str) -> np.ndarray:
    """``n_boot`` × ``n`` resampling indices (with replacement) from the seed path ``(seed, stream)``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    gen = make_generator(seed, stream)
    return torch.randint(0, n, (n_boot, n), generator=gen).numpy()


def _boot_counts(codes: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Per-bootstrap contingency tables B×K×K from joint codes y*K+ŷ (one bincount for all resamples)."""
    step = max(1, 4_000_000 // (k * k))  # bound the bincount size for many classes
    parts = []
    for start in range(0, idx.shape[0], step):
        chunk = idx[start:start + step]
        b = chunk.shape[0]
        flat = codes[chunk] + (np.arange(b, dtype=np.int64) * (k * k))[:, None]
        parts.append(np.bincount(flat.ravel(), minlength=b * k * k).reshape(b, k, k))
    return np.concatenate(parts)


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def mutual_information(y, yhat, *, num_classes: int | None = None, correction: str = "miller-madow",
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """MI(Y; Ŷ) in bits with a percentile bootstrap interval (resampling examples)."""
    counts = contingency(y, yhat, num_classes)
    k = counts.shape[0]
    value = float(mi_from_counts(counts, correction))
    a, b = _as_codes(y, "y"), _as_codes(yhat, "yhat")
    idx = bootstrap_indices(a.size, n_boot, seed, "mi/bootstrap")
    boots = mi_from_counts(_boot_counts(a * k + b, idx, k), correction)
    return Estimate(value, *_interval(np.asarray(boots), confidence))


def paired_masking_stats(y, yhat_ref, yhat_masked, *, num_classes: int, correction: str = "miller-madow",
                         n_boot: int = 1000, confidence: float = 0.95, seed: int = 0, stream: str = "mi/bootstrap"
                         ) -> dict[str, Estimate]:
    """MI and accuracy of unmasked predictions vs the mean over masks, with paired bootstrap intervals.

    ``yhat_masked`` is M×N (one row per mask). Every bootstrap resample of the N examples is shared by
    the unmasked and all masked predictions, so the interval of ``mi_diff`` = MI(unmasked) - mean MI(masked)
    reflects only the variation of the examples, not independent noise in two estimates.
    """
    a = _as_codes(y, "y")
    ref = _as_codes(yhat_ref, "yhat_ref")
    masked = yhat_masked.detach().cpu().numpy() if isinstance(yhat_masked, torch.Tensor) else np.asarray(yhat_masked)
    if masked.ndim != 2 or masked.shape[0] < 1:
        raise ValueError(f"yhat_masked must be M×N (one row per mask, M >= 1), got shape {masked.shape}")
    masked = np.stack([_as_codes(r, "yhat_masked row") for r in masked])
    if masked.shape[1] != a.size or ref.size != a.size:
        raise ValueError(f"predictions must cover the {a.size} examples")
    k = num_classes
    idx = bootstrap_indices(a.size, n_boot, seed, stream)

    def mi_point_and_boot(pred: np.ndarray) -> tuple[float, np.ndarray]:
        codes = a * k + pred
        point = float(mi_from_counts(contingency(a, pred, k), correction))
        return point, np.asarray(mi_from_counts(_boot_counts(codes, idx, k), correction))

    def acc_point_and_boot(pred: np.ndarray) -> tuple[float, np.ndarray]:
        hit = (pred == a).astype(np.float64)
        return float(hit.mean()), hit[idx].mean(axis=1)

    mi_ref, mi_ref_b = mi_point_and_boot(ref)
    acc_ref, acc_ref_b = acc_point_and_boot(ref)
    mi_m = [mi_point_and_boot(r) for r in masked]
    acc_m = [acc_point_and_boot(r) for r in masked]
    mi_mask = float(np.mean([p for p, _ in mi_m]))
    mi_mask_b = np.mean([b for _, b in mi_m], axis=0)
    acc_mask = float(np.mean([p for p, _ in acc_m]))
    acc_mask_b = np.mean([b for _, b in acc_m], axis=0)
    return {
        "mi_unmasked": Estimate(mi_ref, *_interval(mi_ref_b, confidence)),
        "mi_masked": Estimate(mi_mask, *_interval(mi_mask_b, confidence)),
        "mi_diff": Estimate(mi_ref - mi_mask, *_interval(mi_ref_b - mi_mask_b, confidence)),
        "acc_unmasked": Estimate(acc_ref, *_interval(acc_ref_b, confidence)),
        "acc_masked": Estimate(acc_mask, *_interval(acc_mask_b, confidence)),
        "acc_drop": Estimate(acc_ref - acc_mask, *_interval(acc_ref_b - acc_mask_b, confidence)),
    }


def entropy_bits(p: Sequence[float]) -> float:
    """Shannon entropy in bits of a probability vector (for closed-form references)."""
    q = np.asarray(p, dtype=np.float64)
    q = q[q > 0]
    return float(-(q * np.log2(q)).sum())


__all__ = ["CORRECTIONS", "Estimate", "LN2", "bootstrap_indices", "contingency", "entropy_bits", "mi_from_counts",
           "miller_madow_term", "mutual_information", "paired_masking_stats", "plugin_mi"]
