"""Competition mask codec: binary mask <-> ASCII mask string.

Format (HPA_FACTS §2)
---------------------
A boolean (H, W) mask at the ORIGINAL image resolution is read column-major (Fortran order:
down the first column, then the second, ...). Its run lengths, background first, are the
uncompressed COCO RLE ``counts`` (``[3, 2, 7]``: 3 background pixels, 2 foreground, 7
background; the first count is 0 when pixel (0, 0) is foreground; no trailing zero).
pycocotools packs them into its compressed ``counts`` bytes (deltas to the count two places
back from the fourth count on, 5-bit groups, ASCII offset 48). Those bytes are compressed
with zlib at level 9 and base64-encoded; the ASCII result is the mask string. The string does
not carry (H, W): decoding needs it.

Strictness: every function raises :class:`~cellcls.errors.MaskCodecError` on bad input and
never returns None. A string decodes only if its runs add up to exactly ``H * W``, with one
exception: a string with no foreground pixel at all decodes to an empty mask at ANY size,
because the sample submission's placeholder ``eNoLCAgIMAEABJkBdQ==`` (a 2048² empty mask) is
used for images of every size.

API
---
    encode(mask) -> str                         (H, W) bool -> mask string
    decode(text, (H, W)) -> (H, W) bool ndarray
    decode_counts(text) -> (K,) int64           uncompressed run lengths, format-checked only
    area(text) -> int                           foreground pixels, no full-frame decode
    areas(texts) -> (S,) int64                  the same for many strings in one vectorised parse
    bbox(text, (H, W)) -> (y0, x0, y1, x1)      half-open, original pixels
    to_coco(text, (H, W)) / from_coco(rle)      pycocotools compressed RLE dicts
    to_coco_many(texts, (H, W)) -> (rles, areas)  validated, one vectorised parse (evaluator)
    encode_label_map(labels, out_shape=(H, W)) -> {cell id: mask string}
    nearest_source_index(n_src, n_dst)          the cv2.INTER_NEAREST index mapping
"""
from __future__ import annotations

import base64
import binascii
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask

from .errors import MaskCodecError

__all__ = [
    "EMPTY_MASK_FULL_FRAME",
    "encode",
    "decode",
    "decode_counts",
    "area",
    "areas",
    "bbox",
    "to_coco",
    "to_coco_with_area",
    "to_coco_many",
    "from_coco",
    "encode_label_map",
    "nearest_source_index",
]

#: The mask string of the sample submission (an empty 2048² mask); it decodes to all-False at any size.
EMPTY_MASK_FULL_FRAME = "eNoLCAgIMAEABJkBdQ=="

# A uint32 delta never needs more than 7 five-bit groups; allow slack, refuse absurd lengths.
_MAX_GROUP_CHARS = 12


def _snippet(text: str | bytes) -> str:
    return repr(text[:40]) + ("..." if len(text) > 40 else "")


def _check_shape(shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an infinite float
        raise MaskCodecError(f"mask size must be (H, W) with two integers, got {shape!r}") from exc
    if h <= 0 or w <= 0:
        raise MaskCodecError(f"mask size must be positive (H, W), got {(h, w)}")
    return h, w


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask as a competition mask string.

    Parameters
    ----------
    mask : (H, W) ndarray of bool or integers
        At the original image resolution; nonzero pixels are inside.

    Returns
    -------
    str
        ASCII base64 text (see the module docstring for the format).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise MaskCodecError(f"expected a non-empty 2-D (H, W) mask, got shape {mask.shape}")
    h, w = mask.shape
    binary = mask if mask.dtype == bool else mask != 0
    fortran = np.asfortranarray(binary.view(np.uint8).reshape(h, w, 1))
    counts = coco_mask.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def _coco_bytes(text: str | bytes) -> bytes:
    """Mask string -> pycocotools compressed counts bytes (base64 and zlib undone, strictly)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not isinstance(text, str):
        raise MaskCodecError(f"a mask string must be str, got {type(text).__name__}")
    if not text:
        raise MaskCodecError("mask string is empty; an empty mask is written as a string, e.g. "
                             f"{EMPTY_MASK_FULL_FRAME!r}")
    try:
        packed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MaskCodecError(f"mask string is not valid base64 (truncated or bad characters): "
                             f"{_snippet(text)}") from exc
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(packed)
    except zlib.error as exc:
        raise MaskCodecError(f"mask string is not zlib data: {_snippet(text)} ({exc})") from exc
    if not inflater.eof:
        raise MaskCodecError(f"mask string holds a truncated zlib stream: {_snippet(text)}")
    if inflater.unused_data:
        raise MaskCodecError(f"mask string has {len(inflater.unused_data)} bytes after its zlib "
                             f"stream: {_snippet(text)}")
    if not raw:
        raise MaskCodecError(f"mask string holds no RLE counts: {_snippet(text)}")
    return raw


def _parse_counts(raws: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools compressed counts of S strings -> their run lengths, in one vectorised pass.

    Returns
    -------
    counts : (K,) int64, the S run-length lists one after the other (background first each).
    bounds : (S + 1,) int64, string s owns ``counts[bounds[s]:bounds[s + 1]]``.
    """
    where = _snippet(raws[0]) if len(raws) == 1 else f"one of {len(raws)} mask strings"
    sizes = np.fromiter(map(len, raws), dtype=np.int64, count=len(raws))
    chars = np.frombuffer(b"".join(raws), dtype=np.uint8) - np.uint8(48)  # below '0' wraps to >= 208
    if chars.max() > 63:
        raise MaskCodecError(f"RLE counts hold a byte outside the COCO alphabet ('0'..'o'): {where}")
    continued = chars >= 0x20
    string_end = np.cumsum(sizes)
    if continued[string_end - 1].any():
        raise MaskCodecError(f"RLE counts end in the middle of a number (truncated): {where}")
    ends = (~continued).nonzero()[0]  # last character of each number
    low = (chars & 0x1F).astype(np.int64)
    values = low[ends]  # right for one-character numbers, the usual case
    lengths = np.empty_like(ends)
    lengths[0] = ends[0] + 1
    np.subtract(ends[1:], ends[:-1], out=lengths[1:])
    if len(ends) < len(chars):  # some numbers span several 5-bit characters, least significant first
        multi = (lengths > 1).nonzero()[0]
        span = lengths[multi]
        if span.max() > _MAX_GROUP_CHARS:
            raise MaskCodecError(f"RLE counts hold a number too long for a run length: {where}")
        first = ends[multi] - span + 1
        value = low[first]
        for k in range(1, int(span.max())):
            more = (span > k).nonzero()[0]
            value[more] |= low[first[more] + k] << (5 * k)
        values[multi] = value
    negative = (chars[ends] & 0x10).nonzero()[0]  # sign bit of the last character
    values[negative] -= np.left_shift(1, 5 * lengths[negative])
    # From the fourth count of each string on, a count is stored as the difference to the count
    # two places back: undo with one running sum per parity, restarted at every string.
    bounds = np.zeros(len(raws) + 1, dtype=np.int64)
    bounds[1:] = np.searchsorted(ends, string_end)
    per_string = np.diff(bounds)
    owner = np.repeat(np.arange(len(raws)), per_string)
    position = np.arange(len(values)) - bounds[owner]
    for chain in ((position % 2 == 1).nonzero()[0], ((position % 2 == 0) & (position >= 2)).nonzero()[0]):
        if chain.size == 0:
            continue
        running = np.cumsum(values[chain])
        chain_owner = owner[chain]
        starts = np.concatenate(([True], chain_owner[1:] != chain_owner[:-1])).nonzero()[0]
        before = np.zeros(len(raws), dtype=np.int64)
        before[chain_owner[starts]] = running[starts] - values[chain[starts]]
        values[chain] = running - before[chain_owner]
    if values.min() < 0 or values.max() > 0xFFFFFFFF:
        raise MaskCodecError(f"RLE counts decode to a negative or oversized run length: {where}")
    return values, bounds


def _totals_and_areas(counts: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per string of :func:`_parse_counts`: pixels covered by all runs, and foreground pixels."""
    odd = np.zeros(len(counts), dtype=np.int64)
    odd[1::2] = 1  # parity of the global index; flipped below for strings starting at an odd index
    totals = np.add.reduceat(counts, bounds[:-1])
    odd_sums = np.add.reduceat(counts * odd, bounds[:-1])
    return totals, np.where(bounds[:-1] % 2 == 0, odd_sums, totals - odd_sums)


def areas(texts: Sequence[str]) -> np.ndarray:
    """Foreground pixels of many mask strings, in one vectorised parse (format checked, not size).

    Returns
    -------
    (S,) ndarray of int64
    """
    if len(texts) == 0:
        return np.zeros(0, dtype=np.int64)
    return _totals_and_areas(*_parse_counts([_coco_bytes(text) for text in texts]))[1].astype(np.int64)


def _counts_from_coco_bytes(raw: bytes) -> np.ndarray:
    """pycocotools compressed counts bytes -> (K,) int64 run lengths (background first)."""
    return _parse_counts([raw])[0]


def decode_counts(text: str) -> np.ndarray:
    """Uncompressed run lengths of a mask string, checked for format but not for size.

    Returns
    -------
    (K,) ndarray of int64
        Column-major runs, background first (the first may be 0); their sum is H * W for a
        well-formed string.
    """
    return _counts_from_coco_bytes(_coco_bytes(text))


def _checked_counts(text: str, shape: Any) -> tuple[np.ndarray, bytes, tuple[int, int]]:
    h, w = _check_shape(shape)
    raw = _coco_bytes(text)
    counts = _counts_from_coco_bytes(raw)
    total = int(counts.sum())
    if total != h * w and int(counts[1::2].sum()) != 0:
        raise MaskCodecError(f"mask string's runs cover {total} pixels but the image is {h}x{w} = "
                             f"{h * w}: it was encoded at another size ({_snippet(text)})")
    return counts, raw, (h, w)


def decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a competition mask string.

    Parameters
    ----------
    text : str
        The mask string.
    shape : (H, W)
        Size of the original image, in pixels.

    Returns
    -------
    (H, W) ndarray of bool, C-contiguous.

    Raises
    ------
    MaskCodecError
        Bad base64, bad or truncated zlib, malformed RLE, or runs that do not add up to H*W.
    """
    counts, _, (h, w) = _checked_counts(text, shape)
    if int(counts[1::2].sum()) == 0:
        return np.zeros((h, w), dtype=bool)
    values = (np.arange(len(counts)) % 2).astype(bool)
    column_major = np.repeat(values, counts)
    return np.ascontiguousarray(column_major.reshape(w, h).T)


def area(text: str | Mapping[str, Any]) -> int:
    """Number of foreground pixels of a mask string (or of a pycocotools RLE dict)."""
    if isinstance(text, Mapping):
        try:
            return int(coco_mask.area(dict(text)))
        except Exception as exc:  # pycocotools raises bare TypeError/ValueError on bad dicts
            raise MaskCodecError(f"not a pycocotools RLE dict with 'size' and 'counts': {exc}") from exc
    return int(decode_counts(text)[1::2].sum())


def bbox(text: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Bounding box ``(y0, x0, y1, x1)`` of a mask string, half-open, in original pixels.

    An empty mask gives ``(0, 0, 0, 0)``. Computed from the runs, without a full-frame decode.
    """
    counts, _, (h, w) = _checked_counts(text, shape)
    ends = np.cumsum(counts)
    starts = ends - counts
    fg = (np.arange(len(counts)) % 2 == 1) & (counts > 0)
    if not fg.any():
        return (0, 0, 0, 0)
    first, last = starts[fg], ends[fg] - 1  # inclusive flat column-major indices
    x0, x1 = int(first.min() // h), int(last.max() // h) + 1
    spans_columns = (first // h) != (last // h)  # such a run touches row H-1 and row 0
    y0 = 0 if spans_columns.any() else int((first % h).min())
    y1 = h if spans_columns.any() else int((last % h).max()) + 1
    return (y0, x0, y1, x1)


def to_coco(text: str, shape: tuple[int, int]) -> dict[str, Any]:
    """Validated pycocotools compressed RLE ``{'size': [H, W], 'counts': bytes}`` of a mask string.

    A size-less empty mask (the sample placeholder) becomes the canonical empty RLE of (H, W).
    """
    return to_coco_with_area(text, shape)[0]


def to_coco_with_area(text: str, shape: tuple[int, int]) -> tuple[dict[str, Any], int]:
    """:func:`to_coco` and :func:`area` from a single parse."""
    rles, areas = to_coco_many([text], shape)
    return rles[0], int(areas[0])


def to_coco_many(texts: Sequence[str], shape: tuple[int, int]) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Validated pycocotools RLEs and areas of many mask strings of one (H, W) image at once.

    One vectorised parse for all strings (the evaluator's hot path); the rules of
    :func:`decode`. On a bad string the MaskCodecError may not say which one: parse them one by
    one (:func:`to_coco_with_area`) to find out.

    Returns
    -------
    rles : list of ``{'size': [H, W], 'counts': bytes}``; areas : (S,) int64 foreground pixels.
    """
    h, w = _check_shape(shape)
    if len(texts) == 0:
        return [], np.zeros(0, dtype=np.int64)
    raws = [_coco_bytes(text) for text in texts]
    totals, areas = _totals_and_areas(*_parse_counts(raws))
    wrong = (totals != h * w) & (areas != 0)
    if wrong.any():
        s = int(wrong.argmax())
        raise MaskCodecError(f"mask string's runs cover {int(totals[s])} pixels but the image is {h}x{w} = "
                             f"{h * w}: it was encoded at another size ({_snippet(texts[s])})")
    empty_rle = None
    rles = []
    for raw, total in zip(raws, totals.tolist()):
        if total != h * w:  # a size-less empty mask (the sample placeholder)
            if empty_rle is None:
                empty_rle = coco_mask.frPyObjects([{"size": [h, w], "counts": [h * w]}], h, w)[0]["counts"]
            raw = empty_rle
        rles.append({"size": [h, w], "counts": raw})
    return rles, areas.astype(np.int64)


def from_coco(rle: Mapping[str, Any]) -> str:
    """Mask string of a pycocotools RLE dict (compressed bytes or uncompressed list counts)."""
    try:
        h, w = _check_shape(rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError) as exc:
        raise MaskCodecError(f"not a pycocotools RLE dict with 'size' and 'counts': {rle!r:.80}") from exc
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        runs = np.asarray(counts, dtype=np.int64)
        if runs.ndim != 1 or runs.min(initial=0) < 0 or int(runs.sum()) != h * w:
            raise MaskCodecError(f"uncompressed RLE counts must be non-negative and add up to {h}x{w}")
        counts = coco_mask.frPyObjects([{"size": [h, w], "counts": runs}], h, w)[0]["counts"]
    text = base64.b64encode(zlib.compress(counts, 9)).decode("ascii")
    _checked_counts(text, (h, w))
    return text


def nearest_source_index(n_src: int, n_dst: int) -> np.ndarray:
    """Source index of every destination index under ``cv2.INTER_NEAREST`` resizing.

    ``src = min(floor(dst * (1 / (n_dst / n_src))), n_src - 1)`` in float64, exactly as
    OpenCV's ``resize`` computes it (not the half-pixel-centred INTER_NEAREST_EXACT), so that
    masks upscaled here line up pixel for pixel with ``cv2.resize(labels, (W, H),
    interpolation=cv2.INTER_NEAREST)``.

    Returns
    -------
    (n_dst,) ndarray of int64, non-decreasing, in [0, n_src).
    """
    if n_src <= 0 or n_dst <= 0:
        raise MaskCodecError(f"sizes must be positive, got {n_src} -> {n_dst}")
    inverse_scale = 1.0 / (float(n_dst) / float(n_src))
    index = np.floor(np.arange(n_dst, dtype=np.float64) * inverse_scale).astype(np.int64)
    return np.minimum(index, n_src - 1)


def _kept_with_repeats(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a non-decreasing index map: the distinct sources and how many destinations each feeds."""
    first = np.flatnonzero(np.concatenate(([True], index[1:] != index[:-1])))
    repeats = np.diff(np.concatenate((first, [len(index)])))
    return index[first], repeats


def encode_label_map(labels: np.ndarray, *, out_shape: tuple[int, int] | None = None) -> dict[int, str]:
    """Mask string of every cell of a label map, upscaled (nearest) to the original size.

    Equal to ``{k: encode(big == k)}`` with ``big = cv2.resize(labels, (W, H),
    interpolation=cv2.INTER_NEAREST)`` (see :func:`nearest_source_index`), but computed in run
    space: one pass over the column-major runs of the label map, per-cell uncompressed counts,
    then pycocotools compresses them; no full-frame mask is ever built.

    Parameters
    ----------
    labels : (h, w) ndarray of unsigned or non-negative integers (or bool)
        0 = background, k > 0 = cell k; at segmentation scale.
    out_shape : (H, W), optional
        Original image size in pixels; default: the label map's own size (no resizing).

    Returns
    -------
    dict[int, str]
        Cell id -> mask string at (H, W), ids ascending; a cell with no pixel left after
        resizing (possible only when shrinking) is absent.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise MaskCodecError(f"expected a non-empty 2-D (h, w) label map, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MaskCodecError(f"label map must hold integers (cell ids), got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.min() < 0:
        raise MaskCodecError(f"label map holds negative ids (min {labels.min()}); cells are 1..N, background 0")
    h, w = labels.shape
    out_h, out_w = (h, w) if out_shape is None else _check_shape(out_shape)
    rows, row_repeats = _kept_with_repeats(nearest_source_index(h, out_h))
    cols, col_repeats = _kept_with_repeats(nearest_source_index(w, out_w))
    # Only the kept source rows/columns matter (all of them unless shrinking).
    kept = labels if len(rows) == h else labels[rows]
    kept = kept if len(cols) == w else kept[:, cols]
    n_rows, n_cols = kept.shape
    # Vertical run starts, found in C order (a transpose of the frame would cost more than the rest).
    starts_mask = np.ones(kept.shape, dtype=bool)
    np.not_equal(kept[1:], kept[:-1], out=starts_mask[1:])
    flat = np.flatnonzero(starts_mask)
    run_row, run_col = np.divmod(flat, n_cols)
    column_major = np.argsort(run_col * n_rows + run_row, kind="stable")
    run_row, run_col = run_row[column_major], run_col[column_major]
    run_label = kept.ravel()[flat[column_major]]
    same_column_next = np.concatenate((run_col[1:] == run_col[:-1], [False]))
    run_row_end = np.where(same_column_next, np.concatenate((run_row[1:], [0])), n_rows)
    keep = run_label != 0
    run_col, run_row, run_row_end, run_label = run_col[keep], run_row[keep], run_row_end[keep], run_label[keep]
    if run_label.size == 0:
        return {}
    # Source rows/columns -> original pixels: each source index feeds a block of output indices.
    row_offset = np.concatenate(([0], np.cumsum(row_repeats)))
    col_offset = np.concatenate(([0], np.cumsum(col_repeats)))
    y0, y1 = row_offset[run_row], row_offset[run_row_end]
    per_run = col_repeats[run_col]
    which = np.repeat(np.arange(len(run_col)), per_run)
    within = np.arange(len(which)) - np.repeat(np.cumsum(per_run) - per_run, per_run)
    out_col = col_offset[run_col][which] + within
    start = out_col * out_h + y0[which]
    stop = out_col * out_h + y1[which]
    label = run_label[which].astype(np.int64)
    order = np.lexsort((start, label))
    start, stop, label = start[order], stop[order], label[order]
    # Intervals of one cell that touch (across a column boundary) are one run.
    new_run = np.ones(len(start), dtype=bool)
    new_run[1:] = (label[1:] != label[:-1]) | (start[1:] != stop[:-1])
    first = np.flatnonzero(new_run)
    last = np.concatenate((first[1:], [len(start)])) - 1
    start, stop, label = start[first], stop[last], label[first]
    cell_first = np.flatnonzero(np.concatenate(([True], label[1:] != label[:-1])))
    cell_last = np.concatenate((cell_first[1:], [len(label)]))
    total = out_h * out_w
    ids, uncompressed = [], []
    for a, b in zip(cell_first.tolist(), cell_last.tolist()):
        s, e = start[a:b], stop[a:b]
        runs = np.empty(2 * (b - a) + 1, dtype=np.int64)
        runs[0:-1:2] = s - np.concatenate(([0], e[:-1]))
        runs[1::2] = e - s
        runs[-1] = total - e[-1]
        ids.append(int(label[a]))
        uncompressed.append({"size": [out_h, out_w], "counts": runs if runs[-1] else runs[:-1]})
    compressed = coco_mask.frPyObjects(uncompressed, out_h, out_w)
    return {
        cell: base64.b64encode(zlib.compress(rle["counts"], 9)).decode("ascii")
        for cell, rle in zip(ids, compressed)
    }
