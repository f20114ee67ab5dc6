"""The competition score: mAP at mask IoU 0.6, Open Images instance-segmentation style.

Rules (HPA_FACTS §3), implemented exactly:

1. Per image and class, the image's detections of that class are taken in descending
   confidence. Each looks ONLY at the ground-truth cell of that class with which its mask IoU
   is highest (taken or not; equal IoUs: the cell listed first in the solution). It is a true
   positive if that IoU >= the threshold (0.6, inclusive) and that cell is not yet taken, which
   then becomes taken; otherwise a false positive. There is no fall-back to a second-best cell.
2. Per image, only the classes in that image's ground truth are evaluated: detections of any
   other class are ignored (neither TP nor FP).
3. Detections with an empty mask are dropped; so are empty ground-truth masks. Rows for IDs
   not in the solution are ignored; a solution image with no row (or an empty row) still
   counts its ground truth.
4. Per class, all images' detections are pooled and sorted by descending confidence;
   AP = Σ Δrecall · precision, precision made monotone non-increasing from the right (no
   11-point interpolation). A class without ground truth has AP = NaN and is left out of the
   mean; a class with ground truth but no detection has AP = 0.

Ties: equal confidences keep SUBMISSION ORDER (row order in the file, then triplet order in
the row), both in the per-image matching and in the pooled ranking (stable sorts). Writers
that care about ties should avoid them; :mod:`cellcls.submission` keeps 6 significant digits.

Mask IoU is computed by pycocotools on compressed RLE (no full-frame decode); every distinct
mask string of an image is decoded (and size-checked) once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from tqdm import tqdm

from . import rle
from .classes import CLASS_NAMES, NUM_CLASSES
from .errors import MaskCodecError, ParameterError, SubmissionError
from .submission_format import SubmissionRow, iter_rows, split_prediction_string

__all__ = ["IOU_THRESHOLD", "ImageTruth", "EvaluationResult", "read_solution", "evaluate", "average_precision"]

log = logging.getLogger(__name__)

#: The competition's mask IoU threshold (inclusive).
IOU_THRESHOLD = 0.6


@dataclass(frozen=True)
class ImageTruth:
    """Ground truth of one image.

    ``coco`` holds the pycocotools RLEs at (height, width) of the ``n_cells`` distinct non-empty
    ground-truth masks; ``cells_by_class[c]`` indexes ``coco``, one entry per ground-truth
    (cell, class) triplet of class c, in solution order.
    """

    id: str
    height: int
    width: int
    n_cells: int
    coco: tuple[dict, ...]
    cells_by_class: Mapping[int, np.ndarray]


@dataclass(frozen=True)
class EvaluationResult:
    """Score and per-class figures (arrays of length C, index = class id).

    ``per_class_ap`` is NaN for classes without ground truth; ``n_det`` counts scored
    detections (non-empty masks, in solution images, of a class of that image's ground truth).
    """

    map: float
    per_class_ap: np.ndarray
    n_gt: np.ndarray
    n_det: np.ndarray
    n_tp: np.ndarray
    n_images: int
    iou_threshold: float = IOU_THRESHOLD
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"map", "per_class_ap": {"0": float | None}, "n_gt", "n_det", "n_tp", ...}``."""

        def per_class(values: np.ndarray, cast) -> dict[str, Any]:
            return {str(c): (None if isinstance(v, float) and np.isnan(v) else cast(v))
                    for c, v in enumerate(values.tolist())}

        return {
            "map": None if np.isnan(self.map) else float(self.map),
            "per_class_ap": per_class(self.per_class_ap, float),
            "n_gt": per_class(self.n_gt, int),
            "n_det": per_class(self.n_det, int),
            "n_tp": per_class(self.n_tp, int),
            "n_images": self.n_images,
            "iou_threshold": self.iou_threshold,
        }

    def table(self) -> str:
        """A per-class text table followed by the mAP line."""
        lines = [f"{'id':>2}  {'class':<42} {'#GT':>7} {'#det':>9} {'#TP':>7} {'AP':>7}"]
        for c in range(len(self.per_class_ap)):
            name = self.class_names[c] if c < len(self.class_names) else str(c)
            ap = self.per_class_ap[c]
            ap_text = "    -" if np.isnan(ap) else f"{ap:.4f}"
            lines.append(f"{c:>2}  {name:<42} {self.n_gt[c]:>7} {self.n_det[c]:>9} {self.n_tp[c]:>7} {ap_text:>7}")
        n_scored = int(np.sum(~np.isnan(self.per_class_ap)))
        score = "nan" if np.isnan(self.map) else f"{self.map:.4f}"
        lines.append(f"mAP@{self.iou_threshold:g} = {score} over {n_scored} classes with ground truth, "
                     f"{self.n_images} images")
        return "\n".join(lines)


def _distinct_masks(masks: Sequence[str], triplets: Sequence[int], shape: tuple[int, int],
                    where: str) -> tuple[list[dict], np.ndarray]:
    """The distinct non-empty masks among ``masks[t] for t in triplets``, parsed once each.

    Returns their pycocotools RLEs and, per given triplet, the index of its mask among them
    (-1 for an empty mask). A malformed or wrongly sized mask raises SubmissionError naming
    ``where`` and the triplet.
    """
    index_of: dict[str, int] = {}
    first_triplet: list[int] = []
    slot = np.empty(len(triplets), dtype=np.int64)
    for k, t in enumerate(triplets):
        mask = masks[t]
        i = index_of.get(mask)
        if i is None:
            i = index_of[mask] = len(first_triplet)
            first_triplet.append(t)
        slot[k] = i
    texts = list(index_of)
    try:
        rles, areas = rle.to_coco_many(texts, shape)
    except MaskCodecError as batch_error:
        for text, t in zip(texts, first_triplet):  # find the culprit for the message
            try:
                rle.to_coco_with_area(text, shape)
            except MaskCodecError as exc:
                raise SubmissionError(f"{where}: triplet {t}: {exc}") from None
        raise SubmissionError(f"{where}: {batch_error}") from None
    non_empty = areas > 0
    renumber = np.where(non_empty, np.cumsum(non_empty) - 1, -1)
    return [r for r, keep in zip(rles, non_empty.tolist()) if keep], renumber[slot]


def _image_truth(row: SubmissionRow, num_classes: int) -> ImageTruth:
    classes, _, masks, problems = split_prediction_string(row.prediction_string, num_classes=num_classes)
    where = f"solution line {row.line}: ID {row.id}"
    if problems:
        index, _, message = problems[0]
        raise SubmissionError(f"{where}: triplet {index}: {message}")
    rles, slot = _distinct_masks(masks, range(len(masks)), row.shape, where)
    by_class: dict[int, list[int]] = {}
    for cls, i in zip(classes.tolist(), slot.tolist()):
        if i >= 0:
            by_class.setdefault(cls, []).append(i)
    cells = {c: np.asarray(v, dtype=np.int64) for c, v in sorted(by_class.items())}
    return ImageTruth(row.id, row.height, row.width, len(rles), tuple(rles), cells)


def read_solution(
    source: str | os.PathLike | Iterable[SubmissionRow], *, num_classes: int = NUM_CLASSES
) -> dict[str, ImageTruth]:
    """Ground truth by image ID from a solution file (submission format, confidences ignored) or rows.

    Raises SubmissionError on a malformed row or mask, or a repeated ID.
    """
    solution: dict[str, ImageTruth] = {}
    for row in iter_rows(source):
        if row.id in solution:
            raise SubmissionError(f"solution line {row.line}: ID {row.id} appears twice")
        solution[row.id] = _image_truth(row, num_classes)
    return solution


def average_precision(confidences: np.ndarray, is_tp: np.ndarray, n_gt: int, *, order: np.ndarray | None = None) -> float:
    """AP of one class from pooled detections.

    Parameters
    ----------
    confidences : (D,) float
    is_tp : (D,) bool
    n_gt : number of ground-truth instances (> 0; NaN is returned for 0).
    order : (D,) tie-break key, ascending (default: the given order).

    Returns
    -------
    float: Σ Δrecall · precision, precision monotone non-increasing from the right; 0 if D = 0.
    """
    if n_gt <= 0:
        return float("nan")
    confidences = np.asarray(confidences, dtype=np.float64)
    if confidences.size == 0:
        return 0.0
    tie = np.arange(len(confidences)) if order is None else np.asarray(order)
    ranked = np.lexsort((tie, -confidences))
    hits = np.asarray(is_tp, dtype=bool)[ranked]
    true_pos = np.cumsum(hits)
    precision = true_pos / np.arange(1, len(hits) + 1)
    recall = true_pos / n_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    delta_recall = np.diff(recall, prepend=0.0)
    return float(np.sum(delta_recall * precision))


def _match_image(truth: ImageTruth, row: SubmissionRow, num_classes: int, iou_threshold: float):
    """(number of triplets, per scored detection arrays (class, confidence, triplet index, is TP) or None)."""
    where = f"submission line {row.line}: ID {row.id}"
    if (row.height, row.width) != (truth.height, truth.width):
        raise SubmissionError(f"{where}: ImageWidth/ImageHeight {row.width}/{row.height} differ from the "
                              f"solution's {truth.width}/{truth.height}")
    classes, confidences, masks, problems = split_prediction_string(row.prediction_string, num_classes=num_classes)
    if problems:
        index, _, message = problems[0]
        raise SubmissionError(f"{where}: triplet {index}: {message}")
    n_triplets = len(masks)
    scored = np.flatnonzero(np.isin(classes, list(truth.cells_by_class)))
    if scored.size == 0 or not truth.n_cells:
        return n_triplets, None
    det_coco, det_index = _distinct_masks(masks, scored.tolist(), (truth.height, truth.width), where)
    keep = det_index >= 0
    scored, det_index = scored[keep], det_index[keep]
    if scored.size == 0:
        return n_triplets, None
    ious = np.asarray(coco_mask.iou(det_coco, list(truth.coco), [0] * len(truth.coco)), dtype=np.float64)
    ious = ious.reshape(len(det_coco), len(truth.coco))
    out_class, out_conf, out_triplet, out_tp = [], [], [], []
    det_class = classes[scored]
    for cls in np.unique(det_class).tolist():
        mine = np.flatnonzero(det_class == cls)
        mine = mine[np.argsort(-confidences[scored[mine]], kind="stable")]
        cell_ious = ious[det_index[mine]][:, truth.cells_by_class[cls]]
        best_cell = np.argmax(cell_ious, axis=1)
        best_iou = cell_ious[np.arange(len(mine)), best_cell]
        is_tp = np.zeros(len(mine), dtype=bool)
        hit = np.flatnonzero(best_iou >= iou_threshold)
        # Among the hits (in confidence order), only the first detection to reach a cell takes it.
        _, first = np.unique(best_cell[hit], return_index=True)
        is_tp[hit[first]] = True
        out_class.append(np.full(len(mine), cls))
        out_conf.append(confidences[scored[mine]])
        out_triplet.append(scored[mine])
        out_tp.append(is_tp)
    return n_triplets, (np.concatenate(out_class), np.concatenate(out_conf), np.concatenate(out_triplet),
                        np.concatenate(out_tp))


def evaluate(
    solution: str | os.PathLike | Iterable[SubmissionRow] | Mapping[str, ImageTruth],
    submission: str | os.PathLike | Iterable[SubmissionRow],
    *,
    iou_threshold: float = IOU_THRESHOLD,
    num_classes: int = NUM_CLASSES,
    progress: bool = False,
) -> EvaluationResult:
    """Score a submission against a solution (see the module docstring for the exact rules).

    Parameters
    ----------
    solution : solution CSV path, its rows, or the result of :func:`read_solution`.
    submission : submission CSV path (streamed) or rows (``SubmissionRow``; ``line`` may be 0).
    iou_threshold : inclusive mask-IoU threshold, in (0, 1].

    Raises
    ------
    ParameterError
        ``iou_threshold`` outside (0, 1] (also a ValueError).
    SubmissionError
        A malformed row or mask in a scored image, an ID given twice, a size that differs
        from the solution's. (Use ``cellcls check-submission`` to list every problem.)
    """
    if not 0.0 < iou_threshold <= 1.0:  # also False for NaN
        raise ParameterError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    truths = solution if isinstance(solution, Mapping) else read_solution(solution, num_classes=num_classes)
    n_gt = np.zeros(num_classes, dtype=np.int64)
    for truth in truths.values():
        for cls, cells in truth.cells_by_class.items():
            n_gt[cls] += len(cells)
    pooled: list[tuple] = []
    seen: set[str] = set()
    offset = 0  # global submission order of triplets, for the stable tie-break
    for row in tqdm(iter_rows(submission), desc="evaluate", unit=" rows", disable=not progress,
                    total=len(truths) if progress else None):
        if row.id in seen:
            raise SubmissionError(f"submission line {row.line}: ID {row.id} appears twice")
        seen.add(row.id)
        truth = truths.get(row.id)
        if truth is None:
            continue
        n_triplets, matched = _match_image(truth, row, num_classes, iou_threshold)
        if matched is not None:
            cls, conf, triplet, tp = matched
            pooled.append((cls, conf, triplet + offset, tp))
        offset += n_triplets
    n_missing = sum(1 for image_id in truths if image_id not in seen)
    if n_missing:
        log.info("%d solution images have no submission row; their ground truth still counts", n_missing)
    return _pool(pooled, n_gt, len(truths), num_classes, iou_threshold)


def _pool(pooled: list[tuple], n_gt: np.ndarray, n_images: int, num_classes: int,
          iou_threshold: float) -> EvaluationResult:
    if pooled:
        cls, conf, order, tp = (np.concatenate(parts) for parts in zip(*pooled))
    else:
        cls, conf, order, tp = (np.empty(0, dtype=d) for d in (np.int64, np.float64, np.int64, bool))
    per_class = np.full(num_classes, np.nan)
    n_det = np.bincount(cls, minlength=num_classes)[:num_classes].astype(np.int64)
    n_tp = np.bincount(cls[tp], minlength=num_classes)[:num_classes].astype(np.int64)
    by_class = np.argsort(cls, kind="stable")
    bounds = np.searchsorted(cls[by_class], np.arange(num_classes + 1))
    for c in range(num_classes):
        if n_gt[c] == 0:
            continue
        mine = by_class[bounds[c]:bounds[c + 1]]
        per_class[c] = average_precision(conf[mine], tp[mine], int(n_gt[c]), order=order[mine])
    scored = ~np.isnan(per_class)
    score = float(per_class[scored].mean()) if scored.any() else float("nan")
    return EvaluationResult(score, per_class, n_gt, n_det, n_tp, n_images, iou_threshold,
                            CLASS_NAMES if num_classes == len(CLASS_NAMES) else tuple(map(str, range(num_classes))))
