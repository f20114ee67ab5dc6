"""The report's inputs, read and reduced to what its figures need (pure where no file is named).

* Evaluations: the JSON of ``cellcls evaluate --json`` (:meth:`cellcls.metric.EvaluationResult.to_dict`).
* Segmentation: the JSON of ``cellcls segment-score --json`` (tp, fp, fn, precision, recall, f1,
  n_images, per_image).
* Training logs: Lightning's CSVLogger ``metrics.csv`` (``RUN/logs/version_N/metrics.csv``), one
  column per logged name, rows sparse (NaN where a name was not logged at that step).
* Disagreement between a per-cell score table and image labels: which cells the cell model scores
  unlike what their image's weak label says.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Union

import numpy as np

from ..classes import NEGATIVE, NUM_CLASSES
from ..errors import ReportError

if TYPE_CHECKING:
    import pandas as pd

    from ..labels import LabelTable

__all__ = [
    "EvaluationSummary",
    "load_evaluation",
    "load_segmentation",
    "read_training_log",
    "training_curves",
    "Disagreements",
    "disagreements",
]

#: A JSON input: its path, or the dict it holds.
Source = Union[str, "os.PathLike[str]", Mapping[str, Any]]


def _load_json(source: Any, what: str) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), what
    path = Path(source)
    try:
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not a JSON file ({exc}); pass the file written by {what}") from exc


@dataclass(frozen=True)
class EvaluationSummary:
    """One scored submission: ``map`` (float, NaN if none), ``ap`` / ``n_gt`` (19,) float64 / int64 by class id
    (``ap`` NaN where the class has no ground truth), ``n_images``."""

    map: float
    ap: np.ndarray
    n_gt: np.ndarray
    n_images: int


def load_evaluation(source: Source) -> EvaluationSummary:
    """Read an evaluation JSON (path) or its dict; raises ReportError when ``map``/``per_class_ap`` are missing."""
    data, where = _load_json(source, "cellcls evaluate --json")
    if not isinstance(data, dict) or "per_class_ap" not in data or "map" not in data:
        raise ReportError(f"{where}: an evaluation needs 'map' and 'per_class_ap' (the JSON of "
                          "`cellcls evaluate --json score.json`)")

    def by_class(field: str, fill: float) -> np.ndarray:
        values = data.get(field) or {}
        return np.array([fill if values.get(str(c)) is None else float(values[str(c)]) for c in range(NUM_CLASSES)])

    return EvaluationSummary(
        map=float("nan") if data["map"] is None else float(data["map"]),
        ap=by_class("per_class_ap", float("nan")), n_gt=by_class("n_gt", 0).astype(np.int64),
        n_images=int(data.get("n_images") or 0))


def load_segmentation(source: Source) -> dict[str, Any]:
    """Read a ``segment-score`` JSON (path) or its dict; checks precision/recall/f1 are present."""
    data, where = _load_json(source, "cellcls segment-score --json")
    missing = [k for k in ("precision", "recall", "f1") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ReportError(f"{where}: a segmentation score needs {', '.join(missing)} (the JSON of "
                          "`cellcls segment-score --json seg.json`)")
    return data


# ----------------------------------------------------------------------------- training logs
def read_training_log(path: "str | os.PathLike[str]") -> "pd.DataFrame":
    """A CSVLogger ``metrics.csv`` as a DataFrame (numeric columns, NaN where nothing was logged)."""
    import pandas as pd

    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not a metrics CSV ({exc})") from exc
    missing = [c for c in ("epoch", "step") if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: a training log needs the columns epoch and step (Lightning's CSVLogger "
                          f"metrics.csv, under RUN/logs/version_N/); {', '.join(missing)} missing")
    return frame.apply(pd.to_numeric, errors="coerce")


def _last_per(frame: "pd.DataFrame", column: str, by: str) -> tuple[np.ndarray, np.ndarray]:
    rows = frame[[by, column]].dropna()
    rows = rows.groupby(by, sort=True)[column].last()
    return rows.index.to_numpy(np.float64), rows.to_numpy(np.float64)


def training_curves(frame: "pd.DataFrame") -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The curves of one training log, grouped by figure: {group: {metric: (x, y)}}.

    Groups (only those with data): ``"per step"`` (columns ending ``_step``, x = step), ``"loss per
    epoch"`` (columns naming a loss, x = epoch), ``"validation scores per epoch"`` (the remaining
    metrics whose values lie in [0, 1], per-class ``ap_*`` left out; x = epoch), ``"learning rate"``
    (columns starting ``lr``, x = step). A metric logged twice in one epoch keeps its last value.
    """
    groups: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {
        "per step": {}, "loss per epoch": {}, "validation scores per epoch": {}, "learning rate": {}}
    for column in frame.columns:
        if column in ("epoch", "step") or frame[column].notna().sum() == 0:
            continue
        leaf = str(column).rsplit("/", 1)[-1]
        if leaf.startswith("lr") or str(column).startswith("lr"):
            groups["learning rate"][column] = _last_per(frame, column, "step")
        elif leaf.endswith("_step"):
            groups["per step"][column] = _last_per(frame, column, "step")
        elif "loss" in leaf or "focal" in leaf:
            groups["loss per epoch"][column] = _last_per(frame, column, "epoch")
        elif not leaf.startswith("ap_"):
            x, y = _last_per(frame, column, "epoch")
            if np.all((y >= 0) & (y <= 1)):
                groups["validation scores per epoch"][column] = (x, y)
    return {name: curves for name, curves in groups.items() if curves}


# ----------------------------------------------------------------------------- disagreement
@dataclass(frozen=True)
class Disagreements:
    """Where a cell model and the image labels disagree.

    Attributes
    ----------
    summary : DataFrame, one row per class id 0..18: ``class_id``, ``pos_cells`` (cells of images
        labelled with the class), ``pos_low`` (of those, P(class) < threshold), ``pos_called_negative``
        (of those, the cell's best class is Negative; 0 for Negative itself), ``neg_cells`` (cells of
        images without the class), ``neg_high`` (of those, P(class) >= threshold).
    missed : DataFrame, per class at most ``top_n`` cells of images labelled with the class, lowest
        P(class) first: ``ID, cell_id, class_id, p_class, best_class, p_best, called_negative,
        image_labels`` (tuple of class ids). The image says yes, the cell model says no.
    extra : same columns, per class at most ``top_n`` cells of images WITHOUT the class, highest
        P(class) first. The cell model says yes where the image label says no.
    n_cells, n_images : scored cells and images that have an image label. threshold : the P cut.
    """

    summary: "pd.DataFrame"
    missed: "pd.DataFrame"
    extra: "pd.DataFrame"
    n_cells: int
    n_images: int
    threshold: float


def _pick(order_rows: np.ndarray, class_id: int, keys: dict[str, np.ndarray], probs: np.ndarray,
          label_rows: list[tuple[int, ...]]) -> dict[str, list]:
    best = probs[order_rows].argmax(axis=1)
    return {
        "ID": keys["ID"][order_rows].tolist(), "cell_id": keys["cell_id"][order_rows].tolist(),
        "class_id": [class_id] * len(order_rows), "p_class": probs[order_rows, class_id].tolist(),
        "best_class": best.tolist(), "p_best": probs[order_rows, best].tolist(),
        "called_negative": (best == NEGATIVE).tolist(), "image_labels": [label_rows[r] for r in order_rows],
    }


def disagreements(scores: "pd.DataFrame", labels: "LabelTable", *, top_n: int = 10,
                  threshold: float = 0.5) -> Disagreements:
    """Compare each scored cell with its image's labels (cells of unlabelled images are left out).

    Parameters
    ----------
    scores : a per-cell score table (:mod:`cellcls.scores`; validated), any images.
    labels : image labels (:func:`cellcls.labels.read_train_csv`).
    top_n : cells listed per class and direction (>= 1). threshold : P(class) cut in [0, 1].

    A cell is "called Negative" when Negative is its highest-scored class. Ties in the ranking keep
    the score table's row order.
    """
    import pandas as pd

    from ..scores import score_matrix

    if top_n < 1 or not 0.0 <= threshold <= 1.0:
        raise ReportError(f"top_n must be >= 1 and threshold in [0, 1], got top_n={top_n!r}, threshold={threshold!r}")
    index = {image_id: k for k, image_id in enumerate(labels.ids)}
    ids = scores["ID"].astype(str).to_numpy(dtype=object)
    label_row = np.array([index.get(i, -1) for i in ids.tolist()], dtype=np.int64)
    keep = label_row >= 0
    probs = score_matrix(scores)[keep].astype(np.float64)
    truth = labels.targets[label_row[keep]].astype(bool)
    keys = {"ID": ids[keep], "cell_id": scores["cell_id"].to_numpy(np.int64)[keep]}
    label_rows = [tuple(int(c) for c in np.flatnonzero(t)) for t in truth]
    called_negative = probs.argmax(axis=1) == NEGATIVE if len(probs) else np.zeros(0, bool)
    summary, missed, extra = [], [], []
    for c in range(NUM_CLASSES):
        pos, p = truth[:, c], probs[:, c]
        summary.append({
            "class_id": c, "pos_cells": int(pos.sum()), "pos_low": int((pos & (p < threshold)).sum()),
            "pos_called_negative": 0 if c == NEGATIVE else int((pos & called_negative).sum()),
            "neg_cells": int((~pos).sum()), "neg_high": int((~pos & (p >= threshold)).sum())})
        rows = np.flatnonzero(pos)
        missed.append(_pick(rows[np.argsort(p[rows], kind="stable")[:top_n]], c, keys, probs, label_rows))
        rows = np.flatnonzero(~pos)
        extra.append(_pick(rows[np.argsort(-p[rows], kind="stable")[:top_n]], c, keys, probs, label_rows))

    def frame(parts: list[dict[str, list]]) -> "pd.DataFrame":
        columns = {k: sum((part[k] for part in parts), []) for k in parts[0]}
        return pd.DataFrame(columns).reset_index(drop=True)

    return Disagreements(summary=pd.DataFrame(summary), missed=frame(missed), extra=frame(extra),
                         n_cells=int(keep.sum()), n_images=len(set(keys["ID"].tolist())), threshold=float(threshold))
