"""The report's figures: its data (see :mod:`cellcls.report.data`) in, (H, W, 3) uint8 RGB arrays out.

Class names are the short ones of :data:`cellcls.show.SHORT_NAMES`, with the class id.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..classes import NUM_CLASSES
from ..show import SHORT_NAMES
from .data import Disagreements, EvaluationSummary
from .draw import bar_chart, line_chart

__all__ = ["class_labels", "omitted_classes", "ap_figure", "segmentation_figure", "per_image_f1_figure", "curve_figure",
           "disagreement_figure"]


def class_labels() -> list[str]:
    """``"0 Nucleopl"`` .. ``"18 Negative"``: the category names of every per-class figure."""
    return [f"{c} {SHORT_NAMES[c]}" for c in range(NUM_CLASSES)]


def _shown(keep: np.ndarray) -> np.ndarray:
    """Class ids to draw: those where ``keep`` holds, or all 19 when it holds nowhere."""
    ids = np.flatnonzero(keep)
    return ids if ids.size else np.arange(NUM_CLASSES)


def omitted_classes(shown: np.ndarray) -> list[str]:
    """``"11 Spindle"``-style names of the classes a per-class figure left out."""
    return [class_labels()[c] for c in range(NUM_CLASSES) if c not in set(shown.tolist())]


def ap_figure(evaluations: Mapping[str, EvaluationSummary], *, width: int = 900) -> tuple[np.ndarray, np.ndarray]:
    """Per-class AP bars, one colour per evaluation (legend: name and mAP); "n/a" = no ground truth.

    Classes without ground truth in every evaluation are left out. Returns (image, class ids drawn).
    """
    shown = _shown(np.any([np.isfinite(e.ap) for e in evaluations.values()], axis=0))
    series = {f"{name} (mAP {e.map:.3f})": e.ap[shown] for name, e in evaluations.items()}
    names = class_labels()
    return bar_chart([names[c] for c in shown], series, title="AP per class at mask IoU 0.6", value_label="AP",
                     value_max=1.0, width=width), shown


def segmentation_figure(results: Mapping[str, Mapping[str, Any]], *, width: int = 580) -> np.ndarray:
    """Cell precision, recall and F1 of each segmentation, one colour per segmentation."""
    series = {name: [float(r["precision"]), float(r["recall"]), float(r["f1"])] for name, r in results.items()}
    return bar_chart(["precision", "recall", "F1"], series, title="cell detection at mask IoU 0.6",
                     value_max=1.0, width=width, bar_px=16)


def per_image_f1_figure(results: Mapping[str, Mapping[str, Any]], *, width: int = 620,
                        height: int = 300) -> np.ndarray | None:
    """Each segmentation's per-image F1, sorted ascending (x = share of images); None when none has any."""
    series = {}
    for name, r in results.items():
        f1 = np.sort(np.array(list((r.get("per_image") or {}).values()), dtype=np.float64))
        if f1.size:
            series[name] = ((np.arange(f1.size) + 0.5) / f1.size, f1)
    if not series:
        return None
    return line_chart(series, title="per-image cell F1, worst images left", x_label="share of images",
                      y_label="F1", y_range=(0.0, 1.0), width=width, height=height)


def curve_figure(title: str, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, x_label: str,
                 width: int = 580, height: int = 320) -> np.ndarray:
    """One group of :func:`~cellcls.report.data.training_curves` as a line chart (scores on a 0..1 axis)."""
    scores = all(np.all((y >= 0) & (y <= 1)) for _, y in curves.values()) and "loss" not in title
    return line_chart(curves, title=title, x_label=x_label, y_range=(0.0, 1.0) if scores else None,
                      width=width, height=height)


def disagreement_figure(found: Disagreements, *, width: int = 900) -> tuple[np.ndarray, np.ndarray]:
    """Per class: share of cells in images WITH the class scored below the threshold, and share of
    cells in images WITHOUT it scored at or above (n/a where no cell is in that group).

    Classes no labelled image carries and no cell scores at or above the threshold are left out.
    Returns (image, class ids drawn).
    """
    s = found.summary
    pos, neg = s["pos_cells"].to_numpy(np.float64), s["neg_cells"].to_numpy(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(pos > 0, s["pos_low"].to_numpy(np.float64) / pos, np.nan)
        high = np.where(neg > 0, s["neg_high"].to_numpy(np.float64) / neg, np.nan)
    shown = _shown((pos > 0) | (s["neg_high"].to_numpy() > 0))
    t = found.threshold
    series = {f"image says yes, P < {t:g}": low[shown], f"image says no, P >= {t:g}": high[shown]}
    names = class_labels()
    return bar_chart([names[c] for c in shown], series, title="cells where the cell model and the image label "
                     "disagree", value_label="share of cells", value_max=1.0, width=width), shown
