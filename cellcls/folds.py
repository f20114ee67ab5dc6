"""Cross-validation folds, stratified over the 19 labels at once.

Multi-label stratification is the iterative-stratification algorithm (Sechidis et al. 2011)
from the ``iterative-stratification`` package (``MultilabelStratifiedKFold``, shuffled, seeded):
each class is spread over the folds in proportion, rarest classes first.

With ``groups`` (an antibody, a plate, a near-duplicate group from :mod:`cellcls.dedup`), the
stratification runs over groups: each group counts as one sample carrying the union of its
members' labels, and all its members land in the same fold. Fold sizes are then balanced in
groups, not images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .classes import NUM_CLASSES
from .errors import CellclsError, ParameterError

__all__ = ["make_folds", "fold_class_counts", "group_codes"]


def group_codes(groups: Sequence[object] | np.ndarray) -> np.ndarray:
    """(N,) int64 group index per sample, ``0..G-1`` in order of first appearance.

    Missing groups (None, NaN, empty string) each become their own singleton group.
    """
    codes = np.empty(len(groups), dtype=np.int64)
    index: dict[object, int] = {}
    for i, g in enumerate(groups):
        missing = g is None or (isinstance(g, float) and g != g) or (isinstance(g, str) and not g.strip())
        if missing:
            codes[i] = len(index)
            index[("__singleton__", i)] = codes[i]
        else:
            key = g.item() if isinstance(g, np.generic) else g
            codes[i] = index.setdefault(key, len(index))
    return codes


def make_folds(
    targets: np.ndarray,
    *,
    k: int = 5,
    seed: int = 0,
    groups: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Assign each sample to one of ``k`` folds, stratified over all labels.

    Parameters
    ----------
    targets : (N, C) array of 0/1
        Multi-hot labels (C = 19 for HPA; any C works).
    k : int
        Number of folds, >= 2.
    seed : int
        Same seed, same folds (on the same input order).
    groups : (N,) sequence, optional
        Samples sharing a group always share a fold; missing values (None, NaN, "")
        are singleton groups.

    Returns
    -------
    (N,) ndarray of int64 in ``0..k-1``

    Raises
    ------
    ParameterError
        ``k`` < 2, targets not (N, C) of 0/1, groups of another length (also a ValueError).
    CellclsError
        Fewer samples (or groups) than folds.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = np.asarray(targets)
    if y.ndim != 2:
        raise ParameterError(f"targets must be (N, C) multi-hot, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ParameterError("targets must hold only 0 and 1")
    if k < 2:
        raise ParameterError(f"k (the number of folds) must be an integer >= 2, got {k}")
    y = y.astype(bool)
    n = y.shape[0]
    if groups is not None:
        if len(groups) != n:
            raise ParameterError(f"groups has {len(groups)} entries but targets has {n} rows")
        codes = group_codes(groups)
        n_groups = int(codes.max()) + 1 if n else 0
        group_y = np.zeros((n_groups, y.shape[1]), dtype=bool)
        np.logical_or.at(group_y, codes, y)
        units, what = group_y, "groups"
    else:
        codes, units, what = None, y, "images"
    if units.shape[0] < k:
        raise CellclsError(f"cannot make {k} folds from {units.shape[0]} {what}; use a smaller k")
    # The stratifier rejects inputs that are not 'multilabel-indicator' (e.g. a single
    # column); a constant all-False column keeps the type and changes nothing.
    padded = np.concatenate([units, np.zeros((units.shape[0], 1), dtype=bool)], axis=1)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    unit_folds = np.empty(units.shape[0], dtype=np.int64)
    for fold, (_, test) in enumerate(splitter.split(np.zeros((units.shape[0], 1)), padded)):
        unit_folds[test] = fold
    return unit_folds if codes is None else unit_folds[codes]


def fold_class_counts(targets: np.ndarray, folds: np.ndarray, *, k: int | None = None) -> np.ndarray:
    """(k, C) int64: how many images of each class each fold holds (C = 19 for HPA)."""
    y = np.asarray(targets)
    folds = np.asarray(folds)
    k = int(folds.max()) + 1 if k is None else k
    counts = np.zeros((k, y.shape[1] if y.ndim == 2 else NUM_CLASSES), dtype=np.int64)
    np.add.at(counts, folds, y.astype(np.int64))
    return counts
