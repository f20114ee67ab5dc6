"""Drawing helpers of :mod:`cellcls.show` (text boxes, header strips, label anchors, resizing).

Private: arrays in, arrays out (or drawn in place where the name says so); no file access.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["FONT", "anchors", "display_shape", "interpolation", "paint_marked", "resize_labels", "text_box",
           "text_strip", "to_uint8", "wrap"]

#: cv2.FONT_HERSHEY_SIMPLEX
FONT = 0

Colour = tuple[int, int, int]


def text_box(rgb: np.ndarray, lines: Sequence[tuple[str, Colour]], point: tuple[int, int], font_scale: float, *,
             anchor: str, taken: list[tuple[int, int, int, int]] | None = None) -> tuple[int, int]:
    """Draw ``lines`` on a darkened box (in place) centred on / starting at ``point``; returns the box centre.

    ``taken``: boxes (x0, y0, x1, y1) drawn before; the box moves up or down by whole box heights
    to the nearest place that overlaps none of them (it stays put when none is free within 3
    heights; a grey leader line then joins it to ``point``), and is appended to the list.
    """
    import cv2

    thickness = 1 if font_scale < 0.8 else 2
    sizes = [cv2.getTextSize(text, FONT, font_scale, thickness)[0] for text, _ in lines]
    line_h = max(s[1] for s in sizes) + int(7 * font_scale) + 2
    box_w, box_h = max(s[0] for s in sizes) + 6, line_h * len(lines) + 4
    x0, y0 = (point[0] - box_w // 2, point[1] - box_h // 2) if anchor == "center" else point
    x0, y0 = _inside(rgb, x0, y0, box_w, box_h)
    if taken is not None:
        placed = _free_spot(rgb, x0, y0, box_w, box_h, taken)
        if placed != (x0, y0):  # a leader line from the moved box to its point
            cv2.line(rgb, (placed[0] + box_w // 2, placed[1] + box_h // 2), tuple(point), (200, 200, 200), 1,
                     cv2.LINE_AA)
            cv2.circle(rgb, tuple(point), 2, (200, 200, 200), -1)
        x0, y0 = placed
        taken.append((x0, y0, x0 + box_w, y0 + box_h))
    region = rgb[y0:y0 + box_h, x0:x0 + box_w]
    region[:] = (region * 0.35).astype(np.uint8)
    for i, (text, colour) in enumerate(lines):
        cv2.putText(rgb, text, (x0 + 3, y0 + 2 + line_h * (i + 1) - int(5 * font_scale) - 1), FONT, font_scale,
                    colour, thickness, cv2.LINE_AA)
    return x0 + box_w // 2, y0 + box_h // 2


def _inside(rgb: np.ndarray, x0: int, y0: int, box_w: int, box_h: int) -> tuple[int, int]:
    return (int(min(max(x0, 0), max(rgb.shape[1] - box_w, 0))), int(min(max(y0, 0), max(rgb.shape[0] - box_h, 0))))


def _free_spot(rgb: np.ndarray, x0: int, y0: int, box_w: int, box_h: int,
               taken: Sequence[tuple[int, int, int, int]]) -> tuple[int, int]:
    def overlaps(x: int, y: int) -> bool:
        return any(x < bx1 and bx0 < x + box_w and y < by1 and by0 < y + box_h for bx0, by0, bx1, by1 in taken)

    for step in (0, 1, -1, 2, -2, 3, -3):
        x, y = _inside(rgb, x0, y0 + step * box_h, box_w, box_h)
        if not overlaps(x, y):
            return x, y
    return x0, y0


def wrap(text: str, width: int, font_scale: float) -> list[str]:
    """``text``, a ", "-separated list, cut into lines that fit ``width`` pixels."""
    import cv2

    out, line = [], ""
    for word in text.split(", "):
        trial = f"{line}, {word}" if line else word
        if line and cv2.getTextSize(trial, FONT, font_scale, 1)[0][0] > width - 12:
            out.append(line + ",")
            trial = word
        line = trial
    return out + ([line] if line else [])


def anchors(labels: np.ndarray) -> dict[int, tuple[int, int]]:
    """{cell id: (x, y)}: the cell's pixel nearest to its centroid (a concave cell's centroid may lie outside)."""
    from scipy import ndimage

    found = {}
    for index, box in enumerate(ndimage.find_objects(labels.astype(np.int64, copy=False)), start=1):
        if box is None:
            continue
        ys, xs = np.nonzero(labels[box] == index)
        k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        found[index] = (int(xs[k] + box[1].start), int(ys[k] + box[0].start))
    return found


def paint_marked(rgb: np.ndarray, border: np.ndarray, colour: tuple[int, int, int]) -> None:
    """A 3-px line in ``colour`` inside a black halo, so it shows on any background."""
    import cv2

    mask = border.astype(np.uint8)
    rgb[cv2.dilate(mask, np.ones((5, 5), np.uint8)).astype(bool)] = 0
    rgb[cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool)] = colour


def display_shape(shape: tuple[int, int], size: int) -> tuple[int, int]:
    factor = size / max(shape)
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))


def interpolation(src: tuple[int, ...], dst: tuple[int, int]) -> int:
    import cv2

    return cv2.INTER_AREA if dst[0] < src[0] else cv2.INTER_LINEAR


def resize_labels(labels: np.ndarray, display: tuple[int, int]) -> np.ndarray:
    from .masks import upscale_labels

    labels = np.asarray(labels)
    dtype = np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32
    return upscale_labels(labels.astype(dtype, copy=False), display)


def to_uint8(values: np.ndarray) -> np.ndarray:
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def text_strip(lines: Sequence[tuple[str, Colour]], width: int, font_scale: float) -> np.ndarray:
    """A black (h, width, 3) uint8 strip with one text line per entry of ``lines``."""
    import cv2

    line_h = cv2.getTextSize("Ag", FONT, font_scale, 1)[0][1] + int(9 * font_scale) + 3
    strip = np.zeros((line_h * len(lines) + 8, width, 3), np.uint8)
    for i, (text, colour) in enumerate(lines):
        cv2.putText(strip, text, (6, 4 + line_h * (i + 1) - int(5 * font_scale)), FONT, font_scale, colour,
                    1, cv2.LINE_AA)
    return strip
