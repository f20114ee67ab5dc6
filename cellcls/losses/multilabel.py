"""Multilabel losses: (logits (N, C) float, targets (N, C) float in [0, 1]) -> scalar tensor.

The 2019 HPA winner's losses (bestfitting, CellProfiling/HPA-competition-solutions), re-derived from
their definitions, plus torch's BCE. Every loss here returns ``logits.sum() * 0`` for an empty batch
(N = 0): a zero that keeps the graph, where a plain mean would give NaN.

Formulas (x = logit, t = target, p = sigmoid(x), log p = logsigmoid(x), log(1 - p) = logsigmoid(-x)):

- ``bce``: mean over all N x C terms of -[w t log p + (1 - t) log(1 - p)], w = pos_weight[c] (default 1).
- ``focal``: (1/N) sum_n sum_c of  -[t (1 - p)^g log p + (1 - t) p^g log(1 - p)],  g = gamma.
  For hard targets this is the 2019 focal loss term for term (their BCE in max_val/log-exp form times
  exp(g * logsigmoid(-x (2t - 1)))). For soft targets it is the expected focal loss of a label drawn
  as Bernoulli(t): linear in t like BCE, and equal to BCE at g = 0. (The 2019 code applied literally to
  soft targets would weight every term by sigmoid(x (1 - 2t))^g: constant 2^-g at t = 0.5, so no
  focusing; that reading is not used.) Like any focal loss it is not a proper scoring rule: for a soft
  t the minimising p lies between t and 1/2, not at t. Computed from logsigmoid only: finite value and
  gradient for any finite logit and any gamma >= 0.
- ``lovasz``: symmetric Lovasz hinge, the labels of each class over the batch taken as the pixels of
  one binary image: (hinge(x, y) + hinge(-x, 1 - y)) / 2, each hinge averaged over classes. Targets
  are binarised as y = (t >= 0.5) (soft targets are thresholded, not refused).
- ``hard_log``: per class, BCE (mean) over all positives (t > 0) and the k highest-logit negatives
  (t <= 0), k = min(n_neg, n_pos + max(2, floor(0.5 n_neg)), floor(0.7 n_neg) + 2); mean over classes.
  As in the 2019 code a soft target t > 0 is a positive, scored by BCE against t; floor(0.7 n) is that
  of the floating-point product (see :func:`hard_negative_count`).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LossError
from ._checks import check_multilabel, check_number
from ._registry import LOSSES

__all__ = [
    "FOCAL_GAMMA",
    "HARD_NEG_MORE",
    "HARD_NEG_LEAST_RATIO",
    "HARD_NEG_MAX_RATIO",
    "LOVASZ_THRESHOLD",
    "BCELoss",
    "FocalLoss",
    "SymmetricLovaszLoss",
    "HardLogLoss",
    "focal_loss",
    "symmetric_lovasz_hinge",
    "lovasz_hinge",
    "hard_log_loss",
    "hard_negative_count",
]

#: Focusing exponent of the 2019 focal loss.
FOCAL_GAMMA = 2.0
#: Hard-example mining of the 2019 hard log loss: k = min(n_neg, n_pos + max(MORE, floor(LEAST n_neg)),
#: floor(MAX n_neg) + MORE).
HARD_NEG_MORE = 2
HARD_NEG_LEAST_RATIO = 0.5
HARD_NEG_MAX_RATIO = 0.7
#: Soft targets at or above this are positives for the Lovasz hinge.
LOVASZ_THRESHOLD = 0.5


def _empty(logits: torch.Tensor) -> torch.Tensor:
    """The loss of an empty batch: 0, still attached to the graph."""
    return logits.sum() * 0.0


# ----------------------------------------------------------------------------------------------- pure maths


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Focal loss summed over classes, mean over the batch (see the module docstring for the formula).

    Parameters
    ----------
    logits, targets : (N, C) tensors of one floating dtype; targets in [0, 1]
    gamma : float >= 0

    Returns
    -------
    () tensor
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    log_p = F.logsigmoid(logits)
    log_q = F.logsigmoid(-logits)  # log(1 - p), exact for large x where 1 - sigmoid(x) rounds to 0
    per_term = -(targets * torch.exp(gamma * log_q) * log_p + (1.0 - targets) * torch.exp(gamma * log_p) * log_q)
    return per_term.sum(dim=1).mean()


def lovasz_hinge(errors_sorted: torch.Tensor, labels_sorted: torch.Tensor) -> torch.Tensor:
    """Lovasz hinge of each column, given its errors sorted descending and the labels in that order.

    Parameters
    ----------
    errors_sorted : (N, C) floating tensor
        Hinge errors 1 - x (2y - 1), each column sorted in descending order.
    labels_sorted : (N, C) tensor of 0/1, same dtype
        The binary labels permuted like the errors.

    Returns
    -------
    (C,) tensor
        dot(relu(errors), discrete gradient of the Jaccard loss along the order) per column. A column with
        no positives gets weights (1, 0, 0, ...): relu of its largest error.
    """
    positives = labels_sorted.sum(dim=0, keepdim=True)
    intersection = positives - labels_sorted.cumsum(dim=0)
    union = positives + (1.0 - labels_sorted).cumsum(dim=0)  # >= 1 everywhere: never divides by 0
    jaccard = 1.0 - intersection / union
    weights = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
    return (F.relu(errors_sorted) * weights).sum(dim=0)


def symmetric_lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(hinge(x, y) + hinge(-x, 1 - y)) / 2, each hinge per class over the batch, mean over classes.

    Parameters
    ----------
    logits : (N, C) floating tensor
    labels : (N, C) tensor of 0/1 values, same dtype

    Returns
    -------
    () tensor; 0 (attached to the graph) when N = 0
    """
    if logits.shape[0] == 0:
        return _empty(logits)
    signs = 2.0 * labels - 1.0
    # -x against 1 - y has the same errors 1 - (-x)(1 - 2y) = 1 - x(2y - 1): one sort serves both hinges.
    errors_sorted, order = torch.sort(1.0 - logits * signs, dim=0, descending=True)
    labels_sorted = labels.gather(0, order)
    straight = lovasz_hinge(errors_sorted, labels_sorted).mean()
    flipped = lovasz_hinge(errors_sorted, 1.0 - labels_sorted).mean()
    return (straight + flipped) / 2.0


def hard_negative_count(n_pos: torch.Tensor, n_neg: torch.Tensor) -> torch.Tensor:
    """k = min(n_neg, n_pos + max(2, floor(0.5 n_neg)), floor(0.7 n_neg) + 2), elementwise, int64.

    floor(0.7 n_neg) is the floor of the IEEE-double product, as the 2019 code's ``int(0.7 * n)``:
    one less than the exact floor at n_neg = 90, 170, 180, ... (0.7 * 90 = 62.99999999999999).
    """
    at_least = torch.clamp(torch.floor(n_neg.double() * HARD_NEG_LEAST_RATIO).long(), min=HARD_NEG_MORE)
    at_most = torch.floor(n_neg.double() * HARD_NEG_MAX_RATIO).long() + HARD_NEG_MORE
    return torch.minimum(torch.minimum(n_neg, n_pos + at_least), at_most)


def hard_log_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """2019 hard-example log loss (see the module docstring); no per-class Python loop, no device sync.

    Parameters
    ----------
    logits, targets : (N, C) tensors of one floating dtype; targets in [0, 1], positives are t > 0

    Returns
    -------
    () tensor; 0 (attached to the graph) when N = 0
    """
    n = logits.shape[0]
    if n == 0:
        return _empty(logits)
    positive = targets > 0
    n_pos = positive.sum(dim=0)
    k = hard_negative_count(n_pos, n - n_pos)  # (C,)
    # Negatives first, by logit descending; positives last. The first k of each column are its hard negatives.
    key = torch.where(positive, torch.full_like(logits, -torch.inf), logits)
    order = torch.sort(key, dim=0, descending=True, stable=True).indices
    positions = torch.arange(n, device=logits.device).unsqueeze(1).expand_as(order)
    rank = torch.empty_like(order).scatter_(0, order, positions)  # rank[i, c] = place of row i in column c
    selected = positive | ((rank < k) & ~positive)
    weight = selected.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    per_class = (bce * weight).sum(dim=0) / weight.sum(dim=0)  # >= 1 selected per class when N >= 1
    return per_class.mean()


# --------------------------------------------------------------------------------------------- the modules


@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy with logits, mean over all N x C terms, as ``torch.nn.BCEWithLogitsLoss``.

    Parameters
    ----------
    pos_weight : sequence of C floats or (C,) tensor, optional
        Weight of the positive term of each class (torch's ``pos_weight``).

    Differences from torch: an empty batch gives 0 instead of NaN; float16/bfloat16 logits are upcast.
    """

    def __init__(self, *, pos_weight: Sequence[float] | torch.Tensor | None = None) -> None:
        super().__init__()
        weight = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float64).reshape(-1)
        if weight is not None and not bool(torch.all(torch.isfinite(weight) & (weight >= 0))):
            raise LossError(f"bce loss: pos_weight must be finite and >= 0, got {weight.tolist()}")
        self.register_buffer("pos_weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_multilabel("bce", logits, targets)
        if logits.shape[0] == 0:
            return _empty(logits)
        weight = self.pos_weight
        if weight is not None:
            if weight.numel() != logits.shape[1]:
                raise LossError(
                    f"bce loss: pos_weight has {weight.numel()} entries but logits have shape "
                    f"({logits.shape[0]}, {logits.shape[1]}); give one weight per class"
                )
            weight = weight.to(device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss (2019 winner's, gamma 2), summed over classes and averaged over the batch.

    Parameters
    ----------
    gamma : float >= 0
        Focusing exponent; 0 gives BCE summed over classes.
    """

    def __init__(self, *, gamma: float = FOCAL_GAMMA) -> None:
        super().__init__()
        self.gamma = check_number("focal", "gamma", gamma, low=0.0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_multilabel("focal", logits, targets)
        return focal_loss(logits, targets, gamma=self.gamma)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}"


@LOSSES.register("lovasz")
class SymmetricLovaszLoss(nn.Module):
    """Symmetric Lovasz hinge over the labels treated as pixels (targets binarised at t >= 0.5)."""

    def __init__(self) -> None:  # no options (an explicit signature, so create_loss can say so)
        super().__init__()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_multilabel("lovasz", logits, targets)
        labels = (targets >= LOVASZ_THRESHOLD).to(logits.dtype)
        return symmetric_lovasz_hinge(logits, labels)


@LOSSES.register("hard_log")
class HardLogLoss(nn.Module):
    """2019 hard-example log loss: per class BCE over all positives and the hardest negatives, mean over classes."""

    def __init__(self) -> None:  # no options (an explicit signature, so create_loss can say so)
        super().__init__()

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_multilabel("hard_log", logits, targets)
        return hard_log_loss(logits, targets)
