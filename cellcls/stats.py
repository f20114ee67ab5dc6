"""Per-channel mean and standard deviation over image folders, for input normalisation.

Values are in ``[0, 1]`` units (uint8 / 255, uint16 / 65535, as :func:`cellcls.io.to_float01`),
pooled over every pixel of every image (population std, ``ddof=0``). The pass streams: one
image in memory per worker. Each image's sum and sum of squares are computed exactly in
integers (from a histogram of its stored values, ``cv2.calcHist``); images are then merged with Chan et al.'s
pairwise update in float64, so 100k images lose no precision to cancellation.

With ``size`` the images are first area-resized (as the model would see them): the mean is
unchanged up to rounding, the std is that of the resized images (slightly lower).

The statistics file is JSON::

    {"channels": ["red", "green", "blue", "yellow"], "mean": [4 floats], "std": [4 floats],
     "n_images": 123, "n_pixels": 456, "size": null or [h, w]}

``n_pixels`` counts pixels per channel.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .classes import CHANNELS
from .errors import CellclsError, MissingChannelError, ParameterError
from .io import _bounded_map, list_image_ids, read_image, read_image_resized

__all__ = ["channel_stats", "image_moments", "write_stats", "read_stats", "STATS_KEYS"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
STATS_KEYS = ("channels", "mean", "std", "n_images", "n_pixels", "size")


def image_moments(image: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Pixel count, per-channel mean and per-channel sum of squared deviations of one image.

    Parameters
    ----------
    image : (H, W, C) ndarray of uint8 or uint16

    Returns
    -------
    n : int
        H * W.
    mean : (C,) float64
        In ``[0, 1]`` units.
    m2 : (C,) float64
        ``sum((x - mean)**2)`` over the pixels, in ``[0, 1]`` units squared.
    """
    if image.ndim != 3 or image.dtype not in (np.uint8, np.uint16):
        raise ParameterError(f"expected an (H, W, C) uint8/uint16 image, got {image.dtype} {image.shape}")
    full = 255 if image.dtype == np.uint8 else 65535
    n = image.shape[0] * image.shape[1]
    if n * full * full >= 2**63:
        raise ParameterError(f"image of {n} pixels is too large for exact integer moments")
    values = np.arange(full + 1, dtype=np.int64)
    mean = np.empty(image.shape[2])
    m2 = np.empty(image.shape[2])
    for c in range(image.shape[2]):
        hist = _histogram(image, c, full + 1)
        # int64 is exact while n * full**2 < 2**63, i.e. below 2e9 pixels per image
        total = int(hist @ values)
        total_sq = int(hist @ (values * values))
        mean[c] = total / n / full
        m2[c] = (n * total_sq - total * total) / n / (full * full)  # Python ints: exact, >= 0
    return n, mean, m2


def _histogram(image: np.ndarray, channel: int, levels: int) -> np.ndarray:
    """(levels,) int64 counts of each stored value of one channel of an (H, W, C) image."""
    n = image.shape[0] * image.shape[1]
    if n < 2**24:
        import cv2

        # cv2.calcHist reads the interleaved channel in place (np.bincount would copy it to
        # int64 first: ~5x slower on 2048^2 uint8). Its float32 counts are exact below 2**24.
        hist = cv2.calcHist([np.ascontiguousarray(image)], [channel], None, [levels], [0, levels])
        return hist.ravel().astype(np.int64)
    return np.bincount(image[..., channel].ravel(), minlength=levels).astype(np.int64)


class _Accumulator:
    """Chan et al.'s parallel merge of (n, mean, M2) per channel, float64."""

    def __init__(self, n_channels: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_channels)
        self.m2 = np.zeros(n_channels)

    def add(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.n * n / total)
        self.n = total


def _resolve_ids(dirs: list[Path], ids: Sequence[str] | None, channels: Sequence[str]) -> list[tuple[Path, str]]:
    listings = [(d, list_image_ids(d, channels=channels)) for d in dirs]
    if ids is None:
        return [(d, i) for d, found in listings for i in found]
    where: dict[str, Path] = {}
    for d, found in reversed(listings):  # the first folder wins
        where.update((i, d) for i in found)
    missing = [i for i in ids if i not in where]
    if missing:
        raise MissingChannelError(
            f"{len(missing)} requested image IDs have no complete set of channel files in "
            f"{', '.join(map(str, dirs))}, e.g. {missing[:5]}"
        )
    return [(where[i], i) for i in ids]


def channel_stats(
    images_dirs: PathLike | Sequence[PathLike],
    *,
    size: int | tuple[int, int] | None = None,
    ids: Sequence[str] | None = None,
    channels: Sequence[str] = CHANNELS,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Per-channel mean and std over every pixel of the images in ``images_dirs``.

    Parameters
    ----------
    images_dirs : path or sequence of paths
    size : int or (h, w), optional
        Area-resize each image to this size in pixels first (an int means square); every
        side must be a positive integer (ParameterError otherwise).
    ids : sequence of str, optional
        Only these IDs (each looked up in the folders in order; the first holding all
        channels wins). Default: every complete sample of every folder.
    workers : int
        Images decoded concurrently (each also decodes its channels in parallel).
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    dict
        Keys :data:`STATS_KEYS`; see the module docstring.
    """
    from tqdm.auto import tqdm

    dirs = [Path(images_dirs)] if isinstance(images_dirs, (str, os.PathLike)) else [Path(d) for d in images_dirs]
    if not dirs:
        raise CellclsError("channel_stats needs at least one image folder")
    target = _target_size(size)
    samples = _resolve_ids(dirs, ids, channels)
    if not samples:
        raise CellclsError(f"no complete samples (all of {', '.join(channels)}) in {', '.join(map(str, dirs))}")

    def moments(sample: tuple[Path, str]) -> tuple[int, np.ndarray, np.ndarray]:
        folder, image_id = sample
        if target is None:
            image = read_image(folder, image_id, channels=channels)
        else:
            image, _ = read_image_resized(folder, image_id, size=target, channels=channels)
        return image_moments(image)

    acc = _Accumulator(len(channels))
    bar = tqdm(total=len(samples), desc="channel stats", unit="img", disable=not progress)
    try:
        for n, mean, m2 in _bounded_map(moments, samples, workers=workers):
            acc.add(n, mean, m2)
            bar.update()
    finally:
        bar.close()
    std = np.sqrt(np.maximum(acc.m2 / acc.n, 0.0))
    return {
        "channels": list(channels),
        "mean": [float(v) for v in acc.mean],
        "std": [float(v) for v in std],
        "n_images": len(samples),
        "n_pixels": int(acc.n),
        "size": None if target is None else list(target),
    }


def _target_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``size`` as (h, w) pixels, or None; raises ParameterError unless every side is a positive integer."""
    if size is None:
        return None
    sides = (size, size) if np.isscalar(size) else tuple(size)
    if len(sides) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in sides):
        raise ParameterError(f"size must be a positive number of pixels or (h, w) of them, got {size!r}")
    return int(sides[0]), int(sides[1])


def write_stats(stats: dict, path: PathLike) -> None:
    """Write ``stats`` (as returned by :func:`channel_stats`) as JSON."""
    _validate(stats, str(path))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({k: stats[k] for k in STATS_KEYS}, indent=2) + "\n")


def read_stats(path: PathLike) -> dict:
    """Read and validate a statistics file written by :func:`write_stats`.

    Raises
    ------
    CellclsError
        Missing file, not JSON, missing keys, or values of the wrong length/range;
        the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CellclsError(f"statistics file {str(path)!r} does not exist; make it with 'cellcls stats'")
    try:
        stats = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CellclsError(f"statistics file {path} is not valid JSON: {exc}") from exc
    _validate(stats, str(path))
    return stats


def _validate(stats: object, name: str) -> None:
    def bad(why: str) -> CellclsError:
        return CellclsError(f"statistics file {name}: {why}; expected the output of 'cellcls stats'")

    if not isinstance(stats, dict):
        raise bad("top level is not an object")
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise bad(f"missing key(s) {', '.join(missing)}")
    channels = stats["channels"]
    if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
        raise bad("'channels' must be a non-empty list of names")
    for key in ("mean", "std"):
        values = stats[key]
        if not isinstance(values, list) or len(values) != len(channels):
            raise bad(f"'{key}' must list {len(channels)} numbers, one per channel")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 1 for v in values):
            raise bad(f"'{key}' values must be finite numbers in [0, 1], got {values}")
    if not all(v > 0 for v in stats["std"]):
        raise bad(f"'std' must be > 0 (a constant channel cannot be normalised), got {stats['std']}")
    for key in ("n_images", "n_pixels"):
        if not isinstance(stats[key], int) or stats[key] < 1:
            raise bad(f"'{key}' must be a positive integer")
    size = stats["size"]
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise bad("'size' must be null or [h, w]")
