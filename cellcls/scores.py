"""The per-cell score table: one row per (image, cell), 19 confidences in [0, 1].

Inference writes it (model scores, TTA, blends), the submission reads it, and training reads it
back as soft cell labels (``--cell-labels``). Every row names the mask-cache entry its cell ids
refer to (``mask_key``): cell ids only mean something together with the label maps they index.

Columns (:data:`SCORE_TABLE_COLUMNS`, dtypes :data:`SCORE_TABLE_DTYPES`)
------------------------------------------------------------------------
ID          image ID (string, non-empty)
cell_id     id of the cell in the label maps of that entry (int64, >= 1)
mask_key    the mask-cache key of those label maps (string, non-empty; one per ID)
source      what produced the scores, free text (e.g. ``"densenet121-fold0 tta=d4 blend=mean:w=0.7"``)
p0 .. p18   confidence of class 0 .. 18 (float32 in [0, 1], never NaN); :data:`SCORE_COLUMNS`

The score columns are named by class ID (``p{id}``), not by class name: ids are the competition's
and never change, names have spaces and might be respelled. ``SCORE_COLUMNS[c]`` is class ``c``.

Files: ``.parquet`` (pyarrow, the schema :func:`score_schema`) or ``.csv`` (floats with 9
significant digits, which round-trips float32 exactly), chosen by suffix. :func:`read_scores`
validates what it reads and raises :class:`~cellcls.errors.ScoreTableError` naming the file, the
row and the column. :class:`ScoreTableWriter` streams rows to disk in row groups so a whole test
set never sits in memory; the file appears atomically at :meth:`ScoreTableWriter.close`.

Rows are data rows numbered from 0 (in a CSV, row ``i`` is on line ``i + 2``). Columns beyond the
standard ones are dropped on reading and writing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from .classes import NUM_CLASSES
from .errors import ScoreTableError

if TYPE_CHECKING:  # pandas / pyarrow are imported where used
    import pandas as pd

__all__ = [
    "SCORE_COLUMNS",
    "KEY_COLUMNS",
    "SCORE_TABLE_COLUMNS",
    "SCORE_TABLE_DTYPES",
    "score_schema",
    "score_column",
    "score_frame",
    "empty_score_table",
    "check_score_table",
    "score_matrix",
    "iter_image_scores",
    "write_scores",
    "read_scores",
    "ScoreTableWriter",
]

log = logging.getLogger(__name__)

SCORE_COLUMNS: tuple[str, ...] = tuple(f"p{c}" for c in range(NUM_CLASSES))
"""The 19 confidence columns, ``SCORE_COLUMNS[c]`` = class ``c`` (``"p0"`` .. ``"p18"``)."""

KEY_COLUMNS: tuple[str, ...] = ("ID", "cell_id", "mask_key", "source")
"""The identifying columns, before the scores."""

SCORE_TABLE_DTYPES: dict[str, str] = {
    "ID": "string",
    "cell_id": "int64",
    "mask_key": "string",
    "source": "string",
    **{column: "float32" for column in SCORE_COLUMNS},
}
"""dtype of every column (pandas names)."""

SCORE_TABLE_COLUMNS: tuple[str, ...] = tuple(SCORE_TABLE_DTYPES)
"""All columns, in file order."""

_SUFFIXES = (".parquet", ".csv")
_CSV_FLOAT = "%.9g"  # 9 significant digits: every float32 reads back bit for bit
_DEFAULT_BUFFER_ROWS = 16_384


def score_schema():
    """The Parquet schema of a score table (``pyarrow.Schema``; columns :data:`SCORE_TABLE_COLUMNS`, none nullable)."""
    import pyarrow as pa

    fields = [pa.field("ID", pa.string(), nullable=False), pa.field("cell_id", pa.int64(), nullable=False),
              pa.field("mask_key", pa.string(), nullable=False), pa.field("source", pa.string(), nullable=False)]
    fields += [pa.field(column, pa.float32(), nullable=False) for column in SCORE_COLUMNS]
    return pa.schema(fields)


def score_column(class_id: int) -> str:
    """Column name of class ``class_id`` (0..18): ``"p{class_id}"``."""
    if not 0 <= int(class_id) < NUM_CLASSES:
        raise ScoreTableError(f"class id must be in 0..{NUM_CLASSES - 1}, got {class_id!r}")
    return SCORE_COLUMNS[int(class_id)]


# ----------------------------------------------------------------------------- validated rows
@dataclass(frozen=True)
class _Rows:
    """The columns of ``n`` validated score-table rows, as arrays."""

    ids: np.ndarray        # (n,) object: str
    cell_ids: np.ndarray   # (n,) int64 >= 1
    mask_keys: np.ndarray  # (n,) object: str
    sources: np.ndarray    # (n,) object: str
    scores: np.ndarray     # (n, 19) float32 in [0, 1]

    def __len__(self) -> int:
        return len(self.cell_ids)

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        columns: dict[str, object] = {"ID": pd.array(self.ids, dtype="string"), "cell_id": self.cell_ids,
                                      "mask_key": pd.array(self.mask_keys, dtype="string"),
                                      "source": pd.array(self.sources, dtype="string")}
        columns.update({column: self.scores[:, c] for c, column in enumerate(SCORE_COLUMNS)})
        return pd.DataFrame(columns, index=pd.RangeIndex(len(self)))

    def arrow(self):
        import pyarrow as pa

        columns = {"ID": pa.array(self.ids.tolist(), pa.string()), "cell_id": pa.array(self.cell_ids, pa.int64()),
                   "mask_key": pa.array(self.mask_keys.tolist(), pa.string()),
                   "source": pa.array(self.sources.tolist(), pa.string())}
        columns.update({column: pa.array(np.ascontiguousarray(self.scores[:, c]), pa.float32())
                        for c, column in enumerate(SCORE_COLUMNS)})
        return pa.table(columns, schema=score_schema())


def _row_name(row: int, csv: bool) -> str:
    return f"row {row} (line {row + 2})" if csv else f"row {row}"


def _show(value: object) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_text(values: np.ndarray, column: str, where: str, csv: bool, *, allow_empty: bool) -> np.ndarray:
    bad = np.fromiter((not isinstance(v, str) or (not allow_empty and not v) for v in values.tolist()),
                      dtype=bool, count=len(values))
    if bad.any():
        row = _first(bad)
        wanted = "a string" if allow_empty else "a non-empty string"
        raise ScoreTableError(f"{where}: {_row_name(row, csv)}: column {column!r} holds {_show(values[row])}, "
                              f"not {wanted}; every row needs its {column}")
    return values


def _check_cell_ids(raw: np.ndarray, where: str, csv: bool) -> np.ndarray:
    if raw.dtype.kind in "iu":
        numbers = raw.astype(np.float64)
    else:
        import pandas as pd

        numbers = pd.to_numeric(pd.Series(raw, dtype=object), errors="coerce").to_numpy(dtype=np.float64,
                                                                                          na_value=np.nan)
    bad = ~np.isfinite(numbers) | (numbers < 1) | (numbers != np.floor(numbers))
    if bad.any():
        row = _first(bad)
        raise ScoreTableError(f"{where}: {_row_name(row, csv)}: cell_id {_show(raw[row])} is not an integer >= 1 "
                              "(0 is background in the label maps)")
    return raw.astype(np.int64) if raw.dtype.kind in "iu" else numbers.astype(np.int64)


def _check_probabilities(values: np.ndarray, raw: "object", where: str, csv: bool) -> np.ndarray:
    """``values`` (n, 19) float64 (NaN where not a number); ``raw(row, c)`` is the value as given."""
    bad = ~((values >= 0.0) & (values <= 1.0))  # also catches NaN and non-numbers
    if bad.any():
        row, c = (int(v) for v in np.argwhere(bad)[0])
        what = "NaN or not a number" if np.isnan(values[row, c]) else "outside [0, 1]"
        raise ScoreTableError(f"{where}: {_row_name(row, csv)}: column {SCORE_COLUMNS[c]!r} (class {c}) holds "
                              f"{_show(raw(row, c))}, {what} ({int(bad.sum())} such values); scores are "
                              "probabilities: apply a sigmoid and/or clip before writing")
    return values.astype(np.float32)


def _check_keys(rows: _Rows, where: str, csv: bool) -> None:
    import pandas as pd

    if len(rows) < 2:
        return
    image_codes, images = pd.factorize(rows.ids)
    pairs = np.stack([image_codes.astype(np.int64), rows.cell_ids], axis=1)
    _, first_of, inverse, counts = np.unique(pairs, axis=0, return_index=True, return_inverse=True,
                                             return_counts=True)
    inverse = inverse.reshape(-1)
    if (counts > 1).any():
        repeated = counts[inverse] > 1
        row = _first(repeated)
        same = np.flatnonzero(inverse == inverse[row])
        raise ScoreTableError(f"{where}: image {rows.ids[row]!r} cell {int(rows.cell_ids[row])} appears more than "
                              f"once ({', '.join(_row_name(int(r), csv) for r in same[:5])}); each (ID, cell_id) "
                              "must have one row")
    key_codes, _ = pd.factorize(rows.mask_keys)
    id_key = np.unique(np.stack([image_codes, key_codes], axis=1), axis=0)
    if len(id_key) > len(images):
        code = int(id_key[_first(np.diff(id_key[:, 0]) == 0), 0])
        keys = sorted(set(rows.mask_keys[image_codes == code].tolist()))
        raise ScoreTableError(f"{where}: image {images[code]!r} has rows with {len(keys)} different mask_keys "
                              f"{keys[:3]}; the cell ids of one image must all refer to one mask-cache entry")


def _rows_from_frame(frame: "pd.DataFrame", where: str, csv: bool) -> _Rows:
    import pandas as pd

    missing = [c for c in SCORE_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise ScoreTableError(f"{where}: not a score table, missing columns {missing}; a score table has columns "
                              f"{', '.join(KEY_COLUMNS)}, p0 .. p{NUM_CLASSES - 1} "
                              "(cellcls.scores.SCORE_TABLE_COLUMNS)")
    extra = [c for c in frame.columns if c not in SCORE_TABLE_DTYPES]
    if extra:
        log.debug("%s: ignoring columns %s", where, extra)
    text = {c: _check_text(frame[c].to_numpy(dtype=object), c, where, csv, allow_empty=c == "source")
            for c in ("ID", "mask_key", "source")}
    raw_ids = frame["cell_id"].to_numpy()
    cell_ids = _check_cell_ids(raw_ids if raw_ids.dtype.kind in "iu" else raw_ids.astype(object), where, csv)
    block = frame[list(SCORE_COLUMNS)]
    try:
        values = block.to_numpy(dtype=np.float64, na_value=np.nan)
    except (TypeError, ValueError):  # text somewhere: find it column by column
        values = np.stack([pd.to_numeric(block[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
                           for c in SCORE_COLUMNS], axis=1) if len(block) else np.zeros((0, NUM_CLASSES))
    scores = _check_probabilities(values, lambda r, c: block.iloc[r, c], where, csv)
    rows = _Rows(text["ID"], cell_ids, text["mask_key"], text["source"], scores)
    _check_keys(rows, where, csv)
    return rows


def _rows_of_image(image_id: str, cell_ids: Sequence[int] | np.ndarray, scores: np.ndarray, *, mask_key: str,
                   source: str) -> _Rows:
    where = f"scores of image {image_id!r}"
    ids = np.asarray(cell_ids)
    if ids.ndim != 1:
        raise ScoreTableError(f"{where}: cell_ids must be 1-D, got shape {ids.shape}")
    if ids.size == 0:
        ids = ids.astype(np.int64)
    table = np.asarray(scores)
    if table.ndim != 2 or table.shape != (len(ids), NUM_CLASSES):
        raise ScoreTableError(f"{where}: scores must be (n_cells={len(ids)}, {NUM_CLASSES}), got shape {table.shape}")
    for name, value in (("image_id", image_id), ("mask_key", mask_key)):
        if not isinstance(value, str) or not value:
            raise ScoreTableError(f"{where}: {name} must be a non-empty string, got {value!r}")
    if not isinstance(source, str):
        raise ScoreTableError(f"{where}: source must be a string, got {source!r}")
    try:
        values = table.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ScoreTableError(f"{where}: scores must be numbers ({exc})") from None
    n = len(ids)
    rows = _Rows(np.full(n, image_id, dtype=object), _check_cell_ids(ids, where, False),
                 np.full(n, mask_key, dtype=object), np.full(n, source, dtype=object),
                 _check_probabilities(values, lambda r, c: table[r, c], where, False))
    _check_keys(rows, where, False)
    return rows


# ----------------------------------------------------------------------------- building
def score_frame(image_id: str, cell_ids: Sequence[int] | np.ndarray, scores: np.ndarray, *, mask_key: str,
                source: str) -> "pd.DataFrame":
    """The score-table rows of one image.

    Parameters
    ----------
    image_id : str
    cell_ids : (N,) integers >= 1
        Label-map ids of the cells, aligned with the rows of ``scores`` (any order, no repeats).
    scores : (N, 19) float array-like
        Confidences in [0, 1], row i = cell ``cell_ids[i]``. Not modified.
    mask_key : str
        Key of the mask-cache entry whose label maps ``cell_ids`` index.
    source : str
        What produced the scores (free text, stored in every row).

    Returns
    -------
    pandas.DataFrame with :data:`SCORE_TABLE_COLUMNS`, validated (see :func:`check_score_table`).
    """
    return _rows_of_image(image_id, cell_ids, scores, mask_key=mask_key, source=source).frame()


def empty_score_table() -> "pd.DataFrame":
    """A score table with no rows and the right columns and dtypes."""
    import pandas as pd

    return pd.DataFrame({c: [] for c in SCORE_TABLE_COLUMNS}).astype(SCORE_TABLE_DTYPES)


def check_score_table(frame: "pd.DataFrame", *, where: str = "score table", csv: bool = False) -> "pd.DataFrame":
    """Validate a score table and return a typed copy (standard columns, fresh RangeIndex).

    Parameters
    ----------
    frame : pandas.DataFrame
        Must hold :data:`SCORE_TABLE_COLUMNS`; other columns are dropped. Not modified.
    where : str
        Names the table in error messages (a file path, an image).
    csv : bool
        Rows are also named by their CSV line.

    Raises
    ------
    ScoreTableError
        Missing columns; an empty ID or mask_key; a cell_id that is not an integer >= 1; a score
        that is NaN, not a number or outside [0, 1]; an (ID, cell_id) given twice; an ID with two
        mask_keys. The message names ``where``, the row and the column.
    """
    return _rows_from_frame(frame.reset_index(drop=True), where, csv).frame()


# ----------------------------------------------------------------------------- views
def score_matrix(frame: "pd.DataFrame") -> np.ndarray:
    """The confidences of a (validated) score table as an (N, 19) float32 array, row-aligned with ``frame``."""
    return np.ascontiguousarray(frame[list(SCORE_COLUMNS)].to_numpy(dtype=np.float32))


def iter_image_scores(frame: "pd.DataFrame") -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """Per image, in first-appearance order: ``(ID, cell_ids (n,) int64, scores (n, 19) float32, mask_key)``.

    ``cell_ids`` and ``scores`` keep the table's row order (row i of ``scores`` is cell ``cell_ids[i]``).
    """
    ids = frame["ID"].to_numpy(dtype=object)
    cell_ids = frame["cell_id"].to_numpy(dtype=np.int64)
    keys = frame["mask_key"].to_numpy(dtype=object)
    matrix = score_matrix(frame)
    order: dict[str, list[int]] = {}
    for row, image_id in enumerate(ids.tolist()):
        order.setdefault(image_id, []).append(row)
    for image_id, rows in order.items():
        index = np.asarray(rows, dtype=np.int64)
        yield image_id, cell_ids[index], matrix[index], str(keys[index[0]])


# ----------------------------------------------------------------------------- files
def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ScoreTableError(f"{path}: a score table is a .parquet or .csv file, got suffix {path.suffix!r}")
    return suffix


def write_scores(frame: "pd.DataFrame", path: "str | os.PathLike[str]") -> Path:
    """Validate a score table and write it to ``.parquet`` or ``.csv`` (by suffix); return the path.

    The file appears atomically (written as ``NAME.partial``, then renamed). Raises
    :class:`~cellcls.errors.ScoreTableError` as :func:`check_score_table` does.
    """
    with ScoreTableWriter(path, buffer_rows=max(len(frame), 1)) as writer:
        writer.add(frame)
    return Path(path)


def read_scores(path: "str | os.PathLike[str]") -> "pd.DataFrame":
    """Read and validate a score table written by :func:`write_scores` or :class:`ScoreTableWriter`.

    Returns
    -------
    pandas.DataFrame with :data:`SCORE_TABLE_COLUMNS` and :data:`SCORE_TABLE_DTYPES`, rows in file order.

    Raises
    ------
    FileNotFoundError
        No such file.
    ScoreTableError
        Unknown suffix, unreadable file, or any problem :func:`check_score_table` finds; the message
        names the file, the row and the column.
    """
    import pandas as pd

    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"score table {path} does not exist")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path, engine="pyarrow")
        else:
            text = {c: "string" for c in ("ID", "mask_key", "source")}
            frame = pd.read_csv(path, dtype=text, keep_default_na=False, na_values={c: [""] for c in SCORE_COLUMNS})
    except (OSError, ValueError) as exc:
        raise ScoreTableError(f"{path}: unreadable score table ({exc})") from exc
    return check_score_table(frame, where=str(path), csv=suffix == ".csv")


class ScoreTableWriter:
    """Stream a score table to disk, image by image, with bounded memory.

    Rows are validated as they come (:func:`check_score_table`, plus (ID, cell_id) and one
    mask_key per ID across everything added) and buffered; every ``buffer_rows`` rows go to disk,
    as one Parquet row group (``pyarrow.parquet.ParquetWriter``) or appended CSV lines. The file is
    written as ``NAME.partial`` and renamed at :meth:`close`; leaving the ``with`` block by an
    exception (or :meth:`abort`) removes it. Reading the result gives the same frame as
    :func:`write_scores` of all rows at once.

    Parameters
    ----------
    path : ``.parquet`` or ``.csv`` output path.
    buffer_rows : int
        Rows held in memory before a flush (default 16,384: ~1.5 MB).

    Examples
    --------
    >>> with ScoreTableWriter("scores.parquet") as writer:                       # doctest: +SKIP
    ...     writer.add_image(image_id, table.cell_id, probs, mask_key=key, source="d4")
    """

    def __init__(self, path: "str | os.PathLike[str]", *, buffer_rows: int = _DEFAULT_BUFFER_ROWS) -> None:
        self.path = Path(path)
        self._suffix = _suffix(self.path)
        if not isinstance(buffer_rows, (int, np.integer)) or buffer_rows < 1:
            raise ScoreTableError(f"buffer_rows must be an integer >= 1, got {buffer_rows!r}")
        self.buffer_rows = int(buffer_rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path.with_name(self.path.name + ".partial")
        self._buffer: list[_Rows] = []
        self._buffered = 0
        self._seen: set[tuple[str, int]] = set()
        self._mask_keys: dict[str, str] = {}
        self.rows_written = 0
        self._closed = False
        self._parquet = None
        self._csv = None
        if self._suffix == ".parquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(self._partial, score_schema())
        else:
            self._csv = open(self._partial, "w", encoding="utf-8", newline="")
            self._csv.write(",".join(SCORE_TABLE_COLUMNS) + "\n")

    def __enter__(self) -> "ScoreTableWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def add(self, frame: "pd.DataFrame") -> None:
        """Add rows (any number of images); raises ScoreTableError on bad rows or repeats of earlier rows."""
        self._check_open()
        self._add(_rows_from_frame(frame.reset_index(drop=True), f"rows added to {self.path}", False))

    def add_image(self, image_id: str, cell_ids: Sequence[int] | np.ndarray, scores: np.ndarray, *,
                  mask_key: str, source: str) -> None:
        """Add the rows of one image (see :func:`score_frame` for the arguments)."""
        self._check_open()
        self._add(_rows_of_image(image_id, cell_ids, scores, mask_key=mask_key, source=source))

    def _add(self, rows: _Rows) -> None:
        self._check_against_earlier(rows)
        if len(rows):
            self._buffer.append(rows)
            self._buffered += len(rows)
        if self._buffered >= self.buffer_rows:
            self._flush()

    def _check_against_earlier(self, rows: _Rows) -> None:
        ids, cells, keys = rows.ids.tolist(), rows.cell_ids.tolist(), rows.mask_keys.tolist()
        where = f"rows added to {self.path}"
        for row, pair in enumerate(zip(ids, cells)):
            if pair in self._seen:
                raise ScoreTableError(f"{where}: row {row}: image {pair[0]!r} cell {pair[1]} was already added")
        for row, (image_id, key) in enumerate(zip(ids, keys)):
            known = self._mask_keys.get(image_id)
            if known is not None and known != key:
                raise ScoreTableError(f"{where}: row {row}: image {image_id!r} has mask_key {key!r} but earlier "
                                      f"rows have {known!r}; one image's cells must refer to one mask-cache entry")
        self._seen.update(zip(ids, cells))
        for image_id, key in zip(ids, keys):
            self._mask_keys.setdefault(image_id, key)

    def _flush(self) -> None:
        if not self._buffer:
            return
        parts = self._buffer
        chunk = parts[0] if len(parts) == 1 else _Rows(*(np.concatenate([getattr(p, f) for p in parts])
                                                         for f in ("ids", "cell_ids", "mask_keys", "sources", "scores")))
        if self._parquet is not None:
            self._parquet.write_table(chunk.arrow())
        else:
            chunk.frame().to_csv(self._csv, header=False, index=False, float_format=_CSV_FLOAT)
        self.rows_written += len(chunk)
        self._buffer, self._buffered = [], 0

    def close(self) -> Path:
        """Write what is buffered, publish the file, return its path."""
        if self._closed:
            return self.path
        self._flush()
        if self._parquet is not None:
            self._parquet.close()
        else:
            self._csv.close()
        os.replace(self._partial, self.path)
        self._closed = True
        log.info("wrote %s (%d rows, %d images)", self.path, self.rows_written, len(self._mask_keys))
        return self.path

    def abort(self) -> None:
        """Discard everything; the output file is not created or replaced."""
        if self._closed:
            return
        try:
            if self._parquet is not None:
                self._parquet.close()
            else:
                self._csv.close()
        finally:
            self._partial.unlink(missing_ok=True)
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise ScoreTableError(f"{self.path}: the score writer is closed")

    def __del__(self) -> None:
        try:
            if not self._closed:
                log.warning("%s: ScoreTableWriter dropped without close(); nothing was written", self.path)
                self.abort()
        except Exception:  # noqa: BLE001 - interpreter shutdown: best effort only
            pass
