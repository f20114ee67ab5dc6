"""Validate a submission file against the sample submission (``cellcls check-submission``).

Every problem is reported with its line, ID and triplet index, not only the first one. The
kinds (``PROBLEM_KINDS``) are stable names a script can count on. Masks are checked from their
run lengths (format, size H*W, non-empty) without decoding full frames; a mask string repeated
over a cell's classes is checked once.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from . import rle
from .classes import NUM_CLASSES
from .errors import MaskCodecError
from .submission_format import (
    COLUMNS,
    NO_PREDICTION,
    SampleRow,
    iter_csv_records,
    read_sample_submission,
    split_prediction_string,
)

__all__ = ["PROBLEM_KINDS", "Problem", "ValidationReport", "validate_submission"]

#: Problem kind -> what it means.
PROBLEM_KINDS: dict[str, str] = {
    "bad-row": "a line without exactly one field per header column",
    "unknown-id": "an ID that is not in the sample submission",
    "duplicate-id": "an ID given on more than one row",
    "missing-id": "a sample ID without a row",
    "bad-size": "ImageWidth/ImageHeight not positive integers",
    "size-mismatch": "ImageWidth/ImageHeight differ from the sample submission's",
    "bad-triplet-count": "a PredictionString whose tokens are not 'class confidence mask' triplets",
    "bad-class": "a class that is not an integer in 0..18",
    "bad-confidence": "a confidence that is not a finite number in [0, 1]",
    "bad-mask": "a mask string that is not base64 / zlib / COCO RLE",
    "mask-size": "a mask whose runs do not cover ImageHeight x ImageWidth pixels",
    "empty-mask": "a mask without any pixel (the scorer drops it)",
}


@dataclass(frozen=True)
class Problem:
    """One problem: its kind (a key of PROBLEM_KINDS), line, ID, triplet index (or None) and message."""

    kind: str
    line: int
    image_id: str
    triplet: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "end of file"
        what = f"ID {self.image_id}" + (f" triplet {self.triplet}" if self.triplet is not None else "")
        return f"{where}: {what}: [{self.kind}] {self.message}"


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_submission`; ``problems`` holds the first ``max_listed`` only."""

    path: Path
    rows: int = 0
    triplets: int = 0
    cells: int = 0
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    max_listed: int = 50

    @property
    def ok(self) -> bool:
        """True if no problem was found."""
        return not self.counts

    @property
    def n_problems(self) -> int:
        return sum(self.counts.values())

    def add(self, kind: str, line: int, image_id: str, triplet: int | None, message: str) -> None:
        self.counts[kind] += 1
        if len(self.problems) < self.max_listed:
            self.problems.append(Problem(kind, line, image_id, triplet, message))

    def summary(self) -> str:
        """Several lines: the listed problems, counts per kind, or the OK line."""
        if self.ok:
            return (f"OK: {self.path}: {self.rows} rows, {self.triplets} triplets, "
                    f"{self.cells} cells (distinct non-empty masks)")
        lines = [str(p) for p in self.problems]
        if self.n_problems > len(self.problems):
            lines.append(f"... {self.n_problems - len(self.problems)} more problems not listed")
        lines.append(f"INVALID: {self.path}: {self.n_problems} problems in {self.rows} rows, "
                     f"{self.triplets} triplets:")
        for kind, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {kind:<18} {count:>8}  {PROBLEM_KINDS[kind]}")
        return "\n".join(lines)


_EMPTY = ("empty-mask", "the mask has no pixel; drop the triplet (or pass --allow-empty-masks)")


def _mask_problem(text: str, shape: tuple[int, int], allow_empty: bool) -> tuple[str, str] | None:
    try:
        counts = rle.decode_counts(text)
    except MaskCodecError as exc:
        return "bad-mask", str(exc)
    h, w = shape
    foreground = int(counts[1::2].sum())
    if foreground == 0:
        if allow_empty:
            return None
        return _EMPTY
    total = int(counts.sum())
    if total != h * w:
        return "mask-size", (f"the runs cover {total} pixels, not {h}x{w} = {h * w}: the mask was encoded at "
                             "another size (masks must be at the original image size)")
    return None


def validate_submission(
    path: str | os.PathLike,
    sample: str | os.PathLike | Sequence[SampleRow],
    *,
    allow_empty_masks: bool = False,
    max_listed: int = 50,
    num_classes: int = NUM_CLASSES,
    progress: bool = False,
) -> ValidationReport:
    """Check a submission file row by row against the sample submission.

    Parameters
    ----------
    path : the submission CSV.
    sample : ``sample_submission.csv`` path or its rows.
    allow_empty_masks : accept masks without pixels (the sample's own placeholder is one).
    max_listed : how many problems to keep in the report (all are counted).

    Raises
    ------
    SubmissionError
        Only when the file as a whole cannot be read: missing, binary, or wrong header.
    """
    sample_rows = read_sample_submission(sample) if isinstance(sample, (str, os.PathLike)) else list(sample)
    expected = {row.id: row for row in sample_rows}
    report = ValidationReport(Path(path), max_listed=max_listed)
    seen: dict[str, int] = {}
    lines = iter_csv_records(path, COLUMNS)
    for line, values in tqdm(lines, desc="check", unit=" rows", disable=not progress):
        if isinstance(values, str):
            report.add("bad-row", line, "?", None, values)
            continue
        image_id = values["ID"]
        if image_id in seen:
            report.add("duplicate-id", line, image_id, None, f"already given on line {seen[image_id]}")
            continue
        seen[image_id] = line
        if image_id not in expected:
            report.add("unknown-id", line, image_id, None, "not in the sample submission")
            continue
        truth = expected[image_id]
        report.rows += 1
        try:
            width, height = int(values["ImageWidth"]), int(values["ImageHeight"])
        except ValueError:
            report.add("bad-size", line, image_id, None, f"ImageWidth/ImageHeight {values['ImageWidth']!r}/"
                       f"{values['ImageHeight']!r} are not integers")
        else:
            if (width, height) != (truth.width, truth.height):
                report.add("size-mismatch", line, image_id, None, f"ImageWidth/ImageHeight {width}/{height}, "
                           f"the sample says {truth.width}/{truth.height}")
        _check_triplets(report, line, image_id, values["PredictionString"], truth.shape, allow_empty_masks,
                        num_classes)
    for image_id in expected:
        if image_id not in seen:
            report.add("missing-id", 0, image_id, None, "no row for this sample ID (write the placeholder "
                       f"'{NO_PREDICTION}' if the image has no cell)")
    return report


def _check_triplets(report: ValidationReport, line: int, image_id: str, text: str, shape: tuple[int, int],
                    allow_empty: bool, num_classes: int) -> None:
    if text.strip() == NO_PREDICTION:  # the sample's placeholder: "no cell in this image", valid as is
        return
    _, _, masks, problems = split_prediction_string(text, num_classes=num_classes)
    for index, kind, message in problems:
        report.add(kind, line, image_id, index, message)
    report.triplets += len(masks)
    verdicts: dict[str, tuple[str, str] | None] = dict.fromkeys(masks)
    try:  # one vectorised parse of the row's distinct masks; one by one only to explain a failure
        _, areas = rle.to_coco_many(list(verdicts), shape)
    except MaskCodecError:
        verdicts = {mask: _mask_problem(mask, shape, allow_empty) for mask in verdicts}
        areas = np.array([rle.area(m) if v is None else 0 for m, v in verdicts.items()], dtype=np.int64)
    else:
        if not allow_empty:
            for mask, area in zip(list(verdicts), areas.tolist()):
                if area == 0:
                    verdicts[mask] = _EMPTY
    report.cells += int(np.count_nonzero(areas))
    for index, mask in enumerate(masks):
        verdict = verdicts[mask]
        if verdict is not None:
            report.add(verdict[0], line, image_id, index, verdict[1])
