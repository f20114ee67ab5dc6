"""Pictures a person can read: one image, its cells, what was predicted for them and what is true.

:func:`render_sheet` draws a contact sheet: the RGBY composite at ``size`` pixels (longest side)
with cell outlines and each cell's top classes, beside a 2 x 2 grid of the four channels in grey
at half that size, under a header naming the image and what the colours mean. Rendering is pure
(numpy arrays in, an (H, W, 3) uint8 RGB array out); the loaders at the bottom read images, the
mask cache, score tables, submissions and a synthetic world's truth, and :func:`show_image` ties
them together for ``cellcls show``.

Display conventions
-------------------
Colours, the HPA convention: microtubules red, protein of interest green, nucleus blue, ER yellow;
yellow is ADDED to red and green. Each stretched channel is multiplied by its weight
(:data:`DEFAULT_WEIGHTS`, red 0.6, green 1, blue 0.8, yellow 0.4: the three reference channels are
dimmed so the protein, what the labels describe, stands out), then composite red = red + yellow,
green = green + yellow, blue = blue, each clipped at full scale.

Contrast: each channel is stretched on its own. The values at its ``percentiles`` (default 1 and
99.5, taken over the whole channel at the stored resolution) map to 0 and 1, linearly, clipped.
Percentiles are taken on the stored values, so 8-bit and 16-bit images (and any camera offset)
look the same. A channel whose high percentile does not exceed its low one (a nearly empty
channel) is stretched up to its maximum instead; a constant channel is black.

Cells: white outlines (the inner edge of every cell, at display resolution). Labels are the
``top_k`` classes of the cell with their confidences, short names from :data:`SHORT_NAMES`.
With truth, predicted cells are matched one to one to true cells by mask IoU >= 0.6 (the
metric's threshold); a predicted cell is WRONG when its best class is not among its true cell's
labels, or when no true cell matches it: red outline, and the true labels (or "no true cell")
under its prediction. True cells no predicted cell matched are outlined orange, "missed". With
truth but no predictions, each matched cell shows its true labels (a segmentation check). A label
that would cover an earlier one moves up or down, joined to its cell by a grey line.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .classes import CLASS_NAMES, NUM_CLASSES
from ._show_draw import (anchors, display_shape, interpolation, paint_marked, resize_labels, text_box, text_strip,
                         to_uint8, wrap)
from .errors import CacheError, ParameterError, ScoreTableError, SubmissionError

__all__ = [
    "SHORT_NAMES",
    "CHANNEL_TITLES",
    "DEFAULT_PERCENTILES",
    "DEFAULT_WEIGHTS",
    "CellCall",
    "DrawnLabel",
    "Rendering",
    "short_name",
    "stretch",
    "composite",
    "cell_borders",
    "match_cells",
    "render_overlay",
    "render_sheet",
    "calls_from_scores",
    "cells_from_submission",
    "read_truth",
    "show_image",
    "quantize",
    "write_png",
]

log = logging.getLogger(__name__)

#: Short class names for labels (at most 8 characters), indexed by class id.
SHORT_NAMES: tuple[str, ...] = (
    "Nucleopl", "NucMemb", "Nucleoli", "NucFibr", "Speckles", "NucBody", "ER", "Golgi", "IntFil",
    "Actin", "MicroTub", "Spindle", "Centros", "PlasMemb", "Mito", "Aggres", "Cytosol", "Vesicles",
    "Negative",
)
#: Titles of the grey channel panels, in image channel order (red, green, blue, yellow).
CHANNEL_TITLES: tuple[str, ...] = ("microtubules (red)", "protein (green)", "nucleus (blue)", "ER (yellow)")
#: Low and high percentiles of the per-channel contrast stretch.
DEFAULT_PERCENTILES: tuple[float, float] = (1.0, 99.5)
#: Display weights of the stretched channels red, green, blue, yellow (module docstring).
DEFAULT_WEIGHTS: tuple[float, float, float, float] = (0.6, 1.0, 0.8, 0.4)

_WHITE, _RED, _ORANGE, _GREY = (255, 255, 255), (255, 40, 40), (255, 165, 0), (200, 200, 200)
_TRUE_TEXT, _MISSED_TEXT = (255, 130, 130), (255, 200, 90)


@dataclass(frozen=True)
class CellCall:
    """What was predicted for one cell: ``classes`` = ((class id, confidence), ...), best first."""

    cell_id: int
    classes: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class DrawnLabel:
    """One text block drawn on the composite.

    Attributes
    ----------
    cell_id : id of the cell in the predicted map (``kind`` "missed": in the truth map).
    kind : "prediction", "wrong", "truth" (true labels of a cell, no prediction) or "missed".
    lines : the text lines as drawn.
    center : (x, y) of the block's centre, composite pixels.
    """

    cell_id: int
    kind: str
    lines: tuple[str, ...]
    center: tuple[int, int]


@dataclass(frozen=True)
class Rendering:
    """A rendered picture: ``image`` (H, W, 3) uint8 RGB, the labels drawn on it, the cells marked wrong."""

    image: np.ndarray
    labels: tuple[DrawnLabel, ...]
    wrong: frozenset[int] = frozenset()
    missed: frozenset[int] = frozenset()


def short_name(class_id: int) -> str:
    """Short name of class ``class_id`` (0..18), e.g. 16 -> ``"Cytosol"``."""
    if not 0 <= int(class_id) < NUM_CLASSES:
        raise ParameterError(f"class id must be in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    return SHORT_NAMES[int(class_id)]


# ----------------------------------------------------------------------------- pixels
def stretch(plane: np.ndarray, *, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> np.ndarray:
    """Contrast-stretch one channel: (H, W) uint8/uint16/float -> (H, W) float32 in [0, 1].

    The values at the low and high ``percentiles`` of ``plane`` map to 0 and 1 (see the module
    docstring for nearly empty and constant channels).
    """
    low_pct, high_pct = (float(p) for p in percentiles)
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ParameterError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    values = np.asarray(plane, dtype=np.float32)
    low, high = (float(v) for v in np.percentile(values, (low_pct, high_pct)))
    if high <= low:
        high = float(values.max())
    if high <= low:
        return np.zeros(values.shape, np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def composite(image: np.ndarray, *, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
              weights: Sequence[float] = DEFAULT_WEIGHTS) -> np.ndarray:
    """RGBY image (H, W, 4) in channel order red, green, blue, yellow -> (H, W, 3) uint8 RGB.

    Each channel is stretched (:func:`stretch`) and multiplied by its weight (red, green, blue,
    yellow, each >= 0); then red = microtubules + ER, green = protein + ER, blue = nucleus,
    clipped to full scale.
    """
    planes = _check_image(image)
    if len(weights) != 4 or not all(float(w) >= 0 for w in weights):
        raise ParameterError(f"weights are 4 numbers >= 0 (red, green, blue, yellow), got {weights!r}")
    red, green, blue, yellow = (float(w) * stretch(p, percentiles=percentiles) for w, p in zip(weights, planes))
    return to_uint8(np.stack([red + yellow, green + yellow, blue], axis=-1))


def cell_borders(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of a cell (label > 0) with a 4-neighbour of another label."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ParameterError(f"a label map is 2-D (H, W), got shape {labels.shape}")
    border = np.zeros(labels.shape, bool)
    rows, cols = labels[1:, :] != labels[:-1, :], labels[:, 1:] != labels[:, :-1]
    border[1:, :] |= rows
    border[:-1, :] |= rows
    border[:, 1:] |= cols
    border[:, :-1] |= cols
    return border & (labels > 0)


def match_cells(predicted: np.ndarray, truth: np.ndarray, *, iou_threshold: float = 0.6) -> dict[int, int]:
    """One-to-one matches ``{predicted id: truth id}`` of two (H, W) label maps with mask IoU >= threshold.

    Pairs are taken in descending IoU; each cell is used once (at a threshold above 0.5 a cell can
    have only one partner anyway).
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise ParameterError(f"label maps must be 2-D and of one shape, got {predicted.shape} and {truth.shape}")
    p, t = predicted.ravel().astype(np.int64), truth.ravel().astype(np.int64)
    area_p, area_t = np.bincount(p), np.bincount(t)
    both = (p > 0) & (t > 0)
    width = int(t.max(initial=0)) + 1
    pairs, inter = np.unique(p[both] * width + t[both], return_counts=True)
    pid, tid = pairs // width, pairs % width
    iou = inter / (area_p[pid] + area_t[tid] - inter)
    matches: dict[int, int] = {}
    taken: set[int] = set()
    for k in np.argsort(-iou, kind="stable"):
        if iou[k] < iou_threshold:
            break
        if int(pid[k]) not in matches and int(tid[k]) not in taken:
            matches[int(pid[k])] = int(tid[k])
            taken.add(int(tid[k]))
    return matches


# ----------------------------------------------------------------------------- drawing
def render_overlay(image: np.ndarray, *, cells: np.ndarray | None = None, calls: Sequence[CellCall] = (),
                   truth_cells: np.ndarray | None = None, truth_labels: Mapping[int, Sequence[int]] | None = None,
                   size: int = 1024, top_k: int = 2, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                   weights: Sequence[float] = DEFAULT_WEIGHTS, iou_threshold: float = 0.6) -> Rendering:
    """The composite at ``size`` px (longest side) with outlines, labels and the truth marks.

    Parameters
    ----------
    image : (H, W, 4) uint8/uint16, channels red, green, blue, yellow.
    cells : (H, W) integer label map of the predicted cells (0 = background), original pixels.
    calls : the predictions, one per cell id of ``cells`` (cells without one get no label).
    truth_cells : (H, W) integer label map of the true cells; with ``truth_labels`` ({truth id:
        class ids}) it turns on the right/wrong marking (module docstring).
    size : longest side of the composite, pixels. top_k : classes shown per cell (>= 1).

    Returns
    -------
    Rendering; ``image`` is (h, w, 3) uint8 RGB with max(h, w) == size.
    """
    import cv2

    planes = _check_image(image)
    if top_k < 1 or size < 16:
        raise ParameterError(f"top_k must be >= 1 and size >= 16, got top_k={top_k!r}, size={size!r}")
    shape = (planes.shape[1], planes.shape[2])
    display = display_shape(shape, size)
    rgb = composite(image, percentiles=percentiles, weights=weights)
    rgb = cv2.resize(rgb, display[::-1], interpolation=interpolation(shape, display))
    if cells is None:
        return Rendering(rgb, ())
    cells_d = resize_labels(_check_labels(cells, shape, "cells"), display)
    by_id = {c.cell_id: c for c in calls}
    truth = _Judged.empty()
    if truth_cells is not None:
        truth = _judge(cells, _check_labels(truth_cells, shape, "truth_cells"), by_id, truth_labels or {},
                       iou_threshold)
        truth_d = resize_labels(np.asarray(truth_cells), display)
        paint_marked(rgb, cell_borders(truth_d) & np.isin(truth_d, list(truth.missed)), _ORANGE)
    _paint(rgb, cell_borders(cells_d), _WHITE)
    paint_marked(rgb, cell_borders(cells_d) & np.isin(cells_d, list(truth.wrong)), _RED)
    font_scale = max(0.4, 0.5 * size / 1024)
    drawn, taken = [], []
    for cell_id, center in anchors(cells_d).items():
        block = _cell_text(cell_id, by_id.get(cell_id), truth, truth_labels or {}, top_k, truth_cells is not None)
        if block is not None:
            drawn.append(_draw_block(rgb, cell_id, block, center, font_scale, taken))
    if truth_cells is not None:
        for truth_id, center in anchors(truth_d).items():
            if truth_id in truth.missed:
                lines = [("missed: " + _names(truth_labels.get(truth_id, ()) if truth_labels else ()), _MISSED_TEXT)]
                drawn.append(_draw_block(rgb, truth_id, ("missed", lines), center, font_scale, taken))
    return Rendering(rgb, tuple(drawn), frozenset(truth.wrong), frozenset(truth.missed))


def render_sheet(image: np.ndarray, *, title: str = "", **overlay: object) -> Rendering:
    """:func:`render_overlay` beside the four channels in grey (2 x 2, each half size), under a header.

    ``overlay`` takes the options of :func:`render_overlay`. The sheet is 2 x ``size`` wide and
    ``size`` + header high (a square image); the header holds ``title``, the colour key and the short
    names of the classes drawn.
    """
    import cv2

    rendered = render_overlay(image, **overlay)
    comp = rendered.image
    h, w = comp.shape[:2]
    ph, pw = (h + 1) // 2, (w + 1) // 2
    percentiles = overlay.get("percentiles", DEFAULT_PERCENTILES)
    grid = np.zeros((2 * ph, 2 * pw, 3), np.uint8)
    font_scale = max(0.4, 0.5 * max(h, w) / 1024)
    for c, plane in enumerate(_check_image(image)):
        grey = to_uint8(stretch(plane, percentiles=percentiles))
        panel = cv2.resize(grey, (pw, ph), interpolation=interpolation(plane.shape, (ph, pw)))
        tile = np.repeat(panel[..., None], 3, axis=-1)
        text_box(tile, [(CHANNEL_TITLES[c], _WHITE)], (4, 4), font_scale, anchor="topleft")
        grid[(c // 2) * ph:(c // 2 + 1) * ph, (c % 2) * pw:(c % 2 + 1) * pw] = tile
    body = np.zeros((max(h, 2 * ph), w + 2 * pw, 3), np.uint8)
    body[:h, :w], body[:2 * ph, w:] = comp, grid
    header = _header(title, rendered, body.shape[1], font_scale, truth="truth_cells" in overlay
                     and overlay["truth_cells"] is not None)
    return Rendering(np.concatenate([header, body], axis=0), rendered.labels, rendered.wrong, rendered.missed)


# ----------------------------------------------------------------------------- drawing helpers
@dataclass(frozen=True)
class _Judged:
    matched: dict[int, int]
    wrong: set[int]
    missed: set[int]

    @staticmethod
    def empty() -> "_Judged":
        return _Judged({}, set(), set())


def _judge(cells: np.ndarray, truth_cells: np.ndarray, calls: Mapping[int, CellCall],
           truth_labels: Mapping[int, Sequence[int]], iou_threshold: float) -> _Judged:
    matched = match_cells(cells, truth_cells, iou_threshold=iou_threshold)
    wrong = set()
    for cell_id in (int(v) for v in np.unique(cells) if v > 0):
        call = calls.get(cell_id)
        if cell_id not in matched:
            wrong.add(cell_id)  # a cell no true cell matches is wrong, whatever its classes
        elif call is not None and call.classes and call.classes[0][0] not in truth_labels.get(matched[cell_id], ()):
            wrong.add(cell_id)
    missed = {int(v) for v in np.unique(truth_cells) if v > 0} - set(matched.values())
    return _Judged(matched, wrong, missed)


def _cell_text(cell_id: int, call: CellCall | None, judged: _Judged, truth_labels: Mapping[int, Sequence[int]],
               top_k: int, with_truth: bool) -> tuple[str, list[tuple[str, tuple[int, int, int]]]] | None:
    lines = [(f"{short_name(c)} {p:.2f}", _WHITE) for c, p in (call.classes[:top_k] if call else ())]
    if not with_truth:
        return ("prediction", lines) if lines else None
    true_id = judged.matched.get(cell_id)
    truth_line = "no true cell" if true_id is None else "true: " + _names(truth_labels.get(true_id, ()))
    if cell_id in judged.wrong:
        return "wrong", lines + [(truth_line, _TRUE_TEXT)]
    if not lines:
        return "truth", [(truth_line, _WHITE)]
    return "prediction", lines


def _names(class_ids: Sequence[int]) -> str:
    names = [short_name(c) for c in class_ids]
    return "|".join(names[:2]) + ("|..." if len(names) > 2 else "") if names else "?"


def _draw_block(rgb: np.ndarray, cell_id: int, block: tuple[str, list], center: tuple[int, int],
                font_scale: float, taken: list) -> DrawnLabel:
    kind, lines = block
    drawn_center = text_box(rgb, lines, center, font_scale, anchor="center", taken=taken)
    return DrawnLabel(cell_id, kind, tuple(text for text, _ in lines), drawn_center)


def _header(title: str, rendered: Rendering, width: int, font_scale: float, *, truth: bool) -> np.ndarray:
    words = {word for label in rendered.labels for line in label.lines for word in re.split(r"[ |:]+", line)}
    used = [name for name in SHORT_NAMES if name in words]
    key = "outlines: white = cell" + (", red = wrong (true labels below), orange = true cell missed" if truth else "")
    legend = ", ".join(f"{name} = {CLASS_NAMES[SHORT_NAMES.index(name)]}" for name in used)
    lines = [(title, _WHITE), (key, _WHITE)] + [(text, _GREY) for text in wrap(legend, width, font_scale)]
    return text_strip([line for line in lines if line[0]], width, font_scale)


def _paint(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    rgb[mask] = colour


def _check_image(image: np.ndarray) -> np.ndarray:
    """(4, H, W) view of an (H, W, 4) image."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 4 or min(image.shape[:2]) < 1:
        raise ParameterError(f"expected an (H, W, 4) RGBY image, got shape {image.shape}")
    return np.moveaxis(image, -1, 0)


def _check_labels(labels: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != shape or not np.issubdtype(labels.dtype, np.integer):
        raise ParameterError(f"{name} must be an integer label map of the image's shape {shape}, "
                             f"got {labels.dtype} {labels.shape}")
    return labels


# ----------------------------------------------------------------------------- loading
def calls_from_scores(frame: "object", *, image_id: str, mask_key: str, top_k: int,
                      where: str = "score table") -> list[CellCall]:
    """The ``top_k`` classes of every cell of ``image_id`` in a (validated) score table.

    Raises ScoreTableError when the rows of the image were made on other masks (``mask_key``).
    """
    rows = frame[frame["ID"] == image_id]
    keys = set(rows["mask_key"].astype(str))
    if keys and keys != {mask_key}:
        raise ScoreTableError(
            f"{where}: the scores of image {image_id} were made on masks {sorted(keys)[0]}, but the mask cache "
            f"holds {mask_key}: the cell ids would point at other cells. Show them with the mask cache they "
            "were scored on, or score this cache again")
    from .scores import score_matrix

    matrix = score_matrix(rows)
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :top_k]
    return [CellCall(int(cell), tuple((int(c), float(matrix[i, c])) for c in order[i]))
            for i, cell in enumerate(rows["cell_id"].to_numpy())]


def cells_from_submission(path: "str | os.PathLike[str]", image_id: str, *, top_k: int) -> tuple[np.ndarray, list[CellCall]]:
    """The cells of ``image_id`` in a submission: ((H, W) uint32 label map, calls).

    Each distinct mask string is one cell (ids 1.. in order of first appearance; where masks
    overlap the first one keeps the pixel); its triplets sorted by confidence give its classes.
    """
    from . import rle
    from .submission import parse_prediction_string, read_submission

    row = next((r for r in read_submission(path) if r.id == image_id), None)
    if row is None:
        raise SubmissionError(f"{path}: no row for image {image_id}; pass the submission made for this image set")
    by_mask: dict[str, list[tuple[int, float]]] = {}
    for triplet in parse_prediction_string(row.prediction_string, image_id=image_id):
        by_mask.setdefault(triplet.mask, []).append((triplet.class_id, triplet.confidence))
    labels = np.zeros(row.shape, np.uint32)
    calls = []
    for mask_text, classes in by_mask.items():
        mask = rle.decode(mask_text, row.shape) & (labels == 0)
        if not mask.any():
            continue
        cell_id = len(calls) + 1
        labels[mask] = cell_id
        ranked = sorted(classes, key=lambda item: -item[1])[:top_k]
        calls.append(CellCall(cell_id, tuple(ranked)))
    return labels, calls


def read_truth(truth_dir: "str | os.PathLike[str]", image_id: str) -> tuple[np.ndarray, dict[int, tuple[int, ...]]]:
    """A synthetic world's truth of one image: ((H, W) uint16 cell map, {cell id: class ids}).

    Reads ``truth/{ID}_cells.png`` and the image's rows of ``truth/cells.csv`` (see
    :mod:`cellcls.synth.world`).
    """
    import cv2
    import pandas as pd

    folder = Path(truth_dir)
    path, table = folder / f"{image_id}_cells.png", folder / "cells.csv"
    if not path.is_file() or not table.is_file():
        raise CacheError(f"truth of image {image_id}: need {path} and {table} (a `cellcls synth` world's truth/ "
                         "folder)")
    cells = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if cells is None or cells.ndim != 2:
        raise CacheError(f"{path}: not a 2-D label image")
    rows = pd.read_csv(table, dtype={"ID": str, "labels": str}, keep_default_na=False)
    rows = rows[rows["ID"] == image_id]
    labels = {int(r.cell_id): tuple(int(c) for c in str(r.labels).split("|") if c) for r in rows.itertuples()}
    return cells, labels


def show_image(images_dir: "str | os.PathLike[str]", image_id: str, *, masks: "str | os.PathLike[str] | None" = None,
               scores: "str | os.PathLike[str] | None" = None, submission: "str | os.PathLike[str] | None" = None,
               truth: "str | os.PathLike[str] | None" = None, **render: object) -> Rendering:
    """Load what ``cellcls show`` was given and :func:`render_sheet` it (``render``: its options).

    Cells come from the submission's masks when ``submission`` is given, else from the mask cache
    ``masks`` (read through :meth:`cellcls.masks.MaskCache.reader`, upscaled to the image size).
    """
    from .io import read_image
    from .masks import MaskCache

    if scores is not None and submission is not None:
        raise ParameterError("give --scores or --submission, not both")
    if scores is not None and masks is None:
        raise ParameterError("--scores needs --masks: score rows name cells of a mask-cache entry")
    image = read_image(images_dir, image_id)
    shape = image.shape[:2]
    top_k = int(render.get("top_k", 2))
    cells, calls, source = None, [], "cells only"
    if submission is not None:
        if masks is not None:
            log.warning("--masks is not used with --submission: the cells are the submission's masks")
        cells, calls = cells_from_submission(submission, image_id, top_k=top_k)
        source = f"submission {Path(submission).name}"
    elif masks is not None:
        reader = MaskCache(masks).reader()
        if image_id not in reader:
            raise CacheError(f"image {image_id} is not in mask cache {masks} ({len(reader)} entries); "
                             f"segment it with `cellcls segment --images {images_dir} --out {masks}`")
        entry = reader.read(image_id, upscale=True)
        cells = entry.cells
        if scores is not None:
            from .scores import read_scores

            calls = calls_from_scores(read_scores(scores), image_id=image_id, mask_key=entry.mask_key,
                                      top_k=top_k, where=str(scores))
            if entry.n_cells and not calls:
                raise ScoreTableError(f"{scores}: no rows for image {image_id}, which has {entry.n_cells} cells")
            source = f"scores {Path(scores).name}"
    if cells is not None and cells.shape != shape:
        raise CacheError(f"image {image_id}: the cells are {cells.shape[0]}x{cells.shape[1]} but the image is "
                         f"{shape[0]}x{shape[1]}: masks of another image set")
    truth_cells, truth_labels = read_truth(truth, image_id) if truth is not None else (None, None)
    if truth_cells is not None and truth_cells.shape != shape:
        raise CacheError(f"truth of image {image_id} is {truth_cells.shape}, the image {shape}: another world")
    if truth_cells is not None and not calls:
        source = "none, true labels shown"
    n_cells = 0 if cells is None else len(np.unique(cells)) - int((cells == 0).any())
    title = f"{image_id}  |  {shape[1]}x{shape[0]} px, {n_cells} cells  |  labels: {source}"
    return render_sheet(image, title=title, cells=cells, calls=calls, truth_cells=truth_cells,
                        truth_labels=truth_labels, **render)


def quantize(rgb: np.ndarray, levels: int) -> np.ndarray:
    """``rgb`` (uint8) with ``levels`` evenly spaced values per channel (2..256; 256 = unchanged).

    Fewer levels make smaller PNGs of noisy microscopy (32 levels: about half the bytes on the
    synthetic images) at no visible cost to labels and outlines.
    """
    if not 2 <= int(levels) <= 256:
        raise ParameterError(f"levels must be in 2..256, got {levels!r}")
    if int(levels) == 256:
        return np.array(rgb, dtype=np.uint8)
    step = 255.0 / (int(levels) - 1)
    return (np.round(np.asarray(rgb, np.float32) / step) * step + 0.5).astype(np.uint8)


def write_png(path: "str | os.PathLike[str]", rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) uint8 RGB array as PNG (zlib level 9); the folder is created."""
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    path.write_bytes(data.tobytes())
    return path
