"""Pseudo labels of a cell model: its scores of the train cells, kept on each image's own labels.

The demo's pseudo-label round (after the 7th-place solution): the first cell model scores every train
cell (``cellcls predict --scores``), :func:`write_pseudo_labels` turns those scores into soft per-cell
targets with :func:`image_label_pseudo`, and ``cellcls train --cell-labels`` trains on them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cellcls.errors import CellclsError

__all__ = ["image_label_pseudo", "write_pseudo_labels"]


def image_label_pseudo(scores: "Any", image_labels: "Any") -> "Any":
    """Soft cell labels: a model's cell scores kept on the image's own labels only.

    Per image and labelled class c, the cells' scores of c divided by their maximum (the image
    label says at least one cell has c, so its most likely cell gets 1); classes the image does not
    carry get 0; Negative = 1 - the largest soft label of the other classes (an image labelled
    Negative only: every cell 1).

    Parameters
    ----------
    scores : (n_cells, 19) float in [0, 1], one image's cell scores.
    image_labels : (19,) bool, its image-level labels.

    Returns
    -------
    (n_cells, 19) float32 in [0, 1]
    """
    import numpy as np

    from cellcls.classes import NEGATIVE

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(image_labels, dtype=bool).copy()
    out = np.zeros_like(scores)
    labels[NEGATIVE] = False
    if not labels.any():
        out[:, NEGATIVE] = 1.0
        return out.astype(np.float32)
    top = scores[:, labels].max(axis=0)
    out[:, labels] = scores[:, labels] / np.maximum(top, 1e-6)
    out[:, NEGATIVE] = 1.0 - out.max(axis=1)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def write_pseudo_labels(scores_path: Path, labels_csv: Path, out: Path) -> int:
    """Apply :func:`image_label_pseudo` to every image of a score table; return the cells written."""
    import pandas as pd

    from cellcls.labels import read_train_csv
    from cellcls.scores import SCORE_COLUMNS, read_scores, write_scores

    frame = read_scores(scores_path)
    truth = read_train_csv(labels_csv)
    targets = dict(zip(truth.ids, truth.targets.astype(bool)))
    parts = []
    for image_id, rows in frame.groupby("ID", sort=False):
        if image_id not in targets:
            raise CellclsError(f"pseudo labels: image {image_id} of {scores_path} is not in {labels_csv}")
        block = rows.copy()
        block[list(SCORE_COLUMNS)] = image_label_pseudo(rows[list(SCORE_COLUMNS)].to_numpy(), targets[image_id])
        parts.append(block)
    table = pd.concat(parts, ignore_index=True) if parts else frame
    write_scores(table, out)
    return int(len(table))
