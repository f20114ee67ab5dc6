"""Image embeddings: L2 normalisation, test-time-augmentation averaging, and the ``emb.npz`` file format.

File format (``emb.npz``, written by :func:`write_embeddings`, read by :func:`read_embeddings`)
--------------------------------------------------------------------------------------------
An uncompressed NumPy ``.npz`` archive, readable with ``np.load(path, allow_pickle=False)``:

``ids``
    (N,) unicode string array (``<U..``): one image ID per row, unique within the file.
``embeddings``
    (N, D) float32: one embedding per row, L2-normalised (each row's Euclidean norm is 1 within
    :data:`NORM_TOLERANCE`); finite. Cosine similarity between two rows is their dot product.
``labels`` (optional)
    (N, 19) float32 in [0, 1]: the image-level labels of each row (one column per competition class
    id 0..18, 1 = present), for label transfer from labelled neighbours
    (:func:`cellcls.neighbors.transfer_labels`).

Nothing else is stored; any other array in the archive is ignored. Every validation error is an
:class:`~cellcls.errors.EmbeddingError` naming the file (and the row and ID where there is one).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .classes import NUM_CLASSES
from .errors import EmbeddingError, ParameterError

__all__ = [
    "NORM_TOLERANCE",
    "Embeddings",
    "l2_normalise",
    "tta_mean_embedding",
    "write_embeddings",
    "read_embeddings",
    "check_same_dimension",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Largest allowed | ||row|| - 1 | for a row of an embeddings file (float32 rounding is ~1e-7).
NORM_TOLERANCE = 1e-3
_CHUNK = 65536  # rows per normalisation step: bounds the float64 temporaries


@dataclass(frozen=True)
class Embeddings:
    """The contents of one embeddings file.

    Attributes
    ----------
    ids : (N,) ndarray of str
    embeddings : (N, D) float32, L2-normalised rows
    labels : (N, 19) float32 in [0, 1], or None
    path : str
        The file it was read from ("" when built in memory); error messages name it.
    """

    ids: np.ndarray
    embeddings: np.ndarray
    labels: np.ndarray | None = None
    path: str = ""

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """D, the embedding dimension."""
        return int(self.embeddings.shape[1])


# --------------------------------------------------------------------------- maths
def _row_norms(x: np.ndarray) -> np.ndarray:
    """(N,) float64 Euclidean norms of the rows of a 2-D array, computed in float64 chunk by chunk."""
    out = np.empty(x.shape[0], dtype=np.float64)
    for start in range(0, x.shape[0], _CHUNK):
        block = np.asarray(x[start:start + _CHUNK], dtype=np.float64)
        out[start:start + _CHUNK] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def _as_float_matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ParameterError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ParameterError(f"{name} must hold numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ParameterError(f"{name} has 0 columns: an embedding needs at least one dimension")
    return x


def l2_normalise(x: np.ndarray, *, name: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit Euclidean norm.

    Parameters
    ----------
    x : (N, D) array of float (any precision) or int
        Not modified.
    name : str
        What to call ``x`` in error messages.

    Returns
    -------
    (N, D) float32
        A new array; norms computed in float64.

    Raises
    ------
    ParameterError
        ``x`` is not 2-D, holds NaN or infinity, or has a row of zeros (no direction); the message
        names the first bad row.
    """
    return _unit_rows(x, name=name, first_row=0)


def _unit_rows(x: np.ndarray, *, name: str, first_row: int) -> np.ndarray:
    """:func:`l2_normalise` of a slice that starts at row ``first_row`` of ``name`` (for messages)."""
    x = _as_float_matrix(x, name)
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK):
        block = np.asarray(x[start:start + _CHUNK], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = first_row + start + int(np.flatnonzero(bad)[0])
            raise ParameterError(f"{name} row {row} holds NaN or infinity")
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        if (norms == 0).any():
            row = first_row + start + int(np.flatnonzero(norms == 0)[0])
            raise ParameterError(f"{name} row {row} is all zeros: it has no direction to normalise")
        out[start:start + _CHUNK] = block / norms[:, None]
    return out


def tta_mean_embedding(views: Sequence[np.ndarray]) -> np.ndarray:
    """One embedding per image from several test-time-augmented views of it.

    Each view is L2-normalised first (every view counts the same, whatever its norm), the views are
    averaged, and the mean is L2-normalised again.

    Parameters
    ----------
    views : sequence of (N, D) float arrays
        ``views[v][i]`` is the embedding of image ``i`` under augmentation ``v``; all the same shape.

    Returns
    -------
    (N, D) float32, L2-normalised rows.

    Raises
    ------
    ParameterError
        No views, views of different shapes, NaN, a zero row, or views whose normalised mean is zero
        (opposite directions cancel).
    """
    if len(views) == 0:
        raise ParameterError("tta_mean_embedding needs at least one view, got none")
    shape = np.shape(views[0])
    total = None
    for v, view in enumerate(views):
        if np.shape(view) != shape:
            raise ParameterError(f"TTA view {v} has shape {np.shape(view)}, view 0 has {shape}; all views must match")
        unit = l2_normalise(view, name=f"TTA view {v}").astype(np.float64)
        total = unit if total is None else total + unit
    return l2_normalise(total / len(views), name="mean of the TTA views")


# --------------------------------------------------------------------------- files
def _validate(ids: np.ndarray, embeddings: np.ndarray, labels: np.ndarray | None, where: str) -> None:
    if ids.ndim != 1:
        raise EmbeddingError(f"{where}: ids must be 1-D, got shape {ids.shape}")
    if embeddings.ndim != 2 or embeddings.shape[1] == 0:
        raise EmbeddingError(f"{where}: embeddings must be 2-D (N, D) with D >= 1, got shape {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise EmbeddingError(f"{where}: embeddings must be float, got dtype {embeddings.dtype}")
    if len(ids) != embeddings.shape[0]:
        raise EmbeddingError(f"{where}: {len(ids)} ids but {embeddings.shape[0]} embedding rows; they must match")
    finite = np.isfinite(embeddings).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise EmbeddingError(f"{where}: embedding of row {row} (ID {str(ids[row])!r}) holds NaN or infinity "
                             f"({int((~finite).sum())} such rows)")
    off = np.abs(_row_norms(embeddings) - 1.0) > NORM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise EmbeddingError(
            f"{where}: row {row} (ID {str(ids[row])!r}) has norm {_row_norms(embeddings[row:row + 1])[0]:.4g}; embeddings "
            f"must be L2-normalised (pass them through cellcls.embeddings.l2_normalise first)"
        )
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingError(f"{where}: ID {str(unique[counts > 1][0])!r} appears {counts[counts > 1][0]} times; IDs must be unique")
    if labels is not None:
        if labels.shape != (len(ids), NUM_CLASSES):
            raise EmbeddingError(f"{where}: labels must have shape ({len(ids)}, {NUM_CLASSES}), got {labels.shape}")
        bad = ~(np.isfinite(labels) & (labels >= 0) & (labels <= 1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise EmbeddingError(f"{where}: labels of row {row} (ID {str(ids[row])!r}) are not all in [0, 1]")


def write_embeddings(
    path: PathLike,
    ids: Sequence[str] | np.ndarray,
    embeddings: np.ndarray,
    labels: np.ndarray | None = None,
) -> Path:
    """Write an embeddings file (format in the module docstring); returns its path.

    Parameters
    ----------
    path : path
        Output ``.npz`` file; parent folders are created. ``np.savez`` appends ``.npz`` to a name
        without it; the returned path is the file actually written.
    ids : (N,) sequence of str
    embeddings : (N, D) float
        Must already be L2-normalised (use :func:`l2_normalise` or :func:`tta_mean_embedding`);
        stored as float32.
    labels : (N, 19) float in [0, 1], optional

    Raises
    ------
    EmbeddingError
        The arrays do not fit the format; nothing is written.
    """
    path = Path(path)
    ids_arr = np.asarray([str(i) for i in ids], dtype=str) if len(ids) else np.zeros(0, dtype="<U1")
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = None if labels is None else np.asarray(labels, dtype=np.float32)
    _validate(ids_arr, emb, lab, f"embeddings for {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"ids": ids_arr, "embeddings": emb} | ({} if lab is None else {"labels": lab})
    np.savez(path, **arrays)
    written = path if path.suffix == ".npz" else path.with_name(path.name + ".npz")
    log.info("wrote %d embeddings of dimension %d to %s", len(ids_arr), emb.shape[1], written)
    return written


def read_embeddings(path: PathLike) -> Embeddings:
    """Read and validate an embeddings file (format in the module docstring).

    Returns
    -------
    Embeddings
        ``embeddings`` as float32 (N, D), ``labels`` as float32 (N, 19) or None.

    Raises
    ------
    EmbeddingError
        The file is not an ``.npz`` archive, lacks ``ids`` or ``embeddings``, or fails a check of the
        format (shapes, NaN, norms, repeated IDs, labels); the message names the file.
    OSError
        The file cannot be opened.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("ids", "embeddings") if k not in archive.files]
            if missing:
                raise EmbeddingError(f"{path} has no array {missing[0]!r} (it holds {sorted(archive.files)}); "
                                     f"write it with cellcls.embeddings.write_embeddings")
            ids = archive["ids"]
            emb = archive["embeddings"]
            lab = archive["labels"] if "labels" in archive.files else None
    except EmbeddingError:
        raise
    except (ValueError, EOFError) as exc:  # not a zip, truncated, or object arrays needing pickle
        raise EmbeddingError(f"{path} is not a readable embeddings .npz file: {exc}") from exc
    if ids.dtype.kind not in "US":
        raise EmbeddingError(f"{path}: ids must be strings, got dtype {ids.dtype}")
    ids = ids.astype(str)
    _validate(ids, emb, lab, str(path))
    return Embeddings(ids=ids, embeddings=emb.astype(np.float32, copy=False),
                      labels=None if lab is None else lab.astype(np.float32, copy=False), path=str(path))


def check_same_dimension(a: Embeddings, b: Embeddings) -> None:
    """Raise :class:`EmbeddingError` naming both files when their embedding dimensions differ."""
    if a.dim != b.dim:
        raise EmbeddingError(
            f"{a.path or 'the first embeddings'} has {a.dim}-d embeddings but {b.path or 'the second'} has "
            f"{b.dim}-d; both must come from the same model"
        )
