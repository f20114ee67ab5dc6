"""Image-level labels: the competition's ``train.csv`` and the host's public-HPA ``kaggle_2021.tsv``.

A :class:`LabelTable` holds image IDs, a multi-hot ``(N, 19)`` uint8 target matrix (column =
class id, :data:`cellcls.classes.CLASSES`) and any other columns of the file, row-aligned.

Label strings list class ids separated by ``|`` (``"8|5|0"``) or spaces (``"8 5 0"``).
Row numbers in error messages are *line numbers of the file*: the header is line 1, so the
first data row is line 2 (what an editor shows).
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .classes import NUM_CLASSES
from .errors import BadLabelRowError, LabelError, ParameterError

__all__ = [
    "LabelTable",
    "parse_label_string",
    "format_label_string",
    "read_train_csv",
    "read_hpa_public_tsv",
    "hpa_image_id",
    "write_labels_csv",
    "ID_COLUMNS",
    "read_ids_csv",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


@dataclass(frozen=True, eq=False)
class LabelTable:
    """Image IDs with multi-hot targets.

    Attributes
    ----------
    ids : tuple of str, length N
    targets : (N, 19) ndarray of uint8
        ``targets[i, c] == 1`` when image ``ids[i]`` carries class ``c``. Read-only.
    extra : pandas.DataFrame
        The file's other columns (e.g. ``group``, ``Cellline``), N rows in the same order,
        index 0..N-1.
    """

    ids: tuple[str, ...]
    targets: np.ndarray
    extra: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __post_init__(self) -> None:
        ids = tuple(str(i) for i in self.ids)
        targets = np.array(self.targets, dtype=np.uint8, copy=True)
        if targets.size == 0:
            targets = targets.reshape(len(ids), NUM_CLASSES)
        if targets.shape != (len(ids), NUM_CLASSES):
            raise ParameterError(f"targets must have shape ({len(ids)}, {NUM_CLASSES}), got {targets.shape}")
        if targets.size and targets.max() > 1:
            raise ParameterError("targets must be multi-hot (0 or 1)")
        extra = self.extra.reset_index(drop=True) if len(self.extra.columns) else pd.DataFrame(index=range(len(ids)))
        if len(extra) != len(ids):
            raise ParameterError(f"extra has {len(extra)} rows but there are {len(ids)} ids")
        targets.flags.writeable = False
        object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "targets", targets)
        object.__setattr__(self, "extra", extra)

    def __len__(self) -> int:
        return len(self.ids)

    def class_counts(self) -> np.ndarray:
        """(19,) int64: number of images carrying each class."""
        return self.targets.sum(axis=0, dtype=np.int64)

    def labels(self, index: int) -> tuple[int, ...]:
        """Class ids of row ``index``, ascending."""
        return tuple(int(c) for c in np.flatnonzero(self.targets[index]))

    def subset(self, rows: Sequence[int] | np.ndarray) -> "LabelTable":
        """A new table with the given rows (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return LabelTable(
            ids=tuple(self.ids[i] for i in rows),
            targets=self.targets[rows],
            extra=self.extra.iloc[rows].reset_index(drop=True),
        )


# --------------------------------------------------------------------------- label strings
def _label_problem(text: object) -> tuple[tuple[int, ...] | None, str]:
    """(labels, "") or (None, reason)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None, "empty label"
    parts = str(text).replace("|", " ").split()
    if not parts:
        return None, "empty label"
    values = set()
    for part in parts:
        try:
            value = int(part)
        except ValueError:
            return None, f"label {part!r} is not an integer class id"
        if not 0 <= value < NUM_CLASSES:
            return None, f"label {value} is outside 0..{NUM_CLASSES - 1}"
        values.add(value)
    return tuple(sorted(values)), ""


def parse_label_string(text: str, *, row: int | None = None) -> tuple[int, ...]:
    """Class ids of a label string, sorted ascending and without repeats.

    >>> parse_label_string("8|5|0")
    (0, 5, 8)
    >>> parse_label_string("16 0")
    (0, 16)

    Raises
    ------
    BadLabelRowError
        Empty string, a non-integer part or an id outside 0..18; ``row`` (a line number)
        is named in the message when given.
    """
    labels, reason = _label_problem(text)
    if labels is None:
        where = f"line {row}: " if row is not None else ""
        raise BadLabelRowError(f"{where}{reason} in label string {text!r}; expected class ids 0..18 joined by '|'")
    return labels


def format_label_string(labels: Iterable[int]) -> str:
    """``"0|5|8"`` from class ids (ascending)."""
    return "|".join(str(int(c)) for c in sorted(set(labels)))


def _multi_hot(rows: Sequence[tuple[int, ...]]) -> np.ndarray:
    targets = np.zeros((len(rows), NUM_CLASSES), dtype=np.uint8)
    for i, labels in enumerate(rows):
        targets[i, list(labels)] = 1
    return targets


# --------------------------------------------------------------------------- train.csv
def _read_table(path: Path, *, sep: str) -> pd.DataFrame:
    if not path.is_file():
        raise LabelError(f"label file {str(path)!r} does not exist")
    try:
        # everything as text, and "" stays "" (pandas would turn "NA" or "" into NaN)
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LabelError(f"cannot parse {path}: {exc}") from exc


def read_train_csv(path: PathLike) -> LabelTable:
    """Read a ``train.csv``-style file: columns ``ID,Label`` plus any others (kept in ``extra``).

    Raises
    ------
    LabelError
        Missing file, missing ``ID``/``Label`` column, or no data rows.
    BadLabelRowError
        A row with an empty ID, an empty label, a non-integer label, a label outside 0..18,
        or an ID seen before (naming the earlier line). The message names the file and the
        line (header = line 1).
    """
    path = Path(path)
    frame = _read_table(path, sep=",")
    missing = [c for c in ("ID", "Label") if c not in frame.columns]
    if missing:
        raise LabelError(
            f"{path}: missing column(s) {', '.join(missing)}; found {list(frame.columns)}; "
            "expected a header 'ID,Label' like the competition's train.csv"
        )
    if frame.empty:
        raise LabelError(f"{path}: no data rows below the header")
    ids = [s.strip() for s in frame["ID"]]
    first_line: dict[str, int] = {}
    parsed: list[tuple[int, ...]] = []
    for i, (image_id, text) in enumerate(zip(ids, frame["Label"])):
        line = i + 2
        if not image_id:
            raise BadLabelRowError(f"{path}, line {line} (data row {i + 1}): empty ID")
        if image_id in first_line:
            raise BadLabelRowError(
                f"{path}, line {line} (data row {i + 1}): duplicate ID {image_id!r}, "
                f"first seen on line {first_line[image_id]}"
            )
        first_line[image_id] = line
        labels, reason = _label_problem(text)
        if labels is None:
            raise BadLabelRowError(
                f"{path}, line {line} (data row {i + 1}), ID {image_id!r}: {reason} in {text!r}; "
                "expected class ids 0..18 joined by '|'"
            )
        parsed.append(labels)
    extra = frame.drop(columns=["ID", "Label"]).reset_index(drop=True)
    return LabelTable(ids=tuple(ids), targets=_multi_hot(parsed), extra=extra)


# --------------------------------------------------------------------------- kaggle_2021.tsv
def hpa_image_id(url: str) -> str:
    """``"https://images.proteinatlas.org/10005/921_B9_1"`` -> ``"10005_921_B9_1"``."""
    parts = [p for p in str(url).strip().split("/") if p]
    if len(parts) < 2:
        raise ParameterError(f"cannot make an image ID from {url!r}; expected '.../<antibody>/<plate_well_field>'")
    return f"{parts[-2]}_{parts[-1]}"


_TRUE = {"true", "1", "yes", "t", "y"}
_FALSE = {"false", "0", "no", "f", "n", ""}


def read_hpa_public_tsv(
    path: PathLike,
    *,
    cell_lines: Iterable[str] | None = None,
    keep_in_trainset: bool = False,
) -> LabelTable:
    """Read the host's ``kaggle_2021.tsv`` of public HPA images.

    Columns ``Image`` (URL; its last two path parts make the ID, see :func:`hpa_image_id`),
    ``Label`` (names), ``Label_idx`` (``"0|16"``), ``Cellline``, ``in_trainset``. Rows are
    dropped, and each reason counted in an INFO log line, when: they are in the competition's
    train set (unless ``keep_in_trainset``), their ``Label_idx`` is empty or not valid class
    ids, their cell line is not in ``cell_lines`` (when given), or their ID repeats an earlier
    row. ``extra`` keeps ``Image``, ``Cellline`` and ``in_trainset`` (bool).
    """
    path = Path(path)
    frame = _read_table(path, sep="\t")
    needed = ["Image", "Label_idx", "Cellline", "in_trainset"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise LabelError(
            f"{path}: missing column(s) {', '.join(missing)}; found {list(frame.columns)}; "
            "expected the host's kaggle_2021.tsv (Image, Label, Label_idx, Cellline, in_trainset)"
        )
    wanted_lines = None if cell_lines is None else {str(c) for c in cell_lines}
    dropped = {"in train set": 0, "no label": 0, "invalid label": 0, "other cell line": 0, "duplicate ID": 0}
    ids: list[str] = []
    parsed: list[tuple[int, ...]] = []
    kept_rows: list[int] = []
    in_train_flags: list[bool] = []
    seen: set[str] = set()
    for i, (url, label_idx, cell_line, in_train) in enumerate(
        zip(frame["Image"], frame["Label_idx"], frame["Cellline"], frame["in_trainset"])
    ):
        flag = str(in_train).strip().lower()
        if flag not in _TRUE and flag not in _FALSE:
            raise BadLabelRowError(f"{path}, line {i + 2}: in_trainset is {in_train!r}; expected True or False")
        in_trainset = flag in _TRUE
        if in_trainset and not keep_in_trainset:
            dropped["in train set"] += 1
            continue
        if not str(label_idx).strip():
            dropped["no label"] += 1
            continue
        labels, _ = _label_problem(label_idx)
        if labels is None:
            dropped["invalid label"] += 1
            continue
        if wanted_lines is not None and cell_line not in wanted_lines:
            dropped["other cell line"] += 1
            continue
        try:
            image_id = hpa_image_id(url)
        except ParameterError as exc:
            raise BadLabelRowError(f"{path}, line {i + 2}: {exc}") from exc
        if image_id in seen:
            dropped["duplicate ID"] += 1
            continue
        seen.add(image_id)
        ids.append(image_id)
        parsed.append(labels)
        kept_rows.append(i)
        in_train_flags.append(in_trainset)
    if wanted_lines is not None:
        unknown = wanted_lines - set(frame["Cellline"])
        if unknown:
            log.warning("%s: cell lines not in the file: %s", path, ", ".join(sorted(unknown)))
    reasons = ", ".join(f"{n} {why}" for why, n in dropped.items() if n) or "none"
    log.info("%s: kept %d of %d rows; dropped: %s", path, len(ids), len(frame), reasons)
    if not ids:
        log.warning("%s: no rows left after filtering", path)
    extra = frame.iloc[kept_rows][["Image", "Cellline"]].reset_index(drop=True)
    extra["in_trainset"] = np.array(in_train_flags, dtype=bool)
    return LabelTable(ids=tuple(ids), targets=_multi_hot(parsed), extra=extra)


def write_labels_csv(table: LabelTable, path: PathLike) -> None:
    """Write ``ID,Label`` (``"0|5|8"``) plus the ``extra`` columns; readable by :func:`read_train_csv`.

    Raises
    ------
    LabelError
        A row has no class (the competition format cannot express it; use class 18, Negative).
    """
    empty = np.flatnonzero(table.targets.sum(axis=1) == 0)
    if empty.size:
        raise LabelError(
            f"cannot write {path}: {empty.size} image(s) have no label, e.g. {table.ids[int(empty[0])]!r}; "
            "give them class 18 (Negative) or drop them"
        )
    frame = pd.DataFrame({"ID": list(table.ids), "Label": [format_label_string(np.flatnonzero(t)) for t in table.targets]})
    clash = [c for c in table.extra.columns if c in ("ID", "Label")]
    if clash:
        raise LabelError(f"cannot write {path}: extra columns {clash} clash with ID/Label")
    frame = pd.concat([frame, table.extra.reset_index(drop=True)], axis=1)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


#: Columns that name an image in the CSV/TSV files users pass with ``--ids`` (train.csv,
#: sample_submission.csv, HPA's kaggle_2021.tsv), in order of preference.
ID_COLUMNS = ("ID", "Id", "id", "Image", "image_id")


def read_ids_csv(path: PathLike) -> list[str]:
    """Image IDs from the ID column of a CSV or TSV (``train.csv``, ``sample_submission.csv``, ...).

    The first of :data:`ID_COLUMNS` present is used; tab-separated files are detected. Order kept,
    empty cells skipped, duplicates dropped.

    Raises
    ------
    BadLabelRowError
        The file has none of the ID columns.
    """
    import csv

    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        head = handle.readline()
        handle.seek(0)
        reader = csv.DictReader(handle, delimiter="\t" if "\t" in head and "," not in head else ",")
        columns = reader.fieldnames or []
        column = next((c for c in ID_COLUMNS if c in columns), None)
        if column is None:
            raise BadLabelRowError(f"{path}: no ID column; expected one of {', '.join(ID_COLUMNS)}, found {columns}")
        ids = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    return list(dict.fromkeys(ids))
