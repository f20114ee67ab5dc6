"""Validation measures: multilabel F1 and per-class AP (numpy), and mAP@0.6 of validation cells.

Everything here is pure numpy on ``(N, C)`` arrays except :class:`ValidationCells`, which holds
the mask strings of the validation cells (encoded once) and scores new confidences with the
competition metric (:func:`cellcls.metric.evaluate`) each epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from cellcls.metric import average_precision

__all__ = ["f1_scores", "prior_macro_f1", "per_class_ap", "ValidationCells"]


def _binary(targets: np.ndarray) -> np.ndarray:
    """Soft targets count as positive from 0.5 on."""
    return np.asarray(targets, dtype=np.float64) >= 0.5


def f1_scores(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float = 0.5) -> dict[str, float]:
    """Macro and micro F1 of ``probs >= thresholds`` against ``targets``.

    Parameters
    ----------
    probs : (N, C) float in [0, 1]
    targets : (N, C) {0, 1} or soft (>= 0.5 is positive)
    thresholds : float or (C,) float

    Returns
    -------
    dict with ``macro_f1`` (mean over the classes that have a positive target or prediction;
    NaN if none) and ``micro_f1`` (pooled counts).
    """
    pred = np.asarray(probs, dtype=np.float64) >= np.asarray(thresholds, dtype=np.float64)
    true = _binary(targets)
    tp = (pred & true).sum(axis=0).astype(np.float64)
    fp = (pred & ~true).sum(axis=0).astype(np.float64)
    fn = (~pred & true).sum(axis=0).astype(np.float64)
    denom = 2 * tp + fp + fn
    present = denom > 0
    macro = float(np.mean(2 * tp[present] / denom[present])) if present.any() else math.nan
    total = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / total) if total > 0 else math.nan
    return {"macro_f1": macro, "micro_f1": micro}


def prior_macro_f1(targets: np.ndarray) -> float:
    """Macro F1 of the best constant guess: each class present in the targets predicted everywhere.

    A classifier that ignores its input can do no better per class than predicting it always
    (F1 = 2p / (1 + p) for a positive rate p) or never (0); a model must beat this mean.
    """
    true = _binary(targets)
    rate = true.mean(axis=0)
    present = rate > 0
    if not present.any():
        return math.nan
    return float(np.mean(2 * rate[present] / (1 + rate[present])))


def per_class_ap(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) average precision of each class over the N samples (NaN where a class has no positive).

    Same AP as the competition's (:func:`cellcls.metric.average_precision`: Σ Δrecall · precision,
    precision made monotone), every sample a detection, positives the true ones.
    """
    probs = np.asarray(probs, dtype=np.float64)
    true = _binary(targets)
    return np.array([average_precision(probs[:, c], true[:, c], int(true[:, c].sum()))
                     for c in range(probs.shape[1])])


@dataclass(frozen=True)
class ValidationCells:
    """The validation cells of a world with per-cell truth, ready to be scored.

    Attributes
    ----------
    truths : dict[str, cellcls.metric.ImageTruth]
        Ground truth of the validation images (from ``solution_train.csv``).
    images : tuple of (image_id, (H, W), cell ids, mask strings)
        Per validation image, the segmented cells in the order of the validation samples
        (cell ids ascending) and their mask strings at the original size, encoded once.
    """

    truths: Mapping[str, object]
    images: tuple[tuple[str, tuple[int, int], tuple[int, ...], tuple[str, ...]], ...]

    @property
    def n_cells(self) -> int:
        return sum(len(cells) for _, _, cells, _ in self.images)

    def score(self, probs: np.ndarray) -> float:
        """mAP at mask IoU 0.6 of the validation cells scored with ``probs``.

        Parameters
        ----------
        probs : (n_cells, 19) float in [0, 1]
            Row order = the order of ``images`` then of their cells (the validation samples' order).
        """
        from cellcls.metric import evaluate
        from cellcls.submission import SubmissionRow, prediction_string

        probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
        if probs.shape[0] != self.n_cells:
            raise ValueError(f"expected {self.n_cells} rows of confidences, got {probs.shape[0]}")
        rows, start = [], 0
        for image_id, (height, width), cells, masks in self.images:
            block = probs[start:start + len(cells)]
            start += len(cells)
            text = prediction_string(dict(zip(cells, masks)), block, image_id=image_id) if cells else ""
            rows.append(SubmissionRow(image_id, width, height, text))
        return float(evaluate(self.truths, rows).map)
