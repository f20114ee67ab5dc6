"""On-disk cache of segmentation label maps, one entry per image ID: a core contract.

The segment stage writes it; every later stage reads it through :meth:`MaskCache.reader`, which
guarantees one parameter set per cache. This package is the only code that touches disk for masks.

Layout of a cache folder ``ROOT``::

    ROOT/{ID}.npz       cell and nuclei label maps at segmentation scale (np.savez_compressed,
                        arrays ``cells`` and ``nuclei``, (h, w) uint16, or uint32 when an id > 65535)
    ROOT/{ID}.json      sidecar: the entry's metadata (the manifest columns incl. ``mask_key``, the
                        ``params`` the key was built from, ``labels_sha256``, the data file's size and
                        SHA-256); written last, it is what makes the entry exist
    ROOT/manifest.csv   one row per sidecar, rebuilt from the sidecars by ``write_manifest()``

Label maps: 0 = background, cells 1..N; the nuclei map uses the id of the cell that holds the
nucleus. Both maps are stored at segmentation scale (h, w) ~= (H * scale, W * scale) where (H, W)
is the original image size; ``read(..., upscale=True)`` returns them at (H, W), nearest neighbour,
pixel for pixel equal to ``cv2.resize(labels, (W, H), interpolation=cv2.INTER_NEAREST)``. A read
loads the data file once: the bytes are checked against the sidecar, then decoded from memory.

Key: an entry is valid for one ``params_hash``, an opaque string the caller builds from the
weights checksum (or the backend name of a weight-free backend) and the segmentation parameters.
An entry written under another ``params_hash`` or another ``CACHE_VERSION`` is "stale". The writer
also records the human-readable ``params`` the key was built from (e.g. the backend's key
ingredients), which is what error messages show.

Identity: a cache holds one parameter set. :meth:`MaskCache.reader` refuses a folder whose "ok"
entries were written under more than one ``params_hash`` (the message names each set, e.g. scale
0.5 vs 1, and how many entries it has), or, given an expected key, reads only that key's entries.
Each entry has a ``mask_key`` (``{params}-{labels}``, see :func:`make_mask_key`): the same for the
same label maps under the same key, whenever and however they were written; every artefact derived
from an entry (cell tables, scores, submissions) records it.

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

__all__ = [
    "CACHE_VERSION",
    "MANIFEST_COLUMNS",
    "STATUSES",
    "CacheEntry",
    "MaskCache",
    "ParameterSet",
    "make_mask_key",
    "upscale_labels",
]

import hashlib
import io
import logging
import lzma
import os
import sys
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

import numpy as np

from cellcls import __version__ as CELLCLS_VERSION
from cellcls.atomic import remove_stale_temp_files
from cellcls.errors import CacheError

from ._files import (
    ID_PATTERN,
    UINT16_MAX,
    as_label_map,
    atomic_write,
    check_geometry,
    check_id,
    check_key,
    entry_problem,
    field_problem,
    json_params,
    read_sidecar,
    to_json,
)
from ._identity import ParameterSet, labels_digest, make_mask_key, mixed_cache_message

if TYPE_CHECKING:
    from .reader import CacheReader

log = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Format version of the entries; entries written under another version are "stale".

2: sidecars record ``params``, ``labels_sha256`` and ``mask_key`` (manifest column ``mask_key``).
"""

STATUSES = ("ok", "missing", "stale", "failed", "corrupt")
"""Every value ``MaskCache.status`` can return."""

MANIFEST_COLUMNS = (
    "ID", "status", "error", "original_height", "original_width", "seg_height", "seg_width", "scale",
    "n_cells", "backend", "params_hash", "mask_key", "dtype", "cache_version", "cellcls_version", "written_at",
)
"""Columns of ``MaskCache.manifest()`` and ``manifest.csv``, in order."""

_INT_COLUMNS = ("original_height", "original_width", "seg_height", "seg_width", "n_cells", "cache_version")
_TEXT_COLUMNS = ("ID", "status", "error", "backend", "params_hash", "mask_key", "dtype", "cellcls_version",
                 "written_at")
# JSON type of every sidecar field the reader uses: an "ok" entry must have them all.
_OK_FIELDS = {**{column: "int" for column in _INT_COLUMNS}, "scale": "number",
              **{column: "text" for column in ("backend", "params_hash", "mask_key", "dtype")}}
_MANIFEST_KINDS = {**{column: "int" for column in _INT_COLUMNS}, "scale": "number",
                   **{column: "text" for column in _TEXT_COLUMNS if column != "ID"}}
_DATA_SUFFIX = ".npz"
_SIDECAR_SUFFIX = ".json"
_MANIFEST_NAME = "manifest.csv"


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
    mask_key : str
        Identity of the entry (parameters + label maps, see :func:`make_mask_key`); stable across
        reads, recorded by everything derived from the entry.
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
    mask_key: str
    upscaled: bool


class _Check(NamedTuple):
    """Outcome of checking one entry: status, sidecar dict, problem text, data bytes (when read)."""

    status: str
    meta: dict[str, Any] | None = None
    problem: str | None = None
    payload: bytes | None = None


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
    Writing (the segment stage):

    >>> cache = MaskCache(tmp_path)                                   # doctest: +SKIP
    >>> for image_id in cache.todo(ids, key):                         # doctest: +SKIP
    ...     cache.write(image_id, cells, nuclei, original_shape=(2048, 2048), scale=0.25,
    ...                 backend="hpa", params_hash=key, params={"scale": 0.25, ...})
    >>> cache.write_manifest()                                        # doctest: +SKIP

    Reading (every later stage): one parameter set, or a CacheError saying why not.

    >>> reader = MaskCache(tmp_path).reader()                         # doctest: +SKIP
    >>> entry = reader.read(reader.ids()[0], upscale=True)            # doctest: +SKIP
    >>> entry.cells.shape, entry.mask_key                             # doctest: +SKIP
    ((2048, 2048), '3f1c0a9e2b7d-8c41d0e5f6a2')
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"MaskCache({str(self.root)!r})"

    # ----------------------------------------------------------------- paths
    def data_path(self, image_id: str) -> Path:
        """Path of the ``.npz`` holding the maps of ``image_id``."""
        return self.root / f"{check_id(image_id)}{_DATA_SUFFIX}"

    def sidecar_path(self, image_id: str) -> Path:
        """Path of the ``.json`` sidecar of ``image_id``."""
        return self.root / f"{check_id(image_id)}{_SIDECAR_SUFFIX}"

    @property
    def manifest_path(self) -> Path:
        return self.root / _MANIFEST_NAME

    # ----------------------------------------------------------------- identity
    def reader(self, *, params_hash: str | None = None) -> "CacheReader":
        """Open the cache for reading ONE parameter set.

        Parameters
        ----------
        params_hash : the expected key. Given, only that key's entries are listed and read; entries
            of other keys are refused. None: the cache must be homogeneous (every "ok" entry of the
            current format shares one ``params_hash``), and that key is used.

        Raises
        ------
        CacheError
            The folder does not exist or holds no entry; no "ok" entry has the expected key; or,
            without an expected key, the "ok" entries mix parameter sets (the message names each
            set readably, e.g. ``scale 0.5`` vs ``scale 1``, with its number of entries, and says
            how to fix it) or include entries of an older cache format.
        """
        from .reader import open_reader

        return open_reader(self, params_hash=params_hash)

    def parameter_sets(self) -> list[ParameterSet]:
        """The "ok" entries of the current format, grouped by ``params_hash``, largest set first."""
        from .reader import parameter_sets

        return parameter_sets(self)

    def mixing_warning(self, params_hash: str, *, params: dict[str, Any] | None = None,
                       replacing: Iterable[str] = ()) -> str | None:
        """Text of the warning due when a run writing ``params_hash`` would leave the folder mixed.

        Parameters
        ----------
        params_hash : key of the entries the run writes.
        params : their human-readable parameters (for the message).
        replacing : IDs the run (re)writes; entries of other keys among them are replaced.

        Returns None when, after the run, every "ok" entry would share ``params_hash``.
        """
        from .reader import mixing_warning

        return mixing_warning(self, params_hash, params=params, replacing=replacing)

    # ----------------------------------------------------------------- queries
    def ids(self) -> list[str]:
        """Sorted IDs that have a sidecar (any status: ok, failed, or unreadable)."""
        return sorted(self._sidecar_files())

    def ok_ids(self, *, params_hash: str | None = None) -> list[str]:
        """Sorted IDs whose entry was written successfully under one parameter set.

        With ``params_hash``, that key's "ok" entries (of the current format); without, the "ok"
        entries of a homogeneous cache. Never silently mixes keys: a cache whose "ok" entries come
        from several parameter sets raises CacheError naming them. :meth:`read` still verifies
        each data file. An empty or absent folder gives ``[]`` (:meth:`reader` raises instead).
        """
        sets = self.parameter_sets()
        if params_hash is not None:
            return next((list(s.ids) for s in sets if s.params_hash == params_hash), [])
        if len(sets) > 1:
            raise CacheError(mixed_cache_message(self.root, sets))
        return list(sets[0].ids) if sets else []

    def status(self, image_id: str, params_hash: str) -> str:
        """State of the entry of ``image_id`` for the key ``params_hash``.

        Returns one of ``STATUSES``: "missing" (no sidecar), "stale" (other params_hash or cache
        version), "failed" (segmentation raised; recorded by ``write_failure``), "corrupt" (sidecar
        or data file unreadable, absent, or not the bytes the sidecar recorded), "ok". The data
        file is checked against its recorded size and SHA-256 (one read, no decompression).
        """
        check_key(image_id, params_hash=params_hash)
        return self._check(image_id, params_hash).status

    def todo(self, ids: Iterable[str], params_hash: str, *, overwrite: bool = False) -> list[str]:
        """IDs among ``ids`` to (re)segment: every one not "ok"; every one if ``overwrite``.

        Order of first appearance is kept and duplicates are dropped.
        """
        from tqdm import tqdm

        check_key("todo", params_hash=params_hash)
        unique = list(dict.fromkeys(check_id(i) for i in ids))
        if overwrite:
            return unique
        checks = tqdm(unique, desc="checking mask cache", unit="image", file=sys.stderr,
                      disable=len(unique) < 2000)
        return [i for i in checks if self._check(i, params_hash).status != "ok"]

    def read(self, image_id: str, *, upscale: bool = False, params_hash: str | None = None) -> CacheEntry:
        """Load the maps of ``image_id``; the data file is read once (checksum, then decoded from memory).

        Parameters
        ----------
        upscale : return the maps at the original (H, W) (see ``upscale_labels``) instead of (h, w).
        params_hash : when given, an entry written under another key is refused. Readers of a
            whole cache use :meth:`reader`, which fixes the key for every read.

        Raises
        ------
        CacheError
            The entry is missing, failed, stale (when ``params_hash`` is given) or unreadable; the
            message names the ID and file and the command that builds the entry.
        """
        if params_hash is not None:
            check_key(image_id, params_hash=params_hash)
        check = self._check(image_id, params_hash)
        if check.status != "ok":
            raise CacheError(self._read_error(image_id, check.status, check.problem))
        meta = check.meta
        cells, nuclei = self._load_arrays(image_id, meta, check.payload)
        original_shape = (int(meta["original_height"]), int(meta["original_width"]))
        if upscale:
            cells = upscale_labels(cells, original_shape)
            nuclei = upscale_labels(nuclei, original_shape)
        return CacheEntry(
            image_id=image_id, cells=cells, nuclei=nuclei, original_shape=original_shape,
            seg_shape=(int(meta["seg_height"]), int(meta["seg_width"])), scale=float(meta["scale"]),
            n_cells=int(meta["n_cells"]), backend=str(meta["backend"]), params_hash=str(meta["params_hash"]),
            mask_key=str(meta["mask_key"]), upscaled=upscale,
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
              original_shape: tuple[int, int], scale: float, backend: str, params_hash: str,
              params: dict[str, Any] | None = None) -> Path:
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
        params : JSON-serialisable parameters the key was built from (e.g. the backend's
            ``key_params()``), recorded for people and error messages; not checked against the key.

        Returns the data file's path.
        """
        image_id = check_id(image_id)
        check_key(image_id, backend=backend, params_hash=params_hash)
        recorded = json_params(image_id, params)
        cells = as_label_map(cell_labels, image_id, "cell_labels")
        nuclei = as_label_map(nuclei_labels, image_id, "nuclei_labels")
        if cells.shape != nuclei.shape:
            raise CacheError(f"{image_id}: cell_labels {cells.shape} and nuclei_labels {nuclei.shape} differ in shape")
        original_shape, scale = check_geometry(image_id, cells.shape, original_shape, scale)
        dtype = np.uint32 if max(int(cells.max(initial=0)), int(nuclei.max(initial=0))) > UINT16_MAX else np.uint16
        cells, nuclei = cells.astype(dtype, copy=False), nuclei.astype(dtype, copy=False)

        buffer = io.BytesIO()
        np.savez_compressed(buffer, cells=cells, nuclei=nuclei)
        payload = buffer.getvalue()
        labels_sha256 = labels_digest(cells, nuclei)
        meta = self._base_meta(image_id, "ok", backend=backend, params_hash=params_hash, params=recorded)
        meta.update(
            original_height=original_shape[0], original_width=original_shape[1],
            seg_height=int(cells.shape[0]), seg_width=int(cells.shape[1]), scale=scale,
            n_cells=int(np.count_nonzero(np.unique(cells))), dtype=np.dtype(dtype).name,
            mask_key=make_mask_key(params_hash, labels_sha256), labels_sha256=labels_sha256,
            data_bytes=len(payload), data_sha256=hashlib.sha256(payload).hexdigest(),
        )
        self.root.mkdir(parents=True, exist_ok=True)
        data_path = self.data_path(image_id)
        # Data first, sidecar last: the sidecar is the commit record of the entry.
        atomic_write(data_path, payload)
        atomic_write(self.sidecar_path(image_id), to_json(meta))
        log.debug("cached %s: %d cells at %sx%s", image_id, meta["n_cells"], *cells.shape)
        return data_path

    def write_failure(self, image_id: str, error: str, *, params_hash: str, backend: str,
                      params: dict[str, Any] | None = None) -> Path:
        """Record that segmenting ``image_id`` raised ``error``; any previous maps are dropped.

        The entry reads as "failed" (redone by ``todo``) and ``read`` raises with the message.
        ``params`` as in :meth:`write`. Returns the sidecar's path.
        """
        image_id = check_id(image_id)
        check_key(image_id, backend=backend, params_hash=params_hash)
        meta = self._base_meta(image_id, "failed", backend=backend, params_hash=params_hash,
                               params=json_params(image_id, params))
        meta["error"] = str(error) or "unknown error"
        self.root.mkdir(parents=True, exist_ok=True)
        sidecar = self.sidecar_path(image_id)
        atomic_write(sidecar, to_json(meta))
        self.data_path(image_id).unlink(missing_ok=True)
        log.debug("cached failure of %s: %s", image_id, meta["error"])
        return sidecar

    def write_manifest(self) -> Path:
        """Rebuild ``manifest.csv`` from the sidecars (atomic) and return its path.

        Call once at the end of a run (on one rank, after the others finished). Also deletes
        temporary files left more than an hour ago by killed writers.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(self.root)  # left by killed writers (an hour untouched)
        frame = self.manifest()
        atomic_write(self.manifest_path, frame.to_csv(index=False).encode("utf-8"))
        return self.manifest_path

    # ----------------------------------------------------------------- internals
    def _check(self, image_id: str, params_hash: str | None) -> _Check:
        """Status of one entry; params_hash None skips the key check. Reads the data file once."""
        sidecar = self.sidecar_path(image_id)
        try:
            meta = read_sidecar(sidecar)
        except FileNotFoundError:
            return _Check("missing")
        except (OSError, ValueError) as exc:
            return _Check("corrupt", None, f"unreadable sidecar {sidecar}: {exc}")
        if meta.get("cache_version") != CACHE_VERSION:
            return _Check("stale", meta,
                          f"written by cache version {meta.get('cache_version')!r}, expected {CACHE_VERSION}")
        if params_hash is not None and meta.get("params_hash") != params_hash:
            return _Check("stale", meta, f"written with params_hash {meta.get('params_hash')!r}, expected {params_hash!r}")
        if meta.get("status") == "failed":
            return _Check("failed", meta, str(meta.get("error")))
        if meta.get("status") != "ok":
            return _Check("corrupt", meta, f"sidecar {sidecar} has status {meta.get('status')!r}")
        if not isinstance(meta.get("mask_key"), str):
            return _Check("corrupt", meta, f"sidecar {sidecar} records no mask_key")
        problem = entry_problem(image_id, meta, _OK_FIELDS)
        if problem:
            return _Check("corrupt", meta, f"sidecar {sidecar}: {problem}")
        payload, problem = self._read_payload(image_id, meta)
        return _Check("corrupt", meta, problem) if problem else _Check("ok", meta, None, payload)

    def _read_payload(self, image_id: str, meta: dict[str, Any]) -> tuple[bytes | None, str | None]:
        """(data bytes, None), or (None, problem) when the file is absent or not what the sidecar recorded."""
        path = self.data_path(image_id)
        try:
            payload = path.read_bytes()
        except FileNotFoundError:
            return None, f"data file {path} is missing"
        except OSError as exc:
            return None, f"data file {path} is unreadable: {exc}"
        if len(payload) != meta.get("data_bytes"):
            return None, f"data file {path} has {len(payload)} bytes, the sidecar recorded {meta.get('data_bytes')}"
        if hashlib.sha256(payload).hexdigest() != meta.get("data_sha256"):
            return None, f"data file {path} does not match the SHA-256 its sidecar recorded"
        return payload, None

    def _load_arrays(self, image_id: str, meta: dict[str, Any], payload: bytes) -> tuple[np.ndarray, np.ndarray]:
        path = self.data_path(image_id)
        expected = (int(meta["seg_height"]), int(meta["seg_width"]))
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
                cells, nuclei = archive["cells"], archive["nuclei"]
        # zipfile/zlib raise many types on damaged archives: a bad deflate stream, an unknown
        # compression method (NotImplementedError), an "encrypted" flag (RuntimeError), bad LZMA data.
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
                NotImplementedError, RuntimeError) as exc:
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

    def _base_meta(self, image_id: str, status: str, *, backend: str, params_hash: str,
                   params: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {column: None for column in MANIFEST_COLUMNS}
        meta.update(ID=image_id, status=status, backend=backend, params_hash=params_hash,
                    cache_version=CACHE_VERSION, cellcls_version=CELLCLS_VERSION,
                    written_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), params=params)
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
            if suffix == _SIDECAR_SUFFIX and ID_PATTERN.fullmatch(stem) and entry.is_file():
                found[stem] = entry
        return found

    def _manifest_row(self, image_id: str, entry: os.DirEntry) -> dict[str, Any]:
        try:
            meta = read_sidecar(Path(entry.path))
        except (OSError, ValueError) as exc:
            return {"ID": image_id, "status": "corrupt", "error": f"unreadable sidecar {entry.path}: {exc}"}
        problem = field_problem(meta, _MANIFEST_KINDS, required=False)
        if problem is None and meta.get("status") == "ok":
            problem = entry_problem(image_id, meta, _OK_FIELDS)
        if problem:
            return {"ID": image_id, "status": "corrupt", "error": f"sidecar {entry.path}: {problem}"}
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
        try:
            frame = _manifest_frame(frame)
        except (TypeError, ValueError) as exc:
            log.warning("ignoring %s with values of the wrong type (%s); reading the sidecars", self.manifest_path, exc)
            return None
        ok = frame["status"].eq("ok").fillna(False).astype(bool)
        if frame.loc[ok, list(_OK_FIELDS)].isna().any(axis=None):
            log.warning("ignoring %s: an 'ok' row lacks a value; reading the sidecars", self.manifest_path)
            return None
        return frame

# --------------------------------------------------------------------- helpers
def _manifest_frame(frame: "pandas.DataFrame") -> "pandas.DataFrame":  # noqa: F821
    frame = frame.reindex(columns=list(MANIFEST_COLUMNS))
    for column in _INT_COLUMNS:
        frame[column] = frame[column].astype("Int64")
    frame["scale"] = frame["scale"].astype("float64")
    for column in _TEXT_COLUMNS:
        # "string" maps None/NaN to <NA> alike on pandas 2 and 3 (astype(str) would write "None").
        frame[column] = frame[column].astype("string")
    return frame.sort_values("ID", kind="stable").reset_index(drop=True)
