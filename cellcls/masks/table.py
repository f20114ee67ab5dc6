"""The cell table: one row per segmented cell, every measure in ORIGINAL-image pixels.

Label maps come at segmentation scale (h, w) ~= (H * scale, W * scale); the measures must be those
of the map upscaled to the original (H, W) by nearest neighbour (``cv2.INTER_NEAREST``, whose index
maps :func:`cellcls.rle.nearest_source_index` reproduces), which is what the submission's masks and
the crops see. They are computed without that upscale: along each axis, segmentation index ``r``
feeds a contiguous block of ``n_r`` original indices starting at ``a_r`` (the index map is
non-decreasing), so a cell's area is ``sum over its seg pixels of n_r * n_c``, its row sum
``sum (a_r n_r + n_r (n_r - 1) / 2) * n_c`` and its box runs from the first original row of its first
seg row to the last original row of its last one. All sums are integers (exact); the result equals,
value for value, measuring the upscaled map. One ``scipy.ndimage.find_objects`` pass per map, then
work inside each cell's box only.

Columns (:data:`CELL_TABLE_COLUMNS`, dtypes :data:`CELL_TABLE_DTYPES`)
------------------------------------------------------------------------
ID                           image ID (string)
cell_id                      id in the label maps (int64; the nucleus has the same id)
y0, x0, y1, x1               bounding box, half-open, original pixels (int64)
centroid_y, centroid_x       mean row / column of the cell's pixels, original pixels (float64)
nucleus_centroid_y, _x       the same for its nucleus; NaN for a cell without one (float64)
cell_area_px                 pixels of the cell at the original size (int64)
nucleus_area_px              pixels of its nucleus at the original size, 0 if none (int64)
touches_border               the cell has a pixel in the first/last row or column of the image (bool)
mask_key                     the mask-cache key of the maps the row was measured on (string)

Files: ``.parquet`` (pyarrow) or ``.csv``, chosen by suffix; both read back with the same dtypes
and values (floats in CSV are written in shortest round-trip form).
"""
from __future__ import annotations

import logging
import sys
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from cellcls.errors import CellTableError
from cellcls.rle import nearest_source_index

if TYPE_CHECKING:  # pandas is imported where a frame is built
    import pandas as pd

    from cellcls.masks.cache import CacheEntry

__all__ = [
    "CELL_TABLE_COLUMNS",
    "CELL_TABLE_DTYPES",
    "AxisMap",
    "check_label_geometry",
    "cell_measures",
    "cell_table",
    "entry_cell_table",
    "empty_cell_table",
    "cache_cell_table",
    "write_cell_table",
    "read_cell_table",
]

log = logging.getLogger(__name__)

CELL_TABLE_DTYPES: dict[str, str] = {
    "ID": "string",
    "cell_id": "int64",
    "y0": "int64",
    "x0": "int64",
    "y1": "int64",
    "x1": "int64",
    "centroid_y": "float64",
    "centroid_x": "float64",
    "nucleus_centroid_y": "float64",
    "nucleus_centroid_x": "float64",
    "cell_area_px": "int64",
    "nucleus_area_px": "int64",
    "touches_border": "bool",
    "mask_key": "string",
}
"""dtype of every column of the cell table (pandas names)."""

CELL_TABLE_COLUMNS: tuple[str, ...] = tuple(CELL_TABLE_DTYPES)
"""Columns of the cell table, in order."""

_FLOAT_COLUMNS = tuple(c for c, d in CELL_TABLE_DTYPES.items() if d == "float64")
_SUFFIXES = (".parquet", ".csv")


# ----------------------------------------------------------------------------- geometry
class AxisMap:
    """How one axis of a label map maps onto the original image under nearest-neighbour upscaling.

    Attributes
    ----------
    n_src, n_dst : int
        Length of the axis at segmentation scale and at the original size (pixels).
    index : (n_dst,) int64
        Segmentation index read by each original index (:func:`cellcls.rle.nearest_source_index`).
    start, count : (n_src,) int64
        First original index fed by each segmentation index, and how many it feeds (0 when
        shrinking skips it; then ``start`` is where it would have been).
    index_sum : (n_src,) int64
        Sum of the original indices each segmentation index feeds.
    """

    __slots__ = ("n_src", "n_dst", "index", "start", "count", "index_sum")

    def __init__(self, n_src: int, n_dst: int) -> None:
        self.n_src, self.n_dst = int(n_src), int(n_dst)
        self.index = nearest_source_index(self.n_src, self.n_dst)
        sources = np.arange(self.n_src)
        self.start = np.searchsorted(self.index, sources, side="left").astype(np.int64)
        self.count = np.searchsorted(self.index, sources, side="right").astype(np.int64) - self.start
        self.index_sum = self.start * self.count + self.count * (self.count - 1) // 2

    def dst_range(self, src_lo: int, src_hi: int) -> tuple[int, int]:
        """Original half-open range fed by segmentation indices ``src_lo .. src_hi - 1``."""
        return int(self.start[src_lo]), int(self.start[src_hi - 1] + self.count[src_hi - 1])


def check_label_geometry(seg_shape: Sequence[int], original_shape: Sequence[int], *, image_id: str,
                         error: type[CellTableError] = CellTableError) -> tuple[int, int]:
    """Check that an (h, w) label map can be a scaled copy of an (H, W) image; return (H, W).

    Both axes must share one scale within a pixel (this catches swapped axes: hpacellseg returned
    non-square maps transposed). Raises ``error`` naming the image ID and both shapes.
    """
    try:
        height, width = (int(v) for v in original_shape)
    except (TypeError, ValueError) as exc:
        raise error(f"image {image_id!r}: original_shape must be (H, W) integers, got {original_shape!r}") from exc
    h, w = (int(v) for v in seg_shape)
    if height <= 0 or width <= 0 or h <= 0 or w <= 0:
        raise error(f"image {image_id!r}: need positive sizes, got label map {tuple(seg_shape)} for image "
                    f"{(height, width)}")
    if abs(h * width - w * height) > height + width:
        raise error(f"image {image_id!r}: label map (h, w)={h, w} is not a scaled copy of the image "
                    f"(H, W)={height, width} (scales {h / height:.4g} and {w / width:.4g} differ); "
                    "check the axis order and that the map belongs to this image")
    return height, width


def _as_labels(labels: np.ndarray, *, image_id: str, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise CellTableError(f"image {image_id!r}: {name} must be a non-empty 2-D (h, w) label map, "
                             f"got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise CellTableError(f"image {image_id!r}: {name} must hold integer cell ids (uint16/uint32), "
                             f"got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise CellTableError(f"image {image_id!r}: {name} holds negative ids; background is 0, cells 1..N")
    return array


def _objects(labels: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """``[(id, (row slice, col slice)), ...]`` of every non-zero id, ascending, in one pass."""
    from scipy import ndimage

    top = int(labels.max())
    if top == 0:
        return []
    if top <= 4 * labels.size + 1024:  # the usual 1..N ids, gaps allowed
        return [(k + 1, sl) for k, sl in enumerate(ndimage.find_objects(labels)) if sl is not None]
    # Sparse huge ids: compact them first (find_objects allocates one slot per id up to the max).
    ids, inverse = np.unique(labels, return_inverse=True)
    compact = inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
    first = 0 if ids[0] == 0 else -1  # compact value v holds ids[v + first]
    return [(int(ids[k + 1 + first]), sl) for k, sl in enumerate(ndimage.find_objects(compact)) if sl is not None]


def _measure(labels: np.ndarray, rows: AxisMap, cols: AxisMap) -> dict[int, tuple]:
    """{id: (y0, x0, y1, x1, area, sum_y, sum_x)} at the original size; ids that vanish are left out."""
    out = {}
    for cell_id, (ys, xs) in _objects(labels):
        inside = (labels[ys, xs] == cell_id).astype(np.int64)
        rw, cw = rows.count[ys], cols.count[xs]
        per_row = inside @ cw  # original pixels of the cell on each seg row's block, per original row
        per_col = rw @ inside
        area = int(rw @ per_row)
        if area == 0:  # only when shrinking skipped every row or column it lives on
            continue
        hit_rows = np.flatnonzero(per_row * rw)
        hit_cols = np.flatnonzero(per_col * cw)
        y0, y1 = rows.dst_range(ys.start + int(hit_rows[0]), ys.start + int(hit_rows[-1]) + 1)
        x0, x1 = cols.dst_range(xs.start + int(hit_cols[0]), xs.start + int(hit_cols[-1]) + 1)
        sum_y = int(rows.index_sum[ys] @ per_row)
        sum_x = int(per_col @ cols.index_sum[xs])
        out[cell_id] = (y0, x0, y1, x1, area, sum_y, sum_x)
    return out


def cell_measures(cells: np.ndarray, nuclei: np.ndarray, *, image_id: str,
                  original_shape: Sequence[int]) -> dict[str, np.ndarray]:
    """The numeric columns of :func:`cell_table`, as arrays (one entry per cell, ids ascending).

    Returns
    -------
    dict of column name -> (N,) ndarray with the dtypes of :data:`CELL_TABLE_DTYPES`.
    """
    cells = _as_labels(cells, image_id=image_id, name="cells")
    nuclei = _as_labels(nuclei, image_id=image_id, name="nuclei")
    if nuclei.shape != cells.shape:
        raise CellTableError(f"image {image_id!r}: nuclei map {nuclei.shape} and cells map {cells.shape} differ "
                             "in shape; both must be at the same (segmentation) scale")
    height, width = check_label_geometry(cells.shape, original_shape, image_id=image_id)
    rows, cols = AxisMap(cells.shape[0], height), AxisMap(cells.shape[1], width)
    cell = _measure(cells, rows, cols)
    nucleus = _measure(nuclei, rows, cols)
    orphans = sorted(set(nucleus) - set(cell))
    if orphans:
        log.debug("image %s: nuclei ids %s have no cell and are ignored", image_id, orphans[:10])
    ids = np.array(sorted(cell), dtype=np.int64)
    values = np.array([cell[i] for i in ids.tolist()], dtype=np.int64).reshape(len(ids), 7)
    nuc = np.array([nucleus.get(i, (0,) * 7) for i in ids.tolist()], dtype=np.int64).reshape(len(ids), 7)
    area, nuc_area = values[:, 4], nuc[:, 4]
    with np.errstate(invalid="ignore", divide="ignore"):
        nuc_cy = np.where(nuc_area > 0, nuc[:, 5] / np.maximum(nuc_area, 1), np.nan)
        nuc_cx = np.where(nuc_area > 0, nuc[:, 6] / np.maximum(nuc_area, 1), np.nan)
    y0, x0, y1, x1 = (values[:, k] for k in range(4))
    return {
        "cell_id": ids,
        "y0": y0, "x0": x0, "y1": y1, "x1": x1,
        "centroid_y": values[:, 5] / np.maximum(area, 1),
        "centroid_x": values[:, 6] / np.maximum(area, 1),
        "nucleus_centroid_y": nuc_cy.astype(np.float64),
        "nucleus_centroid_x": nuc_cx.astype(np.float64),
        "cell_area_px": area,
        "nucleus_area_px": nuc_area,
        "touches_border": (y0 == 0) | (x0 == 0) | (y1 == height) | (x1 == width),
    }


def _frame(columns: dict[str, object], n: int) -> "pd.DataFrame":
    import pandas as pd

    frame = pd.DataFrame({c: columns[c] for c in CELL_TABLE_COLUMNS}, index=pd.RangeIndex(n))
    return frame.astype(CELL_TABLE_DTYPES)


def empty_cell_table() -> "pd.DataFrame":
    """A cell table with no rows and the right columns and dtypes."""
    return _frame({c: [] for c in CELL_TABLE_COLUMNS}, 0)


def cell_table(cells: np.ndarray, nuclei: np.ndarray, *, image_id: str, original_shape: Sequence[int],
               mask_key: str) -> "pd.DataFrame":
    """One row per cell of an image's label maps, measured at the original size.

    Parameters
    ----------
    cells, nuclei : (h, w) ndarray of unsigned (or non-negative) integers
        Label maps at segmentation scale (or already at (H, W)); 0 = background, cell ids 1..N
        (gaps allowed), a nucleus carries its cell's id. Not modified.
    image_id : str
    original_shape : (H, W)
        Size of the original image in pixels; the maps are taken as upscaled to it by nearest
        neighbour, exactly as ``cv2.resize(..., interpolation=cv2.INTER_NEAREST)``.
    mask_key : str
        Key of the cache entry the maps come from (stored in every row).

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CELL_TABLE_COLUMNS` (see the module docstring), one row per cell id present,
        ascending; empty (same columns) for a map without cells. Nuclei whose id has no cell are
        ignored. Every value equals what measuring the upscaled (H, W) map gives.

    Raises
    ------
    CellTableError
        Not 2-D integer maps, maps of different shapes, or a map that is not a scaled copy of
        (H, W) (swapped axes).
    """
    if not isinstance(mask_key, str) or not mask_key:
        raise CellTableError(f"image {image_id!r}: mask_key must be a non-empty string, got {mask_key!r}")
    columns: dict[str, object] = dict(cell_measures(cells, nuclei, image_id=image_id,
                                                    original_shape=original_shape))
    n = len(columns["cell_id"])
    columns["ID"] = [image_id] * n
    columns["mask_key"] = [mask_key] * n
    return _frame(columns, n)


def entry_cell_table(entry: "CacheEntry") -> "pd.DataFrame":
    """:func:`cell_table` of one mask-cache entry (its maps, ID, original size and ``mask_key``)."""
    return cell_table(entry.cells, entry.nuclei, image_id=entry.image_id, original_shape=entry.original_shape,
                      mask_key=entry.mask_key)


# ----------------------------------------------------------------------------- whole cache
def cache_cell_table(cache_or_dir: "object | str | PathLike[str]", *, ids: Iterable[str] | None = None,
                     progress: bool = True) -> "pd.DataFrame":
    """The cell table of every image of a mask cache (or of ``ids``), images in the order given.

    Parameters
    ----------
    cache_or_dir : cellcls.masks.CacheReader, cellcls.masks.MaskCache, or path of the cache folder
        A folder or MaskCache is opened with :meth:`MaskCache.reader`, which refuses a cache mixing
        parameter sets; every row records its entry's ``mask_key``.
    ids : iterable of str, optional
        Image IDs to include (default: every "ok" entry of the reader, sorted). An ID without a
        valid entry under the reader's key raises the cache's :class:`~cellcls.errors.CacheError`.
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    pandas.DataFrame with :data:`CELL_TABLE_COLUMNS`, rows grouped by image, cell ids ascending.

    Raises
    ------
    CacheError
        No such cache, an empty or mixed one, or an entry that is missing, failed or corrupt.
    """
    import pandas as pd
    from tqdm import tqdm

    from cellcls.masks.cache import MaskCache
    from cellcls.masks.reader import CacheReader

    if isinstance(cache_or_dir, CacheReader):
        reader = cache_or_dir
    else:
        cache = cache_or_dir if isinstance(cache_or_dir, MaskCache) else MaskCache(cache_or_dir)
        reader = cache.reader()
    wanted = reader.ids() if ids is None else list(dict.fromkeys(str(i) for i in ids))
    frames = []
    for image_id in tqdm(wanted, desc="cell table", unit="img", disable=not progress, file=sys.stderr):
        entry = reader.read(image_id)
        frames.append(entry_cell_table(entry))
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_cell_table()
    return pd.concat(frames, ignore_index=True).astype(CELL_TABLE_DTYPES)


# ----------------------------------------------------------------------------- files
def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise CellTableError(f"{path}: a cell table is a .parquet or .csv file, got suffix {path.suffix!r}")
    return suffix


def _conform(frame: "pd.DataFrame", where: str) -> "pd.DataFrame":
    missing = [c for c in CELL_TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise CellTableError(f"{where}: not a cell table, missing columns {missing}; "
                             "build one with `cellcls cell-table --masks MASKDIR --out cells.parquet`")
    extra = [c for c in frame.columns if c not in CELL_TABLE_DTYPES]
    try:
        typed = frame[list(CELL_TABLE_COLUMNS)].astype(CELL_TABLE_DTYPES)
    except (TypeError, ValueError) as exc:
        raise CellTableError(f"{where}: a cell-table column does not hold its dtype "
                             f"({CELL_TABLE_DTYPES}): {exc}") from exc
    for column in extra:
        typed[column] = frame[column]
    return typed.reset_index(drop=True)


def write_cell_table(frame: "pd.DataFrame", path: "str | PathLike[str]") -> Path:
    """Write a cell table to ``.parquet`` (pyarrow) or ``.csv`` (by suffix); return the path.

    Columns are written in :data:`CELL_TABLE_COLUMNS` order with their dtypes (extra columns after).
    """
    path = Path(path)
    suffix = _suffix(path)
    typed = _conform(frame, "cell table to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".parquet":
        typed.to_parquet(path, index=False, engine="pyarrow")
    else:
        typed.to_csv(path, index=False)
    return path


def read_cell_table(path: "str | PathLike[str]") -> "pd.DataFrame":
    """Read a cell table written by :func:`write_cell_table`, with the dtypes of :data:`CELL_TABLE_DTYPES`.

    Raises
    ------
    CellTableError
        Unknown suffix, missing columns, or values that do not fit the dtypes; the message names the file.
    FileNotFoundError
        No such file.
    """
    import pandas as pd

    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise FileNotFoundError(f"cell table {path} does not exist; build it with "
                                f"`cellcls cell-table --masks MASKDIR --out {path}`")
    try:
        if suffix == ".parquet":
            frame = pd.read_parquet(path, engine="pyarrow")
        else:
            text = {c: "string" for c, d in CELL_TABLE_DTYPES.items() if d == "string"}
            frame = pd.read_csv(path, dtype=text, keep_default_na=False,
                                na_values={c: [""] for c in _FLOAT_COLUMNS})
    except (OSError, ValueError) as exc:
        raise CellTableError(f"{path}: unreadable cell table ({exc})") from exc
    return _conform(frame, str(path))
