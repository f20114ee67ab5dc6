"""Protein signal of each cell, and the Negative it implies: a label-free look at which cells stain.

In an HPA image the protein (green) channel of a cell that does not express the protein holds only
the non-specific haze the whole image has; the annotators call such a cell Negative. Image-level labels
cannot say which cells those are: a model trained on labels broadcast to every cell never sees a
Negative target and learns the image's classes on the dark cells too. The green channel can: a cell
whose protein signal stays near background is probably Negative.

* :func:`cell_protein_signal` - per cell, a high percentile of the green channel over its pixels minus
  the image's background level, in the channel's stored units. A percentile, not the mean: small bright
  patterns (centrosome, nucleoli, nuclear bodies, aggresome) cover a few per cent of a cell, and the
  mean of a cell with two bright dots is close to a dark cell's.
* :func:`cell_darkness` - that signal relative to the image's bright cells (its ``reference_percentile``
  over the image's cells), as ``1 - ratio`` clipped to [0, 1]: 1 = no signal above background, 0 = as
  bright as the image's bright cells. Relative within one image, so exposure and gain, which differ
  between images and between antibodies, cancel.
* :func:`dark_cell_targets` - cell targets with that estimate folded in: every location class scaled by
  ``1 - darkness`` and Negative set to ``darkness``.

All functions take numpy arrays and return numpy arrays; no I/O.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cellcls.classes import CHANNELS, NEGATIVE, NUM_CLASSES

__all__ = [
    "SIGNAL_PERCENTILE",
    "REFERENCE_PERCENTILE",
    "cell_protein_signal",
    "cell_darkness",
    "image_cell_darkness",
    "entry_cell_darkness",
    "dark_cell_targets",
]

#: Percentile of a cell's green pixels taken as its signal: its brightest 1 %.
SIGNAL_PERCENTILE = 99.0
#: Percentile over an image's cells of their signals that counts as "bright" (darkness 0).
REFERENCE_PERCENTILE = 90.0


def cell_protein_signal(green: np.ndarray, cells: np.ndarray, *,
                        percentile: float = SIGNAL_PERCENTILE) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: ``percentile`` of the green values over its pixels minus the background level.

    Parameters
    ----------
    green : (H, W) array of any real dtype
        The protein channel, stored values (uint8 0-255, uint16 0-65535 or floats: the result is in
        the same units).
    cells : (H, W) integer array
        Cell label map at the SAME size as ``green`` (0 = background); upscale a mask-cache map first
        (:func:`cellcls.masks.cache.upscale_labels`).
    percentile : float in [0, 100]

    Returns
    -------
    cell_ids : (n,) int64, the labels present, ascending.
    signal : (n,) float64, the cell's percentile minus the median of the background pixels (the pixels
        of no cell; 0 when every pixel belongs to a cell). May be negative.
    """
    from scipy import ndimage

    green = np.asarray(green)
    cells = np.asarray(cells)
    if green.shape != cells.shape:
        raise ValueError(f"green channel {green.shape} and cell label map {cells.shape} differ in size")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    background = cells == 0
    level = float(np.median(green[background])) if background.any() else 0.0
    cell_ids, signal = [], []
    for index, box in enumerate(ndimage.find_objects(cells), start=1):
        if box is None:
            continue
        values = green[box][cells[box] == index]
        cell_ids.append(index)
        signal.append(float(np.percentile(values, percentile)) - level)
    return np.asarray(cell_ids, dtype=np.int64), np.asarray(signal, dtype=np.float64)


def cell_darkness(signal: np.ndarray, *, reference_percentile: float = REFERENCE_PERCENTILE) -> np.ndarray:
    """``1 - signal / reference`` clipped to [0, 1], the reference being ``reference_percentile`` of
    the signals of one image's cells.

    Parameters
    ----------
    signal : (n,) float, :func:`cell_protein_signal` of ONE image's cells.
    reference_percentile : float in [0, 100]

    Returns
    -------
    (n,) float32 in [0, 1]; all zeros when no cell rises above background (nothing to compare with).
    """
    signal = np.asarray(signal, dtype=np.float64).reshape(-1)
    if not signal.size:
        return np.zeros(0, np.float32)
    reference = float(np.percentile(signal, reference_percentile))
    if reference <= 0.0:
        return np.zeros(signal.shape, np.float32)
    return np.clip(1.0 - signal / reference, 0.0, 1.0).astype(np.float32)


def image_cell_darkness(green: np.ndarray, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cell_darkness` of every cell of one image: (cell_ids int64, darkness float32 in [0, 1])."""
    cell_ids, signal = cell_protein_signal(green, cells)
    return cell_ids, cell_darkness(signal)


def entry_cell_darkness(image: np.ndarray, entry: "Any", cell_ids: Sequence[int]) -> np.ndarray:
    """Darkness of the cells ``cell_ids`` of one mask-cache entry, in that order.

    Parameters
    ----------
    image : (H, W, 4) RGBY array as :func:`cellcls.io.read_image` returns it, at the entry's original size.
    entry : :class:`cellcls.masks.cache.CacheEntry` of the image (label maps at any scale: upscaled here
        by nearest neighbour, as the submission's masks are).
    cell_ids : ids of the entry's cells (e.g. the ``cell_id`` column of its cell table).

    Returns
    -------
    (n,) float32 in [0, 1]
    """
    from cellcls.masks.cache import upscale_labels

    cells = entry.cells
    if cells.shape != image.shape[:2]:
        cells = upscale_labels(cells, image.shape[:2])
    ids, darkness = image_cell_darkness(image[..., CHANNELS.index("green")], cells)
    lookup = dict(zip(ids.tolist(), darkness.tolist()))
    missing = [int(c) for c in cell_ids if int(c) not in lookup]
    if missing:
        raise ValueError(f"cell {missing[0]} is not in the label map ({len(missing)} of {len(cell_ids)} missing)")
    return np.asarray([lookup[int(c)] for c in cell_ids], dtype=np.float32)


def dark_cell_targets(targets: np.ndarray, darkness: np.ndarray) -> np.ndarray:
    """Cell targets with the darkness estimate folded in.

    Rows carrying a location class (any of classes 0-17 above 0): each location class times
    ``1 - darkness``, Negative = ``darkness``. Rows without one (cells of an image labelled Negative)
    are kept: the image label already says every cell is Negative.

    Parameters
    ----------
    targets : (n, 19) float in [0, 1], broadcast image labels or soft cell labels.
    darkness : (n,) float in [0, 1], :func:`cell_darkness` of the same cells.

    Returns
    -------
    (n, 19) float32 in [0, 1]
    """
    targets = np.asarray(targets, dtype=np.float32)
    darkness = np.asarray(darkness, dtype=np.float32).reshape(-1)
    if targets.ndim != 2 or targets.shape[1] != NUM_CLASSES or targets.shape[0] != darkness.size:
        raise ValueError(f"targets must be (n, {NUM_CLASSES}) with n = {darkness.size} darkness values, "
                         f"got {targets.shape}")
    location = np.delete(np.arange(NUM_CLASSES), NEGATIVE)
    out = targets.copy()
    rows = targets[:, location].max(axis=1) > 0.0
    out[np.ix_(rows, location)] *= (1.0 - darkness[rows])[:, None]
    out[rows, NEGATIVE] = darkness[rows]
    return np.clip(out, 0.0, 1.0)
