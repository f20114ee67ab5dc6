"""Instance-segmentation agreement: one-to-one matching of cells at a mask-IoU threshold.

:func:`cell_f1` compares two label images (0 = background, any positive ids) and counts the
cells that match one-to-one at IoU >= threshold. Pair overlaps come from one ``np.unique`` over
the combined ids of the foreground pixels, so the cost is one pass over the image whatever the
number of cells.
"""
from __future__ import annotations

import numpy as np

__all__ = ["pair_iou", "cell_f1"]


def pair_iou(pred_labels: np.ndarray, true_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (pred id, true id) pair.

    Parameters
    ----------
    pred_labels, true_labels : (H, W) integer ndarrays, 0 = background.

    Returns
    -------
    pred_ids, true_ids : (K,) int64 ids of the K overlapping pairs.
    iou : (K,) float64 mask IoU of each pair.
    """
    pred = np.asarray(pred_labels)
    true = np.asarray(true_labels)
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels {pred.shape} and true_labels {true.shape} must have the same shape")
    for name, arr in (("pred_labels", pred), ("true_labels", true)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer label image, got {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise ValueError(f"{name} must hold ids >= 0, got {int(arr.min())}")
    pred = pred.ravel().astype(np.int64)
    true = true.ravel().astype(np.int64)
    pred_area = np.bincount(pred)
    true_area = np.bincount(true)
    both = (pred > 0) & (true > 0)
    stride = int(true_area.size)
    combined, inter = np.unique(pred[both] * stride + true[both], return_counts=True)
    pred_ids, true_ids = np.divmod(combined, stride)
    union = pred_area[pred_ids] + true_area[true_ids] - inter
    return pred_ids, true_ids, inter / union


def cell_f1(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    *,
    iou_threshold: float = 0.6,
    ignore_true_ids: np.ndarray | None = None,
) -> dict[str, float]:
    """Detection F1 of predicted cells against true cells with one-to-one matching.

    A predicted cell and a true cell match when their mask IoU >= ``iou_threshold``; pairs are
    taken in decreasing IoU, each cell at most once (above 0.5 a match is unique anyway).

    Parameters
    ----------
    pred_labels, true_labels : (H, W) integer ndarrays, 0 = background.
    iou_threshold : float in (0, 1].
    ignore_true_ids : optional true ids that do not count: they are not false negatives, and a
        prediction matching one of them is neither a true nor a false positive (like a "crowd"
        region). Use it for truth cells the segmentation is designed to drop (below its size
        cut-offs).

    Returns
    -------
    dict with tp, fp, fn (ints as floats), precision, recall and
    f1 = 2 tp / (2 tp + fp + fn) (1.0 when there is nothing to find and nothing found).
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    pred_ids, true_ids, iou = pair_iou(pred_labels, true_labels)
    pred_all = np.unique(np.asarray(pred_labels))
    true_all = np.unique(np.asarray(true_labels))
    pred_all = pred_all[pred_all > 0]
    true_all = true_all[true_all > 0]
    ignored = np.unique(np.asarray([] if ignore_true_ids is None else ignore_true_ids, dtype=np.int64))

    good = iou >= iou_threshold
    order = np.argsort(-iou[good], kind="stable")
    taken_pred: set[int] = set()
    taken_true: set[int] = set()
    for p, t in zip(pred_ids[good][order].tolist(), true_ids[good][order].tolist()):
        if p not in taken_pred and t not in taken_true:
            taken_pred.add(p)
            taken_true.add(t)
    matched_ignored = {t for t in taken_true if t in set(ignored.tolist())}
    tp = len(taken_true) - len(matched_ignored)
    n_pred = pred_all.size - len(matched_ignored)
    n_true = int(np.setdiff1d(true_all, ignored).size)
    fp, fn = n_pred - tp, n_true - tp
    denom = 2 * tp + fp + fn
    return {
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "precision": tp / n_pred if n_pred else 1.0,
        "recall": tp / n_true if n_true else 1.0,
        "f1": 2 * tp / denom if denom else 1.0,
    }
