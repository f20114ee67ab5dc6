"""Near-duplicate images across folders (competition train vs public HPA, say).

The same field of view can appear twice: copied, rotated by 90/180/270 degrees, flipped, or
re-encoded (16-bit TIFF vs 8-bit PNG). Each sample gets a perceptual hash that survives all of
these, and samples whose hashes are close are grouped.

Hash, per channel of :data:`HASH_CHANNELS` (protein and nucleus: the nucleus pins the field of
view, the protein the antibody):

1. decode at full size, scale to ``[0, 1]`` (so 8- and 16-bit copies agree), area-resize to a
   32 x 32 float thumbnail, and standardise it (zero mean, unit std: contrast changes vanish);
2. keep the 8 x 8 lowest-frequency coefficients of its orthonormal 2-D DCT-II;
3. subtract the data set's mean coefficients, averaged over the 8 dihedral transforms (so the
   offset itself is symmetric; it removes what all images share, like vignetting);
4. one bit per coefficient but the constant one: ``coefficient > 0``. 63 bits per channel.

A dihedral transform of the image only permutes coefficients and flips their signs (transpose
swaps ``u`` and ``v``; a flip along an axis multiplies frequency ``k`` by ``(-1)**k``), so the
hashes of all 8 orientations come from one decode. Two samples are near duplicates when, for
some orientation, their hashes differ in at most ``threshold`` bits (summed over channels).

Search does not compare all pairs: each hash is cut into ``threshold + 1`` bands (or more);
two hashes within ``threshold`` bits agree exactly on at least one band (pigeonhole), so only
samples sharing a band value are compared. A channel that is flat (blank) is not indexed.
Groups are connected components of the near-duplicate pairs (so chains A~B~C form one group).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .errors import CellclsError, ParameterError
from .io import _bounded_map, list_image_ids, read_image

__all__ = [
    "HASH_CHANNELS",
    "THUMB_PX",
    "DEFAULT_THRESHOLD_BITS",
    "BITS_PER_CHANNEL",
    "DIHEDRAL",
    "DuplicateRow",
    "dct_signature",
    "dihedral",
    "hash_signatures",
    "hamming",
    "near_duplicate_pairs",
    "group_pairs",
    "find_duplicates",
    "write_duplicates",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

HASH_CHANNELS: tuple[str, ...] = ("green", "blue")
THUMB_PX = 32
_LOW = 8  # 8 x 8 low-frequency coefficients
BITS_PER_CHANNEL = _LOW * _LOW - 1
DEFAULT_THRESHOLD_BITS = 6
_FLAT_STD = 1e-4  # thumbnail std (in [0, 1] units) below which a channel is blank


class DuplicateRow(NamedTuple):
    """One member of a near-duplicate group."""

    group: int
    image_id: str
    folder: str


# --------------------------------------------------------------------------- signatures
def dct_signature(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Low-frequency DCT coefficients of a standardised thumbnail, per channel.

    Parameters
    ----------
    image : (H, W, C) ndarray
        uint8, uint16 or float in [0, 1].

    Returns
    -------
    coefficients : (C, 8, 8) float32
        Orthonormal DCT-II of the 32 x 32 area-resized, standardised channel; ``[u, v]`` =
        (vertical, horizontal) frequency. Zero for a flat channel.
    flat : (C,) bool
        True where the channel is (nearly) constant.
    """
    import cv2

    from .io import to_float01

    image = np.asarray(image)
    if image.ndim != 3:
        raise ParameterError(f"expected an (H, W, C) image, got shape {image.shape}")
    coefficients = np.zeros((image.shape[2], _LOW, _LOW), dtype=np.float32)
    flat = np.zeros(image.shape[2], dtype=bool)
    for c in range(image.shape[2]):
        plane = to_float01(image[..., c])
        thumb = cv2.resize(plane, (THUMB_PX, THUMB_PX), interpolation=cv2.INTER_AREA).astype(np.float64)
        std = thumb.std()
        if std < _FLAT_STD:
            flat[c] = True
            continue
        coefficients[c] = cv2.dct((thumb - thumb.mean()) / std)[:_LOW, :_LOW]
    return coefficients, flat


_SIGN = (-1.0) ** np.arange(_LOW)
#: The 8 dihedral transforms as (transpose, flip rows, flip columns), applied in that order.
DIHEDRAL = tuple((t, r, c) for t in (0, 1) for r in (0, 1) for c in (0, 1))


def dihedral(coefficients: np.ndarray, index: int) -> np.ndarray:
    """DCT coefficients ``(..., 8, 8)`` of the image transformed by ``DIHEDRAL[index]``.

    The image transform is ``x = x.T`` (if transpose), then ``x = x[::-1]`` (flip rows), then
    ``x = x[:, ::-1]`` (flip columns); index 0 is the identity.
    """
    transpose, flip_rows, flip_cols = DIHEDRAL[index]
    out = np.swapaxes(coefficients, -1, -2) if transpose else coefficients
    if flip_rows:
        out = out * _SIGN[:, None]
    if flip_cols:
        out = out * _SIGN[None, :]
    return np.array(out, dtype=np.float32)


def hash_signatures(coefficients: np.ndarray, *, centre: bool = True) -> np.ndarray:
    """Hashes of every sample in all 8 orientations.

    Parameters
    ----------
    coefficients : (N, C, 8, 8) float
        From :func:`dct_signature`.
    centre : bool
        Subtract the data set's dihedral-symmetrised mean coefficients first.

    Returns
    -------
    (N, 8, C) uint64
        ``[i, t, c]``: 63 bits of channel ``c`` of sample ``i`` in orientation ``DIHEDRAL[t]``.
    """
    coefficients = np.asarray(coefficients, dtype=np.float32)
    n = coefficients.shape[0]
    offset = np.zeros(coefficients.shape[1:], dtype=np.float32)
    if centre and n:
        mean = coefficients.mean(axis=0)
        offset = np.mean([dihedral(mean, t) for t in range(len(DIHEDRAL))], axis=0)
    weights = (np.uint64(1) << np.arange(BITS_PER_CHANNEL, dtype=np.uint64))
    hashes = np.zeros((n, len(DIHEDRAL), coefficients.shape[1]), dtype=np.uint64)
    for t in range(len(DIHEDRAL)):
        centred = dihedral(coefficients, t) - offset
        bits = centred.reshape(n, coefficients.shape[1], _LOW * _LOW)[..., 1:] > 0
        hashes[:, t, :] = (bits.astype(np.uint64) * weights).sum(axis=-1, dtype=np.uint64)
    return hashes


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between hash arrays ``a`` and ``b`` (``(..., C)`` uint64), summed over C."""
    return np.bitwise_count(np.bitwise_xor(a, b)).sum(axis=-1, dtype=np.int64)


# --------------------------------------------------------------------------- search
def _bands(n_bands: int, n_channels: int) -> list[tuple[int, int, int]]:
    """(channel, low bit, high bit) bands; every channel cut into the same number of bands."""
    per_channel = math.ceil(n_bands / n_channels)
    edges = np.linspace(0, BITS_PER_CHANNEL, per_channel + 1).round().astype(int)
    return [(c, int(lo), int(hi)) for c in range(n_channels) for lo, hi in zip(edges[:-1], edges[1:])]


def near_duplicate_pairs(
    hashes: np.ndarray,
    *,
    threshold: int = DEFAULT_THRESHOLD_BITS,
    flat: np.ndarray | None = None,
) -> np.ndarray:
    """All pairs of samples within ``threshold`` bits in some orientation.

    Parameters
    ----------
    hashes : (N, 8, C) uint64
        From :func:`hash_signatures`.
    threshold : int
        Largest Hamming distance (bits, over all channels) that counts as a duplicate.
    flat : (N, C) bool, optional
        Blank channels; they are not used to find candidates.

    Returns
    -------
    (M, 3) int64
        Rows ``(i, j, distance)`` with ``i < j``, sorted, each pair once with its smallest
        distance over orientations.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    n, n_orient, n_channels = hashes.shape
    flat = np.zeros((n, n_channels), dtype=bool) if flat is None else np.asarray(flat, dtype=bool)
    found_i, found_j, found_d = [], [], []
    for c, lo, hi in _bands(threshold + 1, n_channels):
        mask = np.uint64((1 << (hi - lo)) - 1)
        valid = np.flatnonzero(~flat[:, c])
        if valid.size < 2:
            continue
        keys = (hashes[valid, 0, c] >> np.uint64(lo)) & mask
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        for t in range(n_orient):
            queries = (hashes[valid, t, c] >> np.uint64(lo)) & mask
            left = np.searchsorted(sorted_keys, queries, side="left")
            right = np.searchsorted(sorted_keys, queries, side="right")
            counts = right - left
            if counts.sum() == 0:
                continue
            qi = np.repeat(np.arange(valid.size), counts)
            # position within each run: global index minus the run's start offset
            starts = np.repeat(left - np.cumsum(counts) + counts, counts)
            cj = order[starts + np.arange(qi.size)]
            i, j = valid[qi], valid[cj]
            keep = i != j
            i, j = i[keep], j[keep]
            d = hamming(hashes[i, t, :], hashes[j, 0, :])
            close = d <= threshold
            found_i.append(i[close])
            found_j.append(j[close])
            found_d.append(d[close])
    if not found_i:
        return np.zeros((0, 3), dtype=np.int64)
    i = np.concatenate(found_i)
    j = np.concatenate(found_j)
    d = np.concatenate(found_d)
    pairs = np.stack([np.minimum(i, j), np.maximum(i, j), d], axis=1).astype(np.int64)
    if pairs.size == 0:
        return pairs.reshape(0, 3)
    pairs = pairs[np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0]))]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = (pairs[1:, 0] != pairs[:-1, 0]) | (pairs[1:, 1] != pairs[:-1, 1])
    return pairs[first]


def group_pairs(n: int, pairs: np.ndarray) -> np.ndarray:
    """(n,) int64 group id per sample: connected components of ``pairs``; -1 for samples in no pair.

    Group ids are 0..G-1 in order of each group's first sample.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, pairs.shape[-1] if len(pairs) else 3)
    groups = np.full(n, -1, dtype=np.int64)
    if len(pairs) == 0:
        return groups
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    in_pair = np.zeros(n, dtype=bool)
    in_pair[pairs[:, 0]] = in_pair[pairs[:, 1]] = True
    renumber: dict[int, int] = {}
    for idx in np.flatnonzero(in_pair):
        groups[idx] = renumber.setdefault(int(labels[idx]), len(renumber))
    return groups


# --------------------------------------------------------------------------- folders
def find_duplicates(
    images_dirs: PathLike | Sequence[PathLike],
    *,
    threshold: int = DEFAULT_THRESHOLD_BITS,
    channels: Sequence[str] = HASH_CHANNELS,
    workers: int = 2,
    progress: bool = True,
) -> list[DuplicateRow]:
    """Near-duplicate groups among all complete samples of ``images_dirs``.

    Only :data:`HASH_CHANNELS` are decoded. Returns one row per sample that has at least one
    near duplicate, sorted by group, then folder and ID; samples without one are left out.
    """
    from tqdm.auto import tqdm

    if not (isinstance(threshold, (int, np.integer)) and threshold >= 0):
        raise ParameterError(f"threshold must be an integer number of bits >= 0, got {threshold!r}")
    dirs = [Path(images_dirs)] if isinstance(images_dirs, (str, os.PathLike)) else [Path(d) for d in images_dirs]
    if not dirs:
        raise CellclsError("find_duplicates needs at least one image folder")
    samples = [(d, i) for d in dirs for i in list_image_ids(d)]
    if not samples:
        raise CellclsError(f"no complete samples in {', '.join(map(str, dirs))}")

    def signature(sample: tuple[Path, str]) -> tuple[np.ndarray, np.ndarray]:
        return dct_signature(read_image(sample[0], sample[1], channels=channels))

    coefficients = np.zeros((len(samples), len(channels), _LOW, _LOW), dtype=np.float32)
    flat = np.zeros((len(samples), len(channels)), dtype=bool)
    with tqdm(total=len(samples), desc="hashing", unit="img", disable=not progress) as bar:
        for k, (coef, is_flat) in enumerate(_bounded_map(signature, samples, workers=workers)):
            coefficients[k], flat[k] = coef, is_flat
            bar.update()
    if flat.all(axis=1).any():
        log.warning("%d samples are blank in every hashed channel and cannot be matched", int(flat.all(axis=1).sum()))
    hashes = hash_signatures(coefficients)
    pairs = near_duplicate_pairs(hashes, threshold=threshold, flat=flat)
    groups = group_pairs(len(samples), pairs)
    rows = [DuplicateRow(int(g), image_id, str(folder)) for g, (folder, image_id) in zip(groups, samples) if g >= 0]
    rows.sort(key=lambda r: (r.group, r.folder, r.image_id))
    log.info("%d near-duplicate pairs, %d groups, %d images", len(pairs), len({r.group for r in rows}), len(rows))
    return rows


def write_duplicates(rows: Sequence[DuplicateRow], path: PathLike) -> None:
    """CSV with columns ``group,ID,folder``."""
    import csv

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "ID", "folder"])
        writer.writerows((r.group, r.image_id, r.folder) for r in rows)
