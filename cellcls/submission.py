"""Competition submission files: read, write (streaming, any row order) and validate.

File format (HPA_FACTS §2): a CSV with header ``ID,ImageWidth,ImageHeight,PredictionString``
and one row per test image ID, in the order of ``sample_submission.csv``. ImageWidth and
ImageHeight are the ORIGINAL image size in pixels. PredictionString holds space-separated
triplets ``class confidence mask``: class an integer 0..18, confidence a finite number in
[0, 1], mask a :mod:`cellcls.rle` mask string at the original size. One triplet per (cell,
class); a cell with several classes repeats its mask string. An image without any cell gets
the sample submission's own placeholder ``0 1 eNoLCAgIMAEABJkBdQ==`` (one triplet with an empty
mask, which the scorer drops): an empty field may be read as missing by the host's scorer. No field may contain a comma, so rows are plain text lines; a
reader also accepts fields wrapped in double quotes and extra columns (a solution file's
``Usage``), and a row may be longer than Python's csv default field limit.

NO_PREDICTION = "0 1 " + rle.EMPTY_MASK_FULL_FRAME  (written for images without cells)

API
---
    read_sample_submission(path) -> list[SampleRow]
    read_submission(path) -> Iterator[SubmissionRow]              streaming
    parse_prediction_string(text, image_id=...) -> list[Triplet]
    prediction_string(masks, scores, top_k=None, min_confidence=0.0) -> str
    SubmissionWriter(path, sample, top_k=None, min_confidence=0.0)  context manager, .add(...)
    validate_submission(path, sample) -> ValidationReport          (cellcls check-submission)
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import rle
from .classes import NUM_CLASSES
from .errors import MaskCodecError, SubmissionError

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

#: Column order of a submission file.
COLUMNS = ("ID", "ImageWidth", "ImageHeight", "PredictionString")

#: PredictionString of an image without any cell: the sample submission's own placeholder, one
#: triplet whose mask is empty (the scorer drops it). Safer than an empty field, which the host's
#: pandas-based scorer reads as NaN.
NO_PREDICTION = "0 1 " + rle.EMPTY_MASK_FULL_FRAME


@dataclass(frozen=True)
class SampleRow:
    """One test image: its ID and original size in pixels."""

    id: str
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in original pixels."""
        return (self.height, self.width)


@dataclass(frozen=True)
class SubmissionRow:
    """One row of a submission (or solution) file; ``line`` is its 1-based line number, 0 if built in memory."""

    id: str
    width: int
    height: int
    prediction_string: str
    line: int = 0

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) in original pixels."""
        return (self.height, self.width)


@dataclass(frozen=True)
class Triplet:
    """One prediction: class id 0..18, confidence in [0, 1], mask string at the original size."""

    class_id: int
    confidence: float
    mask: str


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _unquote(field: str) -> str:
    field = field.strip()
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field


def _csv_lines(path: str | os.PathLike, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Yield ``(line number, {column: value})`` per data row, or ``(line, message)`` for a bad row.

    Raises SubmissionError for a missing file, a binary/non-CSV file or a header without the
    required columns.
    """
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot open ({exc})") from exc
    with handle:
        try:
            header_line = handle.readline()
            if "\x00" in header_line:
                raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
            header = [_unquote(h) for h in header_line.rstrip("\r\n").split(",")]
            missing = [c for c in required if c not in header]
            if not header_line or missing:
                raise SubmissionError(
                    f"{path}: not a submission CSV: expected a header with columns {','.join(required)}, "
                    f"got {header_line[:120].rstrip()!r} (missing {', '.join(missing) or 'everything'})"
                )
            index = {name: header.index(name) for name in required}
            for number, text in enumerate(handle, start=2):
                text = text.rstrip("\r\n")
                if not text.strip():
                    continue
                if "\x00" in text:
                    raise UnicodeDecodeError("utf-8", b"", 0, 1, "NUL byte")
                fields = text.split(",")
                if len(fields) != len(header):
                    yield number, (f"line {number}: expected {len(header)} comma-separated fields "
                                   f"({','.join(header)}), got {len(fields)}")
                    continue
                yield number, {name: _unquote(fields[i]) for name, i in index.items()}
        except UnicodeDecodeError as exc:
            raise SubmissionError(f"{path}: not a text CSV file (binary content: {exc.reason})") from exc


def _parse_size(values: Mapping[str, str], line: int) -> tuple[int, int]:
    try:
        width, height = int(values["ImageWidth"]), int(values["ImageHeight"])
    except ValueError:
        raise SubmissionError(f"line {line}: ImageWidth/ImageHeight must be integers, got "
                              f"{values['ImageWidth']!r}/{values['ImageHeight']!r}") from None
    if width <= 0 or height <= 0:
        raise SubmissionError(f"line {line}: ImageWidth/ImageHeight must be positive, got {width}/{height}")
    return width, height


def read_sample_submission(path: str | os.PathLike) -> list[SampleRow]:
    """Test IDs and original sizes, in file order, from a ``sample_submission.csv``.

    Raises
    ------
    SubmissionError
        Missing file, wrong columns, bad size, duplicated ID.
    """
    rows: list[SampleRow] = []
    seen: dict[str, int] = {}
    for line, values in _csv_lines(path, COLUMNS[:3]):
        if isinstance(values, str):
            raise SubmissionError(f"{path}: {values}")
        image_id = values["ID"]
        if not image_id:
            raise SubmissionError(f"{path}: line {line}: empty ID")
        if image_id in seen:
            raise SubmissionError(f"{path}: line {line}: ID {image_id} already on line {seen[image_id]}")
        seen[image_id] = line
        try:
            width, height = _parse_size(values, line)
        except SubmissionError as exc:
            raise SubmissionError(f"{path}: {exc}") from None
        rows.append(SampleRow(image_id, width, height))
    if not rows:
        raise SubmissionError(f"{path}: the sample submission has no rows")
    return rows


def read_submission(path: str | os.PathLike) -> Iterator[SubmissionRow]:
    """Stream the rows of a submission or solution file (prediction strings are not parsed).

    Raises
    ------
    SubmissionError
        Missing file, wrong columns, a row with the wrong number of fields or a bad size.
    """
    for line, values in _csv_lines(path, COLUMNS):
        if isinstance(values, str):
            raise SubmissionError(f"{path}: {values}")
        try:
            width, height = _parse_size(values, line)
        except SubmissionError as exc:
            raise SubmissionError(f"{path}: {exc}") from None
        yield SubmissionRow(values["ID"], width, height, values["PredictionString"], line)


# --------------------------------------------------------------------------------------------
# Prediction strings
# --------------------------------------------------------------------------------------------


def _triplet_problem(tokens: Sequence[str], index: int, num_classes: int) -> tuple[str, str] | None:
    """(kind, message) for the triplet at ``index`` if its class or confidence is invalid."""
    cls, conf = tokens[3 * index], tokens[3 * index + 1]
    if not (cls.isascii() and cls.isdigit()) or int(cls) >= num_classes:
        return "bad-class", f"class {cls!r} is not an integer in 0..{num_classes - 1}"
    try:
        value = float(conf)
    except ValueError:
        return "bad-confidence", f"confidence {conf!r} is not a number"
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        return "bad-confidence", f"confidence {conf!r} is not a finite number in [0, 1]"
    return None


def split_prediction_string(
    text: str, *, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray, list[str], list[tuple[int, str, str]]]:
    """Tokenise a PredictionString without raising.

    Returns
    -------
    classes : (T,) int64, confidences : (T,) float64, masks : list of T str, problems
        ``problems`` lists ``(triplet index, kind, message)``; a triplet with a problem is
        still returned (class -1 / confidence NaN), so callers decide what to do. A trailing
        incomplete triplet is reported with kind ``bad-triplet-count`` and dropped.
    """
    tokens = text.split()
    n = len(tokens) // 3
    problems: list[tuple[int, str, str]] = []
    if len(tokens) % 3:
        problems.append((n, "bad-triplet-count", f"{len(tokens)} tokens is not a multiple of 3 "
                                                 "('class confidence mask' triplets); the last "
                                                 f"{len(tokens) % 3} token(s) are left over"))
    masks = tokens[2 : 3 * n : 3]
    try:
        classes = np.array(tokens[0 : 3 * n : 3], dtype=np.int64)
        confidences = np.array(tokens[1 : 3 * n : 3], dtype=np.float64)
        fast_ok = all(t.isascii() and t.isdigit() for t in tokens[0 : 3 * n : 3]) and bool(
            np.all((classes >= 0) & (classes < num_classes) & (confidences >= 0.0) & (confidences <= 1.0))
        )
    except (ValueError, OverflowError):
        fast_ok = False
    if not fast_ok:
        classes = np.full(n, -1, dtype=np.int64)
        confidences = np.full(n, np.nan)
        for i in range(n):
            problem = _triplet_problem(tokens, i, num_classes)
            if problem is None:
                classes[i], confidences[i] = int(tokens[3 * i]), float(tokens[3 * i + 1])
            else:
                problems.append((i, *problem))
        problems.sort(key=lambda p: p[0])
    return classes, confidences, masks, problems


def parse_prediction_string(text: str, *, image_id: str = "?", num_classes: int = NUM_CLASSES) -> list[Triplet]:
    """Triplets of a PredictionString; raises SubmissionError naming the ID and triplet index.

    Masks are not decoded here (see :func:`cellcls.rle.decode`).
    """
    classes, confidences, masks, problems = split_prediction_string(text, num_classes=num_classes)
    if problems:
        index, _, message = problems[0]
        raise SubmissionError(f"ID {image_id}: triplet {index}: {message}")
    return [Triplet(int(c), float(p), m) for c, p, m in zip(classes, confidences, masks)]


def format_confidence(value: float) -> str:
    """Up to 6 significant digits, no trailing zeros (``0.5``, ``1``, ``0.123457``, ``1e-07``)."""
    return f"{float(value) + 0.0:.6g}"  # + 0.0 turns -0.0 into 0.0


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
        raise SubmissionError(f"top_k must be an integer in 1..{NUM_CLASSES} or None (all classes), got {top_k!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise SubmissionError(f"min_confidence must be in [0, 1], got {min_confidence!r}")


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
    bounded for any number of images. At :meth:`close` every sample ID without a row gets an
    empty PredictionString and the file appears atomically (written as ``NAME.partial``,
    renamed). Leaving the ``with`` block by an exception discards everything.

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
        self._spill = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.spill-", dir=self.path.parent))
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
    ) -> None:
        """Add the predictions of one image.

        Parameters
        ----------
        image_id : a sample ID, given once.
        masks : dict[int, str] of mask strings at the original size, or an (h, w) integer label
            map at ANY scale (0 = background), upscaled here by nearest neighbour to the
            sample's (ImageHeight, ImageWidth) (see :func:`cellcls.rle.encode_label_map`).
        scores : (n_cells, 19) array, row i = i-th smallest cell id (for a label map: of
            ``np.unique(labels)`` without 0), or dict cell id -> (19,) confidences in [0, 1].
        """
        self._check_open()
        if image_id not in self._position:
            raise SubmissionError(f"ID {image_id!r} is not in the sample submission ({len(self.sample)} IDs)")
        if image_id in self._added:
            raise SubmissionError(f"ID {image_id}: added twice")
        sample = self.sample[self._position[image_id]]
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
        shutil.rmtree(self._spill, ignore_errors=True)
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
        shutil.rmtree(self._spill, ignore_errors=True)
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


def validate_submission(path: str | os.PathLike, sample: str | os.PathLike | Sequence[SampleRow], **options):
    """Check a submission file against the sample; see :func:`cellcls.submission_check.validate_submission`."""
    from .submission_check import validate_submission as _validate

    return _validate(path, sample, **options)


def _cell_ids(labels: np.ndarray) -> list[int]:
    """Ids > 0 present in a label map, ascending (bincount: much faster than np.unique on uint16)."""
    if labels.size and np.issubdtype(labels.dtype, np.integer) and 0 <= labels.min() and labels.max() < 1 << 20:
        ids = np.flatnonzero(np.bincount(labels.ravel()))
        return ids[ids > 0].tolist()
    return [int(k) for k in np.unique(labels) if k != 0]


def iter_rows(source: str | os.PathLike | Iterable[SubmissionRow]) -> Iterator[SubmissionRow]:
    """Rows of a file path, or the given rows unchanged."""
    if isinstance(source, (str, os.PathLike)):
        return read_submission(source)
    return iter(source)
