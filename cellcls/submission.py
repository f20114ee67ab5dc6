"""Writing competition submission files (streaming, any row order); reading and validation re-exported.

The file format and its readers live in :mod:`cellcls.submission_format`, the row-by-row
validation in :mod:`cellcls.submission_check`; this module writes, and re-exports both so that
``from cellcls.submission import ...`` gives the whole API. The imports go one way:
``submission`` -> ``submission_check`` -> ``submission_format``.

API
---
    read_sample_submission(path) -> list[SampleRow]
    read_submission(path) -> Iterator[SubmissionRow]              streaming
    parse_prediction_string(text, image_id=...) -> list[Triplet]
    prediction_string(masks, scores, top_k=None, min_confidence=0.0) -> str
    SubmissionWriter(path, sample, top_k=None, min_confidence=0.0)  context manager,
        .add(image_id, masks, scores, *, cell_ids=None, mask_key=None, expected_mask_key=None)
    validate_submission(path, sample) -> ValidationReport          (cellcls check-submission)

NO_PREDICTION = "0 1 " + rle.EMPTY_MASK_FULL_FRAME  (written for images without cells)
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from . import rle
from .atomic import make_owned_dir, remove_stale_dirs
from .classes import NUM_CLASSES
from .errors import MaskCodecError, ParameterError, SubmissionError
from .submission_check import validate_submission
from .submission_format import (
    COLUMNS,
    NO_PREDICTION,
    SampleRow,
    SubmissionRow,
    Triplet,
    format_confidence,
    iter_rows,
    parse_prediction_string,
    read_sample_submission,
    read_submission,
    split_prediction_string,
)

__all__ = [
    "COLUMNS",
    "SampleRow",
    "SubmissionRow",
    "Triplet",
    "read_sample_submission",
    "read_submission",
    "parse_prediction_string",
    "prediction_string",
    "format_confidence",
    "SubmissionWriter",
    "validate_submission",
    "iter_rows",
    "split_prediction_string",
    "NO_PREDICTION",
]

log = logging.getLogger(__name__)


def _check_scores(scores: np.ndarray, image_id: str, cell_ids: Sequence[int]) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    bad = ~(np.isfinite(scores) & (scores >= 0.0) & (scores <= 1.0))
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise SubmissionError(f"ID {image_id}: cell {cell_ids[row]} class {col}: confidence {scores[row, col]!r} "
                              f"is not a finite number in [0, 1] ({int(bad.sum())} such values); "
                              "apply a sigmoid/clip before writing")
    return scores


def _check_options(top_k: int | None, min_confidence: float) -> None:
    if top_k is not None and not (isinstance(top_k, (int, np.integer)) and 1 <= top_k <= NUM_CLASSES):
        raise ParameterError(f"top_k must be an integer in 1..{NUM_CLASSES} or None (all classes), got {top_k!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ParameterError(f"min_confidence must be in [0, 1], got {min_confidence!r}")


def _checked_area(mask: str, image_id: str, cell: int) -> int:
    try:
        return rle.area(mask)
    except MaskCodecError as exc:
        raise SubmissionError(f"ID {image_id}: cell {cell}: {exc}") from None


def prediction_string(
    masks: Mapping[int, str],
    scores: np.ndarray | Mapping[int, Sequence[float]],
    *,
    top_k: int | None = None,
    min_confidence: float = 0.0,
    image_id: str = "?",
) -> str:
    """The PredictionString of one image.

    Parameters
    ----------
    masks : dict[int, str]
        Cell id -> mask string at the original size (e.g. from :func:`cellcls.rle.encode_label_map`).
    scores : (n_cells, C) array or dict[int, (C,) array]
        Confidences in [0, 1]. An array's row i belongs to the i-th SMALLEST cell id of ``masks``
        (row 0 = cell 1 for cells 1..N). A dict must have exactly the keys of ``masks``.
    top_k : int, optional
        Write only the k most confident classes of each cell (default: all C classes).
    min_confidence : float
        Drop triplets whose confidence is below this.

    Returns
    -------
    str
        Triplets cell by cell (ascending id), classes ascending within a cell; empty masks are
        skipped with a warning (the scorer drops them anyway).
    """
    cell_ids = sorted(int(k) for k in masks)
    if isinstance(scores, Mapping):
        if set(int(k) for k in scores) != set(cell_ids):
            raise SubmissionError(f"ID {image_id}: score keys {sorted(scores)[:10]} differ from mask cell ids "
                                  f"{cell_ids[:10]}")
        rows = [np.asarray(scores[k], dtype=np.float64) for k in cell_ids]
        table = np.stack(rows) if rows else np.zeros((0, NUM_CLASSES))
    else:
        table = np.asarray(scores, dtype=np.float64)
        if table.ndim != 2 or table.shape[0] != len(cell_ids):
            raise SubmissionError(f"ID {image_id}: scores must be (n_cells={len(cell_ids)}, n_classes), "
                                  f"got shape {table.shape}")
    if table.shape[1] != NUM_CLASSES:
        raise SubmissionError(f"ID {image_id}: scores must have one column per class ({NUM_CLASSES}), "
                              f"got {table.shape[1]}")
    table = _check_scores(table, image_id, cell_ids)
    _check_options(top_k, min_confidence)
    parts: list[str] = []
    try:
        areas = rle.areas([masks[cell] for cell in cell_ids]).tolist()
    except MaskCodecError:
        areas = [_checked_area(masks[cell], image_id, cell) for cell in cell_ids]
    for row, (cell, area) in enumerate(zip(cell_ids, areas)):
        mask = masks[cell]
        if area == 0:
            log.warning("ID %s: cell %d has an empty mask; its triplets are not written", image_id, cell)
            continue
        classes = range(table.shape[1])
        if top_k is not None:
            classes = sorted(np.argsort(-table[row], kind="stable")[:top_k].tolist())
        for cls in classes:
            conf = table[row, cls]
            if conf >= min_confidence:
                parts.append(f"{cls} {format_confidence(conf)} {mask}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class SubmissionWriter:
    """Write a submission row by row, in sample order whatever order the rows come in.

    Rows for the next sample ID go straight to disk; rows that arrive early are spilled to a
    temporary folder beside the output and copied in when their turn comes, so memory stays
    bounded for any number of images. The folder, ``.NAME.spill-{pid}-{random}``, is locked while
    the writer is open (:func:`cellcls.atomic.make_owned_dir`); a writer killed with ``kill -9``
    leaves it, and the next writer of the same output removes it (only such folders whose lock is
    free; see :func:`cellcls.atomic.remove_stale_dirs`). At :meth:`close` every sample ID without a
    row gets the :data:`NO_PREDICTION` placeholder and the file appears atomically (written as
    ``NAME.partial``, renamed). Leaving the ``with`` block by an exception discards everything.

    Parameters
    ----------
    path : path of the CSV to write.
    sample : path of ``sample_submission.csv`` or its rows (:func:`read_sample_submission`).
    top_k, min_confidence : see :func:`prediction_string`.

    Examples
    --------
    >>> with SubmissionWriter("submission.csv", "sample_submission.csv") as writer:  # doctest: +SKIP
    ...     writer.add(image_id, labels_512, scores)      # label map at any scale, (n_cells, 19)
    ...     writer.add(other_id, {1: mask_1, 2: mask_2}, scores_2)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample: str | os.PathLike | Sequence[SampleRow],
        *,
        top_k: int | None = None,
        min_confidence: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.sample = list(read_sample_submission(sample) if isinstance(sample, (str, os.PathLike)) else sample)
        self._position = {row.id: i for i, row in enumerate(self.sample)}
        if len(self._position) != len(self.sample):
            raise SubmissionError("the sample rows repeat an ID; each test ID must appear once")
        unsafe = [row.id for row in self.sample if not row.id or set(row.id) & set(',"\r\n')]
        if unsafe:
            raise SubmissionError(f"sample ID {unsafe[0]!r} is empty or holds a comma, quote or newline")
        _check_options(top_k, min_confidence)
        self.top_k, self.min_confidence = top_k, min_confidence
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._out = open(self._partial, "w", encoding="ascii", newline="")
        self._out.write(",".join(COLUMNS) + "\n")
        prefix = f".{self.path.name}.spill-"
        remove_stale_dirs(self.path.parent, prefix)  # left by a killed run (lock free); live writers' kept
        self._spill_dir = make_owned_dir(self.path.parent, prefix)
        self._spill = self._spill_dir.path
        self._next = 0
        self._added: set[str] = set()
        self._spilled: set[int] = set()
        self._closed = False

    # context manager ---------------------------------------------------------------------
    def __enter__(self) -> "SubmissionWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # rows --------------------------------------------------------------------------------
    def add(
        self,
        image_id: str,
        masks: Mapping[int, str] | np.ndarray,
        scores: np.ndarray | Mapping[int, Sequence[float]],
        *,
        cell_ids: Sequence[int] | np.ndarray | None = None,
        mask_key: str | None = None,
        expected_mask_key: str | None = None,
    ) -> None:
        """Add the predictions of one image.

        Parameters
        ----------
        image_id : a sample ID, given once.
        masks : dict[int, str] of mask strings at the original size, or an (h, w) integer label
            map at ANY scale (0 = background), upscaled here by nearest neighbour to the
            sample's (ImageHeight, ImageWidth) (see :func:`cellcls.rle.encode_label_map`).
        scores : (n_cells, 19) array, or dict cell id -> (19,) confidences in [0, 1]. An array's
            row i is cell ``cell_ids[i]``; without ``cell_ids``, the i-th smallest cell id (for a
            label map: of ``np.unique(labels)`` without 0).
        cell_ids : (n_cells,) ints, optional
            The cell id of each score row (any order). The cells of ``masks`` are matched by id:
            a cell without a score row, or a score row for a cell not in ``masks``, raises
            SubmissionError naming the image and the ids. Prefer it to the positional form.
        mask_key, expected_mask_key : str, optional (both or neither)
            The mask-cache key the scores were computed on (e.g. the score table's ``mask_key``)
            and the key of the masks being encoded; different keys raise SubmissionError (the
            cell ids would index other cells).
        """
        self._check_open()
        if image_id not in self._position:
            raise SubmissionError(f"ID {image_id!r} is not in the sample submission ({len(self.sample)} IDs)")
        if image_id in self._added:
            raise SubmissionError(f"ID {image_id}: added twice")
        sample = self.sample[self._position[image_id]]
        _check_mask_key(image_id, mask_key, expected_mask_key)
        if cell_ids is not None:
            present = _cell_ids(masks) if isinstance(masks, np.ndarray) else sorted(int(k) for k in masks)
            scores = _scores_by_id(image_id, cell_ids, scores, present)
        if isinstance(masks, np.ndarray):
            present = _cell_ids(masks)
            strings = rle.encode_label_map(masks, out_shape=sample.shape)
            if isinstance(scores, Mapping):
                if set(int(k) for k in scores) != set(present):
                    raise SubmissionError(f"ID {image_id}: score keys {sorted(scores)[:10]} differ from the "
                                          f"label map's cell ids {present[:10]}")
            else:
                table = np.asarray(scores)
                if table.ndim != 2 or table.shape[0] != len(present):
                    raise SubmissionError(f"ID {image_id}: the label map has {len(present)} cells but scores "
                                          f"have shape {table.shape}; expected ({len(present)}, n_classes)")
                scores = {cell: table[i] for i, cell in enumerate(present)}
            scores = {cell: scores[cell] for cell in strings}
            masks = strings
        else:
            self._check_mask_sizes(image_id, masks, sample)
        text = prediction_string(masks, scores, top_k=self.top_k, min_confidence=self.min_confidence,
                                 image_id=image_id) or NO_PREDICTION
        self._added.add(image_id)
        self._put(self._position[image_id], f"{sample.id},{sample.width},{sample.height},{text}\n")

    @staticmethod
    def _check_mask_sizes(image_id: str, masks: Mapping[int, str], sample: SampleRow) -> None:
        try:
            rle.to_coco_many(list(masks.values()), sample.shape)
        except MaskCodecError:
            for cell, text in masks.items():  # name the culprit
                try:
                    rle.to_coco_with_area(text, sample.shape)
                except MaskCodecError as exc:
                    raise SubmissionError(f"ID {image_id}: cell {cell}: {exc}") from None
            raise

    def _put(self, position: int, line: str) -> None:
        if position != self._next:
            (self._spill / f"{position:09d}").write_text(line, encoding="ascii")
            self._spilled.add(position)
            return
        self._out.write(line)
        self._next += 1
        while self._next in self._spilled:
            self._drain(self._next)
            self._next += 1

    def _drain(self, position: int) -> None:
        spilled = self._spill / f"{position:09d}"
        with open(spilled, encoding="ascii") as src:
            shutil.copyfileobj(src, self._out)
        spilled.unlink()
        self._spilled.discard(position)

    # end ---------------------------------------------------------------------------------
    @property
    def missing(self) -> list[str]:
        """Sample IDs not added yet."""
        return [row.id for row in self.sample if row.id not in self._added]

    def close(self) -> Path:
        """Fill IDs without a row with :data:`NO_PREDICTION`, publish the file, return its path."""
        if self._closed:
            return self.path
        missing = self.missing
        for position in range(self._next, len(self.sample)):
            if position in self._spilled:
                self._drain(position)
            else:
                row = self.sample[position]
                self._out.write(f"{row.id},{row.width},{row.height},{NO_PREDICTION}\n")
        self._out.close()
        os.replace(self._partial, self.path)
        self._spill_dir.remove()
        self._closed = True
        if missing:
            log.warning("%d of %d sample IDs had no predictions and got the empty placeholder (first: %s)",
                        len(missing), len(self.sample), missing[0])
        log.info("wrote %s (%d rows)", self.path, len(self.sample))
        return self.path

    def abort(self) -> None:
        """Discard everything written so far; the output file is not created or replaced."""
        if self._closed:
            return
        self._out.close()
        self._partial.unlink(missing_ok=True)
        self._spill_dir.remove()
        self._closed = True

    def __del__(self) -> None:
        # A writer dropped without close() must not leave temporary files or publish half a file.
        try:
            if not self._closed:
                log.warning("%s: SubmissionWriter dropped without close(); nothing was written "
                            "(use it as a context manager)", self.path)
                self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort only
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise SubmissionError(f"{self.path}: the writer is closed")


def _check_mask_key(image_id: str, mask_key: str | None, expected_mask_key: str | None) -> None:
    if (mask_key is None) != (expected_mask_key is None):
        raise ParameterError(f"ID {image_id}: give both mask_key (of the scores) and expected_mask_key (of the "
                             f"masks) or neither, got mask_key={mask_key!r}, expected_mask_key={expected_mask_key!r}")
    if mask_key is not None and mask_key != expected_mask_key:
        raise SubmissionError(f"ID {image_id}: the scores were computed on masks {mask_key!r} but the masks being "
                              f"encoded are {expected_mask_key!r}; their cell ids differ: score the current masks "
                              "again or write the masks the scores belong to")


def _scores_by_id(image_id: str, cell_ids: Sequence[int] | np.ndarray,
                  scores: np.ndarray | Mapping[int, Sequence[float]], present: list[int]) -> dict[int, np.ndarray]:
    """``{cell id: (C,) scores}`` from score rows paired with explicit ids; ids must equal ``present``."""
    if isinstance(scores, Mapping):
        raise ParameterError(f"ID {image_id}: cell_ids pairs ids with the rows of a score ARRAY; "
                             "scores given as a dict already carry their ids (drop cell_ids)")
    ids = [int(k) for k in np.asarray(cell_ids).reshape(-1).tolist()]
    table = np.asarray(scores)
    if table.ndim != 2 or table.shape[0] != len(ids):
        raise SubmissionError(f"ID {image_id}: {len(ids)} cell ids but scores of shape {table.shape}; "
                              f"expected ({len(ids)}, n_classes), row i = cell_ids[i]")
    if len(set(ids)) != len(ids):
        repeated = sorted({k for k in ids if ids.count(k) > 1})
        raise SubmissionError(f"ID {image_id}: cell_ids repeat {repeated[:10]}; each cell needs one score row")
    missing = sorted(set(present) - set(ids))
    if missing:
        raise SubmissionError(f"ID {image_id}: no score for cell(s) {missing[:10]} of the masks "
                              f"({len(missing)} of {len(present)}); score every cell of these masks")
    extra = sorted(set(ids) - set(present))
    if extra:
        raise SubmissionError(f"ID {image_id}: scores for cell(s) {extra[:10]} are not in the masks "
                              f"({len(extra)} ids); were the scores computed on other masks?")
    return {cell: table[row] for row, cell in enumerate(ids)}


def _cell_ids(labels: np.ndarray) -> list[int]:
    """Ids > 0 present in a label map, ascending (bincount: much faster than np.unique on uint16)."""
    if labels.size and np.issubdtype(labels.dtype, np.integer) and 0 <= labels.min() and labels.max() < 1 << 20:
        ids = np.flatnonzero(np.bincount(labels.ravel()))
        return ids[ids > 0].tolist()
    return [int(k) for k in np.unique(labels) if k != 0]
