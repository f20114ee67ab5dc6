"""On-disk cache of segmentation label maps, one entry per image ID.

The only module of the segment stage that touches disk for masks.

Layout of a cache folder ``ROOT``::

    ROOT/{ID}.npz       cell and nuclei label maps at segmentation scale (np.savez_compressed,
                        arrays ``cells`` and ``nuclei``, (h, w) uint16, or uint32 when an id > 65535)
    ROOT/{ID}.json      sidecar: the entry's metadata; written last, it is what makes the entry exist
    ROOT/manifest.csv   one row per sidecar, rebuilt from the sidecars by ``write_manifest()``

Label maps: 0 = background, cells 1..N; the nuclei map uses the id of the cell that holds the
nucleus. Both maps are stored at segmentation scale (h, w) ~= (H * scale, W * scale) where (H, W)
is the original image size; ``read(..., upscale=True)`` returns them at (H, W), nearest neighbour,
pixel for pixel equal to ``cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST)``.

Key: an entry is valid for one ``params_hash``, an opaque string the caller builds from the
weights checksum (or the backend name of a weight-free backend) and the segmentation parameters.
An entry written under another ``params_hash`` or another ``CACHE_VERSION`` is "stale".

Crash and concurrency safety: every file is written to a unique temporary file in the same folder,
fsynced, then renamed over the target (``os.replace``). The data file goes first, the sidecar
second, so a killed writer leaves either no sidecar (entry "missing") or a sidecar whose recorded
size and SHA-256 do not match the data (entry "corrupt"); both are redone. Each writer touches only
the files of its own IDs, so several processes (e.g. DDP ranks writing disjoint shares) can fill
one cache; ``manifest.csv`` is derived data, rebuilt from the sidecars, never appended to.

Why ``.npz``: on the real 1/4-scale maps of ``tests/data/label_cell_fixture.npz`` (512x512, 29-39
cells) np.savez_compressed gives ~11-13 KB per entry (both maps) against ~20-24 KB for 16-bit PNG at
cv2's fast levels and ~same size at PNG level 9 for 10x the encode time; it also holds uint32 maps
and both maps in one file, which keeps a write to two renames.
"""
from __future__ import annotations

__all__ = ["CACHE_VERSION", "MANIFEST_COLUMNS", "STATUSES", "CacheEntry", "MaskCache", "upscale_labels"]

import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cellcls import __version__ as CELLCLS_VERSION
from cellcls.errors import CacheError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Format version of the entries; entries written under another version are "stale"."""

STATUSES = ("ok", "missing", "stale", "failed", "corrupt")
"""Every value ``MaskCache.status`` can return."""

MANIFEST_COLUMNS = (
    "ID", "status", "error", "original_height", "original_width", "seg_height", "seg_width", "scale",
    "n_cells", "backend", "params_hash", "dtype", "cache_version", "cellcls_version", "written_at",
)
"""Columns of ``MaskCache.manifest()`` and ``manifest.csv``, in order."""

_INT_COLUMNS = ("original_height", "original_width", "seg_height", "seg_width", "n_cells", "cache_version")
_TEXT_COLUMNS = ("ID", "status", "error", "backend", "params_hash", "dtype", "cellcls_version", "written_at")
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DATA_SUFFIX = ".npz"
_SIDECAR_SUFFIX = ".json"
_MANIFEST_NAME = "manifest.csv"
_TEMP_SUFFIX = ".tmp"
# A temp file older than this belongs to a writer that was killed, not to one still running.
_STALE_TEMP_AGE_S = 3600.0
_UINT16_MAX = int(np.iinfo(np.uint16).max)
_UINT32_MAX = int(np.iinfo(np.uint32).max)


@dataclass(frozen=True)
class CacheEntry:
    """One cached segmentation, as returned by ``MaskCache.read``.

    Attributes
    ----------
    image_id : str
    cells, nuclei : (h, w) or (H, W) ndarray of uint16 or uint32
        Label maps, 0 = background, same id for a cell and its nucleus. At segmentation scale
        (h, w), or at the original size (H, W) when read with ``upscale=True``.
    original_shape : (int, int)
        (H, W) of the original image in pixels.
    seg_shape : (int, int)
        (h, w) at which the maps were computed and stored.
    scale : float
        Segmentation scale: h ~= H * scale.
    n_cells : int
        Number of distinct non-zero ids in ``cells``.
    backend, params_hash : str
        What produced the maps and under which key.
    upscaled : bool
        Whether ``cells``/``nuclei`` are at (H, W).
    """

    image_id: str
    cells: np.ndarray = field(repr=False)
    nuclei: np.ndarray = field(repr=False)
    original_shape: tuple[int, int]
    seg_shape: tuple[int, int]
    scale: float
    n_cells: int
    backend: str
    params_hash: str
    upscaled: bool


def upscale_labels(labels: np.ndarray, original_shape: tuple[int, int]) -> np.ndarray:
    """Resize a label map to ``original_shape`` by nearest neighbour.

    Parameters
    ----------
    labels : (h, w) ndarray of uint16 or uint32
    original_shape : (H, W), target size in pixels.

    Returns
    -------
    (H, W) ndarray, same dtype; equal to
    ``cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST)``. uint32, which cv2 < 5 cannot
    resize, goes through the same source-index maps (:func:`cellcls.rle.nearest_source_index`).
    """
    import cv2

    height, width = (int(v) for v in original_shape)
    if labels.ndim != 2 or height <= 0 or width <= 0:
        raise ValueError(f"expected a 2-D label map and a positive (H, W); got {labels.shape} -> {original_shape}")
    if labels.shape == (height, width):
        return labels.copy()
    if labels.dtype == np.uint16:
        return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
    # cv2's nearest mapping is separable; the codec already reproduces its row/column index maps.
    from cellcls.rle import nearest_source_index

    rows = nearest_source_index(labels.shape[0], height)
    cols = nearest_source_index(labels.shape[1], width)
    return labels[rows[:, None], cols[None, :]]


class MaskCache:
    """A folder of segmentation entries keyed by image ID (see the module docstring for the layout).

    Parameters
    ----------
    root : folder of the cache; created on the first write.

    Examples
    --------
    >>> cache = MaskCache(tmp_path)                                   # doctest: +SKIP
    >>> for image_id in cache.todo(ids, key):                         # doctest: +SKIP
    ...     cache.write(image_id, cells, nuclei, original_shape=(2048, 2048), scale=0.25,
    ...                 backend="hpacellseg", params_hash=key)
    >>> cache.write_manifest()                                        # doctest: +SKIP
    >>> cache.read(image_id, upscale=True).cells.shape                # doctest: +SKIP
    (2048, 2048)
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"MaskCache({str(self.root)!r})"

    # ----------------------------------------------------------------- paths
    def data_path(self, image_id: str) -> Path:
        """Path of the ``.npz`` holding the maps of ``image_id``."""
        return self.root / f"{_check_id(image_id)}{_DATA_SUFFIX}"

    def sidecar_path(self, image_id: str) -> Path:
        """Path of the ``.json`` sidecar of ``image_id``."""
        return self.root / f"{_check_id(image_id)}{_SIDECAR_SUFFIX}"

    @property
    def manifest_path(self) -> Path:
        return self.root / _MANIFEST_NAME

    # ----------------------------------------------------------------- queries
    def ids(self) -> list[str]:
        """Sorted IDs that have a sidecar (any status: ok, failed, or unreadable)."""
        return sorted(self._sidecar_files())

    def ok_ids(self) -> list[str]:
        """Sorted IDs whose entry was written successfully (status "ok" in the sidecars).

        What readers of a finished cache iterate over; :meth:`read` still verifies each data file.
        """
        manifest = self.manifest()
        return sorted(manifest.loc[manifest["status"] == "ok", "ID"].astype(str))

    def status(self, image_id: str, params_hash: str) -> str:
        """State of the entry of ``image_id`` for the key ``params_hash``.

        Returns one of ``STATUSES``: "missing" (no sidecar), "stale" (other params_hash or cache
        version), "failed" (segmentation raised; recorded by ``write_failure``), "corrupt" (sidecar
        or data file unreadable, absent, or not the bytes the sidecar recorded), "ok". The data
        file is checked against its recorded size and SHA-256 (one read, no decompression).
        """
        _check_key(image_id, params_hash=params_hash)
        return self._status(image_id, params_hash)[0]

    def todo(self, ids: Iterable[str], params_hash: str, *, overwrite: bool = False) -> list[str]:
        """IDs among ``ids`` to (re)segment: every one not "ok"; every one if ``overwrite``.

        Order of first appearance is kept and duplicates are dropped.
        """
        from tqdm import tqdm

        _check_key("todo", params_hash=params_hash)
        unique = list(dict.fromkeys(_check_id(i) for i in ids))
        if overwrite:
            return unique
        checks = tqdm(unique, desc="checking mask cache", unit="image", file=sys.stderr,
                      disable=len(unique) < 2000)
        return [i for i in checks if self._status(i, params_hash)[0] != "ok"]

    def read(self, image_id: str, *, upscale: bool = False, params_hash: str | None = None) -> CacheEntry:
        """Load the maps of ``image_id``.

        Parameters
        ----------
        upscale : return the maps at the original (H, W) (see ``upscale_labels``) instead of (h, w).
        params_hash : when given, an entry written under another key is refused.

        Raises
        ------
        CacheError
            The entry is missing, failed, stale (when ``params_hash`` is given) or unreadable; the
            message names the ID and file and the command that builds the entry.
        """
        if params_hash is not None:
            _check_key(image_id, params_hash=params_hash)
        status, meta, problem = self._status(image_id, params_hash)
        if status != "ok":
            raise CacheError(self._read_error(image_id, status, problem))
        cells, nuclei = self._load_arrays(image_id, meta)
        original_shape = (int(meta["original_height"]), int(meta["original_width"]))
        if upscale:
            cells = upscale_labels(cells, original_shape)
            nuclei = upscale_labels(nuclei, original_shape)
        return CacheEntry(
            image_id=image_id, cells=cells, nuclei=nuclei, original_shape=original_shape,
            seg_shape=(int(meta["seg_height"]), int(meta["seg_width"])), scale=float(meta["scale"]),
            n_cells=int(meta["n_cells"]), backend=str(meta["backend"]), params_hash=str(meta["params_hash"]),
            upscaled=upscale,
        )

    def manifest(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per sidecar, columns ``MANIFEST_COLUMNS``, sorted by ID.

        Read from ``manifest.csv`` when it is newer than every sidecar and lists the same IDs,
        else built from the sidecars (an unreadable sidecar gives a row with status "corrupt").
        Rows reflect the sidecars; use ``status``/``todo`` to also check the data files.
        """
        import pandas as pd

        sidecars = self._sidecar_files()
        csv = self._fresh_manifest_csv(sidecars)
        if csv is not None:
            return csv
        rows = [self._manifest_row(image_id, path) for image_id, path in sorted(sidecars.items())]
        return _manifest_frame(pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS)))

    # ----------------------------------------------------------------- writes
    def write(self, image_id: str, cell_labels: np.ndarray, nuclei_labels: np.ndarray, *,
              original_shape: tuple[int, int], scale: float, backend: str, params_hash: str) -> Path:
        """Store the maps of ``image_id`` atomically, replacing any previous entry.

        Parameters
        ----------
        cell_labels, nuclei_labels : (h, w) ndarray of any integer dtype, values in 0..2**32-1
            At segmentation scale, 0 = background. Stored as uint16 when every id fits, else uint32.
            Inputs are not modified.
        original_shape : (H, W) of the original image, pixels; must agree with (h, w) / scale to 1 px.
        scale : segmentation scale, > 0 (0.25 for the usual 1/4 path).
        backend : name of the segmentation backend.
        params_hash : the cache key (weights checksum or backend + parameters hash).

        Returns the data file's path.
        """
        image_id = _check_id(image_id)
        _check_key(image_id, backend=backend, params_hash=params_hash)
        cells = _as_label_map(cell_labels, image_id, "cell_labels")
        nuclei = _as_label_map(nuclei_labels, image_id, "nuclei_labels")
        if cells.shape != nuclei.shape:
            raise CacheError(f"{image_id}: cell_labels {cells.shape} and nuclei_labels {nuclei.shape} differ in shape")
        original_shape, scale = _check_geometry(image_id, cells.shape, original_shape, scale)
        dtype = np.uint32 if max(int(cells.max(initial=0)), int(nuclei.max(initial=0))) > _UINT16_MAX else np.uint16
        cells, nuclei = cells.astype(dtype, copy=False), nuclei.astype(dtype, copy=False)

        buffer = io.BytesIO()
        np.savez_compressed(buffer, cells=cells, nuclei=nuclei)
        payload = buffer.getvalue()
        meta = self._base_meta(image_id, "ok", backend=backend, params_hash=params_hash)
        meta.update(
            original_height=original_shape[0], original_width=original_shape[1],
            seg_height=int(cells.shape[0]), seg_width=int(cells.shape[1]), scale=scale,
            n_cells=int(np.count_nonzero(np.unique(cells))), dtype=np.dtype(dtype).name,
            data_bytes=len(payload), data_sha256=hashlib.sha256(payload).hexdigest(),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        data_path = self.data_path(image_id)
        # Data first, sidecar last: the sidecar is the commit record of the entry.
        _atomic_write(data_path, payload)
        _atomic_write(self.sidecar_path(image_id), _to_json(meta))
        log.debug("cached %s: %d cells at %sx%s", image_id, meta["n_cells"], *cells.shape)
        return data_path

    def write_failure(self, image_id: str, error: str, *, params_hash: str, backend: str) -> Path:
        """Record that segmenting ``image_id`` raised ``error``; any previous maps are dropped.

        The entry reads as "failed" (redone by ``todo``) and ``read`` raises with the message.
        Returns the sidecar's path.
        """
        image_id = _check_id(image_id)
        _check_key(image_id, backend=backend, params_hash=params_hash)
        meta = self._base_meta(image_id, "failed", backend=backend, params_hash=params_hash)
        meta["error"] = str(error) or "unknown error"
        self.root.mkdir(parents=True, exist_ok=True)
        sidecar = self.sidecar_path(image_id)
        _atomic_write(sidecar, _to_json(meta))
        self.data_path(image_id).unlink(missing_ok=True)
        log.debug("cached failure of %s: %s", image_id, meta["error"])
        return sidecar

    def write_manifest(self) -> Path:
        """Rebuild ``manifest.csv`` from the sidecars (atomic) and return its path.

        Call once at the end of a run (on one rank, after the others finished). Also deletes
        temporary files left more than an hour ago by killed writers.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        frame = self.manifest()
        _atomic_write(self.manifest_path, frame.to_csv(index=False).encode("utf-8"))
        return self.manifest_path

    # ----------------------------------------------------------------- internals
    def _status(self, image_id: str, params_hash: str | None) -> tuple[str, dict[str, Any] | None, str | None]:
        """(status, sidecar dict or None, problem text or None); params_hash None skips the key check."""
        sidecar = self.sidecar_path(image_id)
        try:
            meta = _read_sidecar(sidecar)
        except FileNotFoundError:
            return "missing", None, None
        except (OSError, ValueError) as exc:
            return "corrupt", None, f"unreadable sidecar {sidecar}: {exc}"
        if meta.get("cache_version") != CACHE_VERSION:
            return "stale", meta, f"written by cache version {meta.get('cache_version')!r}, expected {CACHE_VERSION}"
        if params_hash is not None and meta.get("params_hash") != params_hash:
            return "stale", meta, f"written with params_hash {meta.get('params_hash')!r}, expected {params_hash!r}"
        if meta.get("status") == "failed":
            return "failed", meta, str(meta.get("error"))
        if meta.get("status") != "ok":
            return "corrupt", meta, f"sidecar {sidecar} has status {meta.get('status')!r}"
        problem = self._data_problem(image_id, meta)
        return ("corrupt", meta, problem) if problem else ("ok", meta, None)

    def _data_problem(self, image_id: str, meta: dict[str, Any]) -> str | None:
        path = self.data_path(image_id)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return f"data file {path} is missing"
        except OSError as exc:
            return f"data file {path} is unreadable: {exc}"
        if len(payload) != meta.get("data_bytes"):
            return f"data file {path} has {len(payload)} bytes, the sidecar recorded {meta.get('data_bytes')}"
        if hashlib.sha256(payload).hexdigest() != meta.get("data_sha256"):
            return f"data file {path} does not match the SHA-256 its sidecar recorded"
        return None

    def _load_arrays(self, image_id: str, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        path = self.data_path(image_id)
        expected = (int(meta["seg_height"]), int(meta["seg_width"]))
        try:
            with np.load(path, allow_pickle=False) as archive:
                cells, nuclei = archive["cells"], archive["nuclei"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise CacheError(self._read_error(image_id, "corrupt", f"data file {path} is unreadable: {exc}")) from exc
        for name, array in (("cells", cells), ("nuclei", nuclei)):
            if array.shape != expected or array.dtype.name != meta.get("dtype"):
                raise CacheError(self._read_error(
                    image_id, "corrupt",
                    f"{path}: {name} is {array.dtype} {array.shape}, the sidecar says {meta.get('dtype')} {expected}"))
        return cells, nuclei

    def _read_error(self, image_id: str, status: str, problem: str | None) -> str:
        build = (f"build it with `cellcls segment ... --out {self.root}` "
                 "(it redoes missing, stale, failed and corrupt entries)")
        what = {
            "missing": f"no entry for image {image_id!r} in mask cache {self.root} "
                       f"(no {self.sidecar_path(image_id).name})",
            "failed": f"segmentation of image {image_id!r} failed ({self.sidecar_path(image_id)}): {problem}",
            "stale": f"entry of image {image_id!r} in {self.root} is stale: {problem}",
            "corrupt": f"entry of image {image_id!r} in {self.root} is corrupt: {problem}",
        }[status]
        return f"{what}; {build}"

    def _base_meta(self, image_id: str, status: str, *, backend: str, params_hash: str) -> dict[str, Any]:
        meta: dict[str, Any] = {column: None for column in MANIFEST_COLUMNS}
        meta.update(ID=image_id, status=status, backend=backend, params_hash=params_hash,
                    cache_version=CACHE_VERSION, cellcls_version=CELLCLS_VERSION,
                    written_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        return meta

    def _sidecar_files(self) -> dict[str, os.DirEntry]:
        """{ID: DirEntry} of every sidecar; temp files (leading dot) and other files are skipped."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return {}
        found = {}
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix == _SIDECAR_SUFFIX and _ID_PATTERN.fullmatch(stem) and entry.is_file():
                found[stem] = entry
        return found

    def _manifest_row(self, image_id: str, entry: os.DirEntry) -> dict[str, Any]:
        try:
            meta = _read_sidecar(Path(entry.path))
        except (OSError, ValueError) as exc:
            return {"ID": image_id, "status": "corrupt", "error": f"unreadable sidecar {entry.path}: {exc}"}
        row = {column: meta.get(column) for column in MANIFEST_COLUMNS}
        row["ID"] = image_id
        return row

    def _fresh_manifest_csv(self, sidecars: dict[str, os.DirEntry]) -> "pandas.DataFrame | None":  # noqa: F821
        import pandas as pd

        try:
            csv_mtime = self.manifest_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        # Strictly newer: on a coarse-clock filesystem an equal mtime may hide a later sidecar.
        if any(entry.stat().st_mtime_ns >= csv_mtime for entry in sidecars.values()):
            return None
        try:
            frame = pd.read_csv(self.manifest_path, dtype={column: "string" for column in _TEXT_COLUMNS})
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s (%s); reading the sidecars", self.manifest_path, exc)
            return None
        if list(frame.columns) != list(MANIFEST_COLUMNS) or set(frame["ID"]) != set(sidecars):
            return None
        return _manifest_frame(frame)

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - _STALE_TEMP_AGE_S
        for entry in os.scandir(self.root):
            if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX) and entry.is_file():
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        log.info("removed %s, left by an interrupted writer", entry.path)
                except FileNotFoundError:
                    pass


# --------------------------------------------------------------------- helpers
def _check_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not _ID_PATTERN.fullmatch(image_id):
        raise CacheError(
            f"image ID {image_id!r} cannot name a cache file: expected 1-200 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit")
    return image_id


def _check_key(image_id: str, **keys: str) -> None:
    for name, value in keys.items():
        if not isinstance(value, str) or not value.strip():
            raise CacheError(f"{image_id}: {name} must be a non-empty string, got {value!r}")


def _as_label_map(labels: np.ndarray, image_id: str, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise CacheError(f"{image_id}: {name} must be a non-empty 2-D (h, w) label map, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise CacheError(f"{image_id}: {name} must have an integer dtype (uint16/uint32 ids), got {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > _UINT32_MAX:
        raise CacheError(f"{image_id}: {name} ids must lie in 0..{_UINT32_MAX}, got {low}..{high}")
    return array


def _check_geometry(image_id: str, seg_shape: tuple[int, ...], original_shape: tuple[int, int],
                    scale: float) -> tuple[tuple[int, int], float]:
    try:
        height, width = (int(v) for v in original_shape)
        scale = float(scale)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"{image_id}: original_shape must be (H, W) ints and scale a number; "
                         f"got {original_shape!r}, {scale!r}") from exc
    if height <= 0 or width <= 0 or not scale > 0 or not np.isfinite(scale):
        raise CacheError(f"{image_id}: need positive original (H, W) and scale, got {original_shape!r}, {scale!r}")
    # Catches swapped axes (hpacellseg returns non-square maps transposed) and wrong scales.
    if abs(seg_shape[0] - height * scale) > 1 or abs(seg_shape[1] - width * scale) > 1:
        raise CacheError(
            f"{image_id}: label map {seg_shape} does not match original (H, W)={height, width} x scale {scale} "
            f"= ({height * scale:g}, {width * scale:g}); check the axis order and the scale")
    return (height, width), scale


def _read_sidecar(path: Path) -> dict[str, Any]:
    meta = json.loads(path.read_bytes())
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def _to_json(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=1, sort_keys=False) + "\n").encode("utf-8")


def _atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a part."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_frame(frame: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    frame = frame.reindex(columns=list(MANIFEST_COLUMNS))
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    frame["scale"] = frame["scale"].astype("float64")
    for column in _TEXT_COLUMNS:
        # "string" maps None/NaN to <NA> alike on pandas 2 and 3 (astype(str) would write "None").
        frame[column] = frame[column].astype("string")
    return frame.sort_values("ID", kind="stable").reset_index(drop=True)
