"""A report folder a person opens in a browser: ``index.html`` + PNGs, no server, no script, no network.

:func:`write_report` takes whatever is at hand (evaluation JSONs, segmentation scores, training
logs, a per-cell score table with image labels, overlay inputs) and writes one section each:

* Per-class AP: bars per class, one colour per evaluation (``cellcls evaluate --json``), and mAPs.
* Overlays: a few :func:`cellcls.show.show_image` sheets (cells, top classes, truth marks).
* Segmentation: cell precision / recall / F1 of each ``cellcls segment-score --json``, per-image F1.
* Training curves: a Lightning CSVLogger ``metrics.csv`` per run (losses, validation scores).
* Cell model vs image labels: cells whose image label says a class that the model scores lowest
  (or calls Negative), and cells of images without a class that the model scores highest.

Modules: :mod:`~cellcls.report.draw` (bar and line charts, numpy + OpenCV), :mod:`~cellcls.report.data`
(reading inputs, the disagreement tables), :mod:`~cellcls.report.figures` (data to charts),
:mod:`~cellcls.report.html` (the page), :mod:`~cellcls.report.write` (the folder).
"""
from __future__ import annotations

from .data import (Disagreements, EvaluationSummary, disagreements, load_evaluation, load_segmentation,
                   read_training_log, training_curves)
from .draw import bar_chart, line_chart, nice_ticks
from .figures import ap_figure, curve_figure, disagreement_figure, per_image_f1_figure, segmentation_figure
from .write import SECTIONS, OverlaySpec, Report, write_report

__all__ = [
    "write_report", "OverlaySpec", "Report", "SECTIONS",
    "EvaluationSummary", "load_evaluation", "load_segmentation", "read_training_log", "training_curves",
    "Disagreements", "disagreements",
    "ap_figure", "segmentation_figure", "per_image_f1_figure", "curve_figure", "disagreement_figure",
    "bar_chart", "line_chart", "nice_ticks",
]
