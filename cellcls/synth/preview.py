"""A contact sheet with one synthetic image per class, so a person can see the patterns."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..classes import CLASSES, NEGATIVE, NUM_CLASSES
from .sample import SynthSample, make_sample
from .variants import WorldVariant

__all__ = ["preview_sheet", "class_tile", "green_display_range", "DEFAULT_GREEN_RANGE"]

_COLS = 5
#: Green display range of a lone tile, fractions of full scale above the background level
#: (typical stainings peak at ~0.1-0.5).
DEFAULT_GREEN_RANGE = (0.0, 0.3)


def _unit(channel: np.ndarray, q: float) -> np.ndarray:
    c = channel.astype(np.float32)
    lo, hi = np.percentile(c, 1.0), np.percentile(c, q)
    return np.clip((c - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _full_scale(image: np.ndarray) -> float:
    return 255.0 if image.dtype == np.uint8 else float(np.iinfo(image.dtype).max)


def _class_sample(class_id: int, *, seed: int, scale: float, tile_px: int, variant: WorldVariant | None = None) -> SynthSample:
    rng = np.random.default_rng([int(seed), int(class_id)])
    return make_sample(rng, size_px=(tile_px, tile_px), scale=scale, labels=(class_id,), density=38.0, variant=variant)


def _render_tile(sample: SynthSample, class_id: int, green_range: tuple[float, float]) -> np.ndarray:
    img = sample.image
    red, _, blue, yellow = (_unit(img[..., i], 99.5) for i in range(4))
    # black level: this image's background (camera offset differs per image), then the shared range
    g = img[..., 1].astype(np.float32) / _full_scale(img) - _black_level(sample)
    lo, hi = green_range
    green = np.clip((g - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
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


def _black_level(sample: SynthSample) -> float:
    """Median green of the background (no cell), fraction of full scale."""
    background = sample.image[..., 1][sample.cells == 0]
    return float(np.median(background)) / _full_scale(sample.image) if background.size else 0.0


def green_display_range(samples: list[SynthSample]) -> tuple[float, float]:
    """One green display range (fractions of full scale above each image's black level).

    Low end 0 (the background); high end: the median over the samples of their brightest cell
    pixels (99.9th percentile inside cells), so typical stainings fill the range, bright ones
    saturate and a Negative tile stays as dark as its faint haze really is.
    """
    highs = []
    for s in samples:
        inside = s.image[..., 1][s.cells > 0]
        if inside.size:
            highs.append(float(np.percentile(inside, 99.9)) / _full_scale(s.image) - _black_level(s))
    high = float(np.median(highs)) if highs else DEFAULT_GREEN_RANGE[1]
    return 0.0, max(high, 1e-3)


def class_tile(
    class_id: int,
    *,
    seed: int = 0,
    scale: float = 0.25,
    tile_px: int = 320,
    green_range: tuple[float, float] = DEFAULT_GREEN_RANGE,
) -> np.ndarray:
    """One class's image as a (tile_px, tile_px, 3) uint8 BGR tile.

    Green over a faint composite of the markers (red microtubules, blue nuclei, yellow ER),
    the class name written on it. Green is shown on the FIXED range ``green_range`` (fractions
    of the full-scale value above the image's background level, not stretched per tile), so a
    Negative tile shows no specific signal and tiles compare; the markers are auto-contrasted.
    """
    sample = _class_sample(class_id, seed=seed, scale=scale, tile_px=tile_px)
    return _render_tile(sample, class_id, green_range)


def _wrap(text: str, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return lines + [cur]


def preview_sheet(
    path: str | Path, *, seed: int = 0, scale: float = 0.25, tile_px: int = 320, variant: WorldVariant | None = None
) -> Path:
    """Write a PNG contact sheet, one tile per class (0..18), to ``path``; returns the path.

    Each tile is a synthetic image whose protein has that single class; tiles are laid out
    5 per row, a 2-px dark grid between them. All tiles share one green display range
    (:func:`green_display_range` of the positive tiles), so brightness compares across tiles
    and the Negative tile is as dark as it is. ``variant`` draws the tiles' cells and green
    patterns differently (:func:`cellcls.synth.variants.resolve_variant`); None = the default.
    """
    samples = [_class_sample(c, seed=seed, scale=scale, tile_px=tile_px, variant=variant) for c in range(NUM_CLASSES)]
    green_range = green_display_range([s for c, s in enumerate(samples) if c != NEGATIVE])
    tiles = [_render_tile(s, c, green_range) for c, s in enumerate(samples)]
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
