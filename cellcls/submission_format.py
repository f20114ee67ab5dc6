"""The submission file format: its columns, rows and prediction strings; reading, not writing.

File format (HPA_FACTS §2): a CSV with header ``ID,ImageWidth,ImageHeight,PredictionString``
and one row per test image ID, in the order of ``sample_submission.csv``. ImageWidth and
ImageHeight are the ORIGINAL image size in pixels. PredictionString holds space-separated
triplets ``class confidence mask``: class an integer 0..18, confidence a finite number in
[0, 1], mask a :mod:`cellcls.rle` mask string at the original size. One triplet per (cell,
class); a cell with several classes repeats its mask string. An image without any cell gets
the sample submission's own placeholder :data:`NO_PREDICTION` = ``0 1 eNoLCAgIMAEABJkBdQ==``
(one triplet with an empty mask, which the scorer drops): an empty field may be read as
missing by the host's scorer. No field may contain a comma, so rows are plain text lines; a
reader also accepts fields wrapped in double quotes and extra columns (a solution file's
``Usage``), and a row may be longer than Python's csv default field limit.

This module is the bottom of the submission modules: :mod:`cellcls.submission_check`
(validation) and :mod:`cellcls.submission` (writing; it re-exports the names here) import it,
and it imports neither.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import rle
from .classes import NUM_CLASSES
from .errors import SubmissionError

__all__ = [
    "COLUMNS",
    "NO_PREDICTION",
    "SampleRow",
    "SubmissionRow",
    "Triplet",
    "iter_csv_records",
    "read_sample_submission",
    "read_submission",
    "iter_rows",
    "split_prediction_string",
    "parse_prediction_string",
    "format_confidence",
]

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


def iter_csv_records(path: str | os.PathLike, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str] | str]]:
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
    for line, values in iter_csv_records(path, COLUMNS[:3]):
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
    for line, values in iter_csv_records(path, COLUMNS):
        if isinstance(values, str):
            raise SubmissionError(f"{path}: {values}")
        try:
            width, height = _parse_size(values, line)
        except SubmissionError as exc:
            raise SubmissionError(f"{path}: {exc}") from None
        yield SubmissionRow(values["ID"], width, height, values["PredictionString"], line)


def iter_rows(source: str | os.PathLike | Iterable[SubmissionRow]) -> Iterator[SubmissionRow]:
    """Rows of a file path, or the given rows unchanged."""
    if isinstance(source, (str, os.PathLike)):
        return read_submission(source)
    return iter(source)


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
