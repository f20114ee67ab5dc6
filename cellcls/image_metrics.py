"""Image-level (multi-label) metrics for training and validation; numpy only.

Inputs are (N, C) arrays: ``targets`` in {0, 1} (bool or numbers), ``probs`` finite scores
(probabilities in [0, 1] usually; only their order matters for AP). C is 19 for the
competition but any C works.

    f1_scores(targets, probs, thresholds) -> {"macro_f1", "micro_f1", "per_class_f1", ...}
    average_precision(targets, probs) -> (C,) AP, NaN for a class without positives
    mean_average_precision(targets, probs) -> mean over classes with positives
"""
from __future__ import annotations

import numpy as np

__all__ = ["f1_scores", "average_precision", "mean_average_precision"]


def _check(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray(targets)
    probs = np.asarray(probs, dtype=np.float64)
    if targets.ndim != 2 or targets.shape != probs.shape:
        raise ValueError(f"targets and probs must both be (N, C) arrays of the same shape, got "
                         f"{targets.shape} and {probs.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must hold only 0/1 (or False/True)")
    if not np.isfinite(probs).all():
        raise ValueError(f"probs hold {int((~np.isfinite(probs)).sum())} NaN/inf values")
    return targets.astype(bool), probs


def f1_scores(targets: np.ndarray, probs: np.ndarray, thresholds: float | np.ndarray = 0.5) -> dict:
    """F1 of thresholded predictions (``probs >= threshold`` is positive).

    Parameters
    ----------
    targets : (N, C) 0/1
    probs : (N, C) float
    thresholds : float or (C,) per-class thresholds

    Returns
    -------
    dict
        ``per_class_f1`` (C,) float, NaN for a class with no positive target and no positive
        prediction (nothing to score); ``macro_f1`` = mean of the non-NaN per-class F1 (NaN if
        none); ``micro_f1`` from the counts pooled over classes; ``per_class_precision`` and
        ``per_class_recall`` (C,) (NaN where undefined); ``tp``, ``fp``, ``fn`` (C,) int counts.
    """
    targets, probs = _check(targets, probs)
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    predicted = probs >= thresholds
    tp = np.sum(predicted & targets, axis=0)
    fp = np.sum(predicted & ~targets, axis=0)
    fn = np.sum(~predicted & targets, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
    defined = ~np.isnan(per_class)
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    return {
        "macro_f1": float(per_class[defined].mean()) if defined.any() else float("nan"),
        "micro_f1": float(2 * tp.sum() / pooled) if pooled else float("nan"),
        "per_class_f1": per_class,
        "per_class_precision": precision,
        "per_class_recall": recall,
        "tp": tp.astype(np.int64),
        "fp": fp.astype(np.int64),
        "fn": fn.astype(np.int64),
    }


def _class_ap(positive: np.ndarray, scores: np.ndarray) -> float:
    n_pos = int(positive.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    # Equal scores form one threshold: take the counts at the last sample of each score.
    last = np.flatnonzero(np.concatenate((scores[1:] != scores[:-1], [True])))
    tp = np.cumsum(positive)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def average_precision(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-class average precision (area under the step precision-recall curve).

    AP = Σ_n (R_n - R_{n-1}) P_n over the distinct score thresholds, high to low, without
    interpolation (equal to scikit-learn's ``average_precision_score``; equal scores count as
    one threshold, so ties do not depend on order).

    Returns
    -------
    (C,) ndarray of float64; NaN for a class without positive targets.
    """
    targets, probs = _check(targets, probs)
    return np.array([_class_ap(targets[:, c], probs[:, c]) for c in range(probs.shape[1])], dtype=np.float64)


def mean_average_precision(targets: np.ndarray, probs: np.ndarray) -> float:
    """Mean of :func:`average_precision` over classes with positives (NaN if there are none)."""
    ap = average_precision(targets, probs)
    defined = ~np.isnan(ap)
    return float(ap[defined].mean()) if defined.any() else float("nan")
