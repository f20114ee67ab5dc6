"""A contact sheet with one synthetic image per class, so a person can see the patterns."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..classes import CLASSES, NUM_CLASSES
from .sample import make_sample

__all__ = ["preview_sheet", "class_tile"]

_COLS = 5


def _unit(channel: np.ndarray, q: float) -> np.ndarray:
    c = channel.astype(np.float32)
    lo, hi = np.percentile(c, 1.0), np.percentile(c, q)
    return np.clip((c - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def class_tile(class_id: int, *, seed: int = 0, scale: float = 0.25, tile_px: int = 320) -> np.ndarray:
    """One class's image as a (tile_px, tile_px, 3) uint8 BGR tile.

    Green (auto-contrasted) over a faint composite of the markers (red microtubules,
    blue nuclei, yellow ER), the class name written on it.
    """
    rng = np.random.default_rng([int(seed), int(class_id)])
    sample = make_sample(rng, size_px=(tile_px, tile_px), scale=scale, labels=(class_id,), density=38.0)
    img = sample.image
    red, green, blue, yellow = (_unit(img[..., i], 99.5) for i in range(4))
    green = _unit(img[..., 1], 99.9)
    faint = 0.3
    bgr = np.stack(
        [faint * blue, green + faint * 0.5 * yellow, faint * (red + 0.5 * yellow)],
        axis=-1,
    )
    tile = (np.clip(bgr, 0, 1) * 255).astype(np.uint8)
    name = f"{class_id} {CLASSES[class_id].name}"
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    for y, line in enumerate(_wrap(name, 34)):
        org = (6, 18 + 17 * y)
        cv2.putText(tile, line, org, font, size, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, line, org, font, size, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + [cur]


def preview_sheet(path: str | Path, *, seed: int = 0, scale: float = 0.25, tile_px: int = 320) -> Path:
    """Write a PNG contact sheet, one tile per class (0..18), to ``path``; returns the path.

    Each tile is a synthetic image whose protein has that single class; tiles are laid out
    5 per row, a 2-px dark grid between them.
    """
    tiles = [class_tile(c, seed=seed, scale=scale, tile_px=tile_px) for c in range(NUM_CLASSES)]
    rows = -(-len(tiles) // _COLS)
    gap = 2
    sheet = np.full((rows * (tile_px + gap) - gap, _COLS * (tile_px + gap) - gap, 3), 40, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, _COLS)
        y, x = r * (tile_px + gap), c * (tile_px + gap)
        sheet[y : y + tile_px, x : x + tile_px] = tile
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write the preview sheet {path}")
    return path
