"""How hard a synthetic world is for weak pipelines: reference scores computed from the truth.

Three submissions are built from a world's per-cell truth, all on the TRUE cell masks (so
segmentation plays no part) and scored with :func:`cellcls.metric.evaluate`:

* ``oracle``: every cell gets exactly its true classes (confidence 1). Scores 1.0 by construction;
  anything less means the truth and the scorer disagree.
* ``broadcast``: every cell gets its IMAGE's labels (confidence 1): what a perfect image-level
  classifier gives when its labels are copied to all cells. Because the metric scores, per image,
  only the classes of that image's truth, this scores about the share of cells that really show
  each labelled class: it measures the world's cell-to-cell heterogeneity.
* ``prior``: every cell gets all 19 classes with the train set's class frequencies (the prior
  baseline of ``infer/prior.py``). Within a class all its confidences are equal, so for classes
  0-17 it ranks cells exactly as ``broadcast`` does (ties keep submission order) and scores the
  same; it differs only on Negative (18), which it writes for every cell while ``broadcast``
  writes it only in images labelled Negative.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..classes import NUM_CLASSES
from ..metric import EvaluationResult, evaluate
from ..rle import encode_label_map
from ..submission import SubmissionRow, format_confidence, iter_rows, split_prediction_string
from .sample import SynthSample, image_labels_from_cells

__all__ = ["REFERENCES", "solution_row", "reference_rows", "reference_scores", "world_reference_scores"]

#: Names of the reference submissions, in report order.
REFERENCES = ("broadcast", "prior", "oracle")


def solution_row(image_id: str, sample: SynthSample) -> SubmissionRow:
    """The truth of one sample as a solution row: one ``class 1 mask`` triplet per (cell, class)."""
    masks = encode_label_map(sample.cells)
    parts = [f"{c} 1 {masks[cell]}" for cell, labels in sorted(sample.cell_labels.items()) for c in labels]
    h, w = sample.cells.shape
    return SubmissionRow(image_id, w, h, " ".join(parts))


def _cells_of(row: SubmissionRow) -> tuple[list[str], list[tuple[int, ...]]]:
    """Distinct cell masks of a solution row (first-appearance order) and each one's classes."""
    classes, _, masks, _ = split_prediction_string(row.prediction_string)
    order: dict[str, set[int]] = {}
    for c, m in zip(classes.tolist(), masks):
        order.setdefault(m, set()).add(int(c))
    return list(order), [tuple(sorted(v)) for v in order.values()]


def reference_rows(
    solution: Iterable[SubmissionRow], *, prior: Sequence[float] | None = None
) -> dict[str, list[SubmissionRow]]:
    """The reference submissions (see the module docstring) for solution rows.

    Parameters
    ----------
    solution : rows whose PredictionString holds the truth (one triplet per cell and class).
    prior : (19,) class frequencies in [0, 1] for ``prior``; default: the share of the given
        images labelled with each class. (Its values change no AP: only which classes it writes.)

    Returns
    -------
    dict name -> rows, names :data:`REFERENCES`, rows in solution order.
    """
    rows = list(solution)
    cells = [_cells_of(r) for r in rows]
    image_labels = [image_labels_from_cells(labels) for _, labels in cells]
    if prior is None:
        counts = np.zeros(NUM_CLASSES)
        for labels in image_labels:
            counts[list(labels)] += 1
        prior = counts / max(len(rows), 1)
    prior_text = [format_confidence(p) for p in np.clip(np.asarray(prior, np.float64), 0.0, 1.0)]
    out: dict[str, list[SubmissionRow]] = {name: [] for name in REFERENCES}
    for row, (masks, labels), img_labels in zip(rows, cells, image_labels):
        def make(parts: list[str]) -> SubmissionRow:
            return SubmissionRow(row.id, row.width, row.height, " ".join(parts))

        out["oracle"].append(make([f"{c} 1 {m}" for m, lab in zip(masks, labels) for c in lab]))
        out["broadcast"].append(make([f"{c} 1 {m}" for m in masks for c in img_labels]))
        out["prior"].append(make([f"{c} {prior_text[c]} {m}" for m in masks for c in range(NUM_CLASSES)]))
    return out


def reference_scores(
    solution: Iterable[SubmissionRow] | Sequence[SynthSample], *, prior: Sequence[float] | None = None
) -> dict[str, EvaluationResult]:
    """Score the reference submissions against ``solution`` (rows, or samples made into rows).

    Returns
    -------
    dict name -> :class:`~cellcls.metric.EvaluationResult`, names :data:`REFERENCES`.
    """
    items = list(solution)
    rows = [solution_row(f"synth{i:05d}", s) if isinstance(s, SynthSample) else s for i, s in enumerate(items)]
    refs = reference_rows(rows, prior=prior)
    return {name: evaluate(rows, refs[name]) for name in REFERENCES}


def world_reference_scores(world_dir: str | Path, *, splits: Sequence[str] = ("test",)) -> dict[str, EvaluationResult]:
    """Reference scores of a world written by :func:`~cellcls.synth.generate_world`.

    Scores the images of ``splits`` ("test": ``solution.csv``, "train": ``solution_train.csv``)
    together; the prior is the class frequencies of ``train.csv`` (0.5 for every class when the
    world has no train image).
    """
    world = Path(world_dir)
    files = {"test": "solution.csv", "train": "solution_train.csv"}
    unknown = [s for s in splits if s not in files]
    if unknown or not splits:
        raise ValueError(f"splits must be some of {sorted(files)}, got {list(splits)}")
    prior = np.full(NUM_CLASSES, 0.5)
    train = world / "train.csv"
    labelled = _train_labels(train) if train.exists() else []
    if labelled:
        counts = np.zeros(NUM_CLASSES)
        for labels in labelled:
            counts[list(labels)] += 1
        prior = counts / len(labelled)
    rows = [row for split in splits for row in iter_rows(world / files[split])]
    return reference_scores(rows, prior=prior)


def _train_labels(path: Path) -> list[tuple[int, ...]]:
    """Image labels of a ``train.csv`` (``ID,Label[,...]``, labels ``|``-joined)."""
    with open(path, newline="", encoding="ascii") as fh:
        return [tuple(int(x) for x in r["Label"].split("|") if x != "") for r in csv.DictReader(fh)]
