"""Choosing a blend on validation cells: :func:`choose_blend`, scored by :func:`per_cell_map`. Pure numpy.

The blends themselves (rules, modifiers, :class:`infer.blend.BlendSpec`) are in :mod:`infer.blend`,
which re-exports every name of this module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from cellcls.errors import ParameterError
from cellcls.metric import average_precision

from .blend import EDGE_COLUMNS, BlendSpec, CellRows, blend  # noqa: F401 - EDGE_COLUMNS: named in a docstring

__all__ = ["BlendChoice", "per_cell_map", "choose_blend", "blend_grid"]


def per_cell_map(scores: np.ndarray, truth: np.ndarray, image_ids: Sequence[str] | np.ndarray) -> tuple[float, np.ndarray]:
    """mAP over cells as detections: the per-cell ranking part of the competition's mAP@0.6.

    Every cell is one detection per class with its own score, and matches its own true cell with
    IoU 1 (and no other). Then, as the metric does: per class, only images whose truth holds that
    class take part (other images' detections are ignored); all their cells are ranked by score,
    a cell labelled with the class is a true positive, AP = Σ Δrecall · precision (monotone
    precision), mAP = mean over classes with at least one true cell. This equals
    :func:`cellcls.metric.evaluate` exactly when the predicted masks are the true cells (every
    cell found, IoU >= 0.6 with its own); segmentation errors only lower the real score further.

    Parameters
    ----------
    scores : (N, 19) float
    truth : (N, 19) bool (or 0/1): the true labels of each cell.
    image_ids : (N,) image ID of each cell.

    Returns
    -------
    (mAP, per-class AP (19,) float64, NaN for classes without a true cell)
    """
    scores = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(truth).astype(bool)
    ids = np.asarray(image_ids)
    if scores.ndim != 2 or truth.shape != scores.shape or ids.shape != (scores.shape[0],):
        raise ParameterError(f"scores {scores.shape}, truth {truth.shape} and image_ids {ids.shape} must be "
                             "(N, C), (N, C) and (N,)")
    _, group = np.unique(ids, return_inverse=True)
    per_class = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        n_gt = int(truth[:, c].sum())
        if n_gt == 0:
            continue
        images_with_class = np.unique(group[truth[:, c]])
        rows = np.flatnonzero(np.isin(group, images_with_class))
        per_class[c] = average_precision(scores[rows, c], truth[rows, c], n_gt)
    scored = ~np.isnan(per_class)
    return (float(per_class[scored].mean()) if scored.any() else float("nan")), per_class


@dataclass(frozen=True)
class BlendChoice:
    """The result of :func:`choose_blend`: the best spec, its per-cell mAP, every candidate's score."""

    best: BlendSpec
    score: float
    scores: tuple[tuple[str, float], ...]

    def table(self) -> str:
        """One line per candidate, best marked with ``*``."""
        width = max(len(name) for name, _ in self.scores)
        return "\n".join(f"{'*' if name == str(self.best) else ' '} {name:<{width}}  {value:.4f}"
                         for name, value in self.scores)


def _image_rows(image_ids: np.ndarray) -> dict[str, np.ndarray]:
    groups: dict[str, list[int]] = {}
    for row, image_id in enumerate(image_ids.tolist()):
        groups.setdefault(str(image_id), []).append(row)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _subset(cells: CellRows, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {str(name): np.asarray(cells[name])[rows] for name in cells.keys()}


def choose_blend(
    candidates: Sequence["str | BlendSpec"],
    cell_scores: np.ndarray,
    image_scores: np.ndarray | Mapping[str, np.ndarray],
    truth: np.ndarray,
    cells: CellRows,
) -> BlendChoice:
    """Pick the blend with the best per-cell mAP on validation (out-of-fold) cells.

    Parameters
    ----------
    candidates : blend specs (text or :class:`BlendSpec`); on equal scores the EARLIER wins, so
        list the simplest first (``"cell"`` first makes "no blend" the default answer).
    cell_scores : (N, 19) float in [0, 1], out-of-fold cell scores, row i = ``cells`` row i.
    image_scores : (N, 19) (row i = the image score of row i's image) or dict ID -> (19,).
    truth : (N, 19) bool, the true labels of each cell (e.g. the synthetic world's truth/cells.csv).
    cells : cell-table rows of all validation cells (column ``ID`` plus what the candidates read).

    Returns
    -------
    BlendChoice (see :func:`per_cell_map` for the score).
    """
    specs = [BlendSpec.parse(c) for c in candidates]
    if not specs:
        raise ParameterError("choose_blend needs at least one candidate blend")
    cell = np.asarray(cell_scores)
    ids = np.asarray(cells["ID"]).astype(str)
    if cell.ndim != 2 or cell.shape[0] != len(ids):
        raise ParameterError(f"cell_scores {cell.shape} must have one row per cell row ({len(ids)})")
    groups = _image_rows(ids)
    per_image = {}
    for image_id, rows in groups.items():
        if isinstance(image_scores, Mapping):
            if image_id not in image_scores:
                raise ParameterError(f"image_scores has no entry for image {image_id!r}")
            per_image[image_id] = np.asarray(image_scores[image_id])
        else:
            block = np.asarray(image_scores)[rows]
            if not np.all(block == block[0]):
                raise ParameterError(f"image_scores rows of image {image_id!r} differ; give one image score per image")
            per_image[image_id] = block[0]
    pieces = {image_id: _subset(cells, rows) for image_id, rows in groups.items()}
    results = []
    for spec in specs:
        blended = np.empty(cell.shape, dtype=np.float32)
        for image_id, rows in groups.items():
            blended[rows] = blend(cell[rows], per_image[image_id], pieces[image_id], spec=spec)
        results.append((str(spec), per_cell_map(blended, truth, ids)[0]))
    values = np.array([v for _, v in results], dtype=np.float64)
    best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0  # first of equal maxima
    return BlendChoice(specs[best], float(values[best]), tuple(results))


def blend_grid(*, image_scale: float | None = None, border: bool = False,
               weights: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> list[BlendSpec]:
    """A default candidate list for :func:`choose_blend`, simplest first.

    ``cell``, ``mean`` at each weight, ``fourth`` (both Negative rules), ``product12``; with
    ``image_scale`` also each of them + ``area7`` at that scale; with ``border`` (the rows carry
    :data:`EDGE_COLUMNS`) also each + ``border4``.
    """
    rules = ["cell"] + [f"mean:w={w!r}" for w in weights] + ["fourth", "fourth:negative=blend", "product12"]
    specs = [BlendSpec.parse(r) for r in rules]
    extra: list[str] = []
    if image_scale is not None:
        extra.append(f"area7:image_scale={float(image_scale)!r}")
    if border:
        extra.append("border4")
    if extra:
        specs += [BlendSpec.parse(f"{r}+{m}") for m in extra for r in rules]
    return specs
