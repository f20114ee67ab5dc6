"""Per-class decision thresholds that make the predicted positive rate match a target rate.

The 2019 winner's rule (HPA_FACTS §7): F1 depends on the threshold, and the threshold on how the
classes are distributed, so each class gets the threshold at which the share of validation samples
predicted positive equals the share of positives in the training labels.

Pure numpy; no I/O.
"""
from __future__ import annotations

import numpy as np

__all__ = ["rate_matching_thresholds", "positive_rate"]


def positive_rate(targets: np.ndarray) -> np.ndarray:
    """Share of positives per class.

    Parameters
    ----------
    targets : (N, C) array of {0, 1} or soft labels in [0, 1]
        Soft labels count fractionally (their mean).

    Returns
    -------
    (C,) ndarray of float64 in [0, 1]
    """
    targets = np.asarray(targets, dtype=np.float64)
    if targets.ndim != 2 or targets.shape[0] == 0:
        raise ValueError(f"targets must be a non-empty (N, C) array, got shape {targets.shape}")
    return targets.mean(axis=0)


def rate_matching_thresholds(probs: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Thresholds ``t`` such that ``mean(probs[:, c] >= t[c]) ≈ rates[c]`` for every class.

    With ``k = round(rates[c] * N)`` positives wanted, ``t[c]`` lies half-way between the k-th and
    the (k+1)-th largest probability, so exactly the k most confident samples are predicted
    positive (ties at the cut may add more). ``k = 0`` gives a threshold just above the largest
    probability (nothing positive, may exceed 1); ``k = N`` gives the smallest probability (all positive).

    Parameters
    ----------
    probs : (N, C) array of float
        Predicted probabilities of N validation samples, C classes.
    rates : (C,) array of float in [0, 1]
        Wanted positive rate of each class (e.g. :func:`positive_rate` of the training labels).

    Returns
    -------
    (C,) ndarray of float64
        Predict class c when ``prob >= t[c]``.

    Examples
    --------
    >>> p = np.array([[0.9], [0.8], [0.3], [0.1]])
    >>> rate_matching_thresholds(p, np.array([0.5]))
    array([0.55])
    """
    probs = np.asarray(probs, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (N, C) array, got shape {probs.shape}")
    if rates.shape != (probs.shape[1],):
        raise ValueError(f"rates must have shape ({probs.shape[1]},) to match probs {probs.shape}, got {rates.shape}")
    if not np.all((rates >= 0) & (rates <= 1)):
        raise ValueError(f"rates must lie in [0, 1], got {rates}")
    n = probs.shape[0]
    ranked = -np.sort(-probs, axis=0)  # descending per column
    wanted = np.rint(rates * n).astype(np.int64)
    out = np.empty(probs.shape[1], dtype=np.float64)
    for c, k in enumerate(wanted.tolist()):
        column = ranked[:, c]
        if k <= 0:
            out[c] = np.nextafter(column[0], np.inf)
        elif k >= n:
            out[c] = column[-1]
        else:
            out[c] = 0.5 * (column[k - 1] + column[k])
    return out
