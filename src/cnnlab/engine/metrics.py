"""Classification metrics computed on device from logits: loss, top-k, confusion matrix, macro P/R/F1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class EvalAccumulator:
    """Accumulates loss, top-1/top-5 hits and the confusion matrix over batches."""

    num_classes: int
    loss_sum: float = 0.0
    top1: int = 0
    top5: int = 0
    count: int = 0
    confusion: Tensor | None = None
    loss_fn: Optional[Callable[[Tensor, Tensor], Tensor]] = None  # a batch-mean loss; default cross-entropy

    def update(self, logits: Tensor, y: Tensor) -> None:
        if self.loss_fn is None:
            self.loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        else:
            self.loss_sum += float(self.loss_fn(logits.float(), y)) * int(y.shape[0])
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        self.top1 += int((topk[:, 0] == y).sum())
        self.top5 += int((topk == y[:, None]).any(1).sum())
        self.count += int(y.shape[0])
        cm = confusion_matrix(topk[:, 0], y, self.num_classes).cpu()
        self.confusion = cm if self.confusion is None else self.confusion + cm

    def summary(self, prefix: str) -> dict[str, float]:
        if self.count == 0 or self.confusion is None:
            raise ValueError("no examples were evaluated")
        out = {f"{prefix}_loss": self.loss_sum / self.count, f"{prefix}_acc": self.top1 / self.count,
               f"{prefix}_top5": self.top5 / self.count}
        out.update({f"{prefix}_{k}": v for k, v in macro_prf(self.confusion).items()})
        return out


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """C[i, j] = number of examples of true class i predicted as j."""
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def macro_prf(cm: Tensor) -> dict[str, float]:
    """Macro-averaged precision, recall and F1 (classes with no support or no predictions count as 0)."""
    cm = cm.double()
    tp = cm.diag()
    pred = cm.sum(0)
    true = cm.sum(1)
    precision = torch.where(pred > 0, tp / pred.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(true > 0, tp / true.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), torch.zeros_like(tp))
    return {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())}
