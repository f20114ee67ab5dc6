"""Chart drawing for :mod:`cellcls.report`: horizontal grouped bars and line plots, numpy + OpenCV only.

Pure: data in, an (H, W, 3) uint8 RGB array out (white background, dark text, Hershey font at
13 px cap height). Sizes are in output pixels; the charts are made for a page 1280 px wide, shown at
1:1. Missing values (NaN) are marked, never dropped silently: a bar reads "n/a", a line skips the
point.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from ..errors import ParameterError

__all__ = ["PALETTE", "nice_ticks", "tick_text", "bar_chart", "line_chart", "text_width"]

Colour = tuple[int, int, int]

#: Series colours, in order (the ten of matplotlib's "tab10").
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)

_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX
_SCALE, _SMALL, _TITLE = 0.45, 0.38, 0.55
_INK, _SOFT, _GRID, _BAND = (30, 30, 30), (110, 110, 110), (225, 225, 225), (246, 246, 246)


def text_width(text: str, scale: float = _SCALE, thickness: int = 1) -> int:
    """Width in pixels of ``text`` drawn at font ``scale``."""
    import cv2

    return int(cv2.getTextSize(text, _FONT, scale, thickness)[0][0])


def _text(img: np.ndarray, text: str, x: int, y: int, *, scale: float = _SCALE, colour: Colour = _INK,
          align: str = "left", thickness: int = 1) -> None:
    """Draw ``text`` with its baseline at ``y``; ``align`` left/right/center about ``x`` (in place)."""
    import cv2

    w = text_width(text, scale, thickness)
    x0 = x - w if align == "right" else x - w // 2 if align == "center" else x
    cv2.putText(img, text, (int(x0), int(y)), _FONT, scale, colour, thickness, cv2.LINE_AA)


def _vertical_text(img: np.ndarray, text: str, x: int, y_center: int, *, scale: float = _SCALE) -> None:
    """Draw ``text`` reading bottom to top, its left edge at ``x``, centred on ``y_center`` (in place)."""
    w = text_width(text, scale) + 4
    strip = np.full((18, w, 3), 255, np.uint8)
    _text(strip, text, 2, 13, scale=scale)
    turned = np.rot90(strip)  # (w, 18, 3): the text now reads upwards
    y0 = max(0, min(img.shape[0] - turned.shape[0], y_center - turned.shape[0] // 2))
    region = img[y0:y0 + turned.shape[0], x:x + turned.shape[1]]
    np.minimum(region, turned[:region.shape[0], :region.shape[1]], out=region)


def nice_ticks(low: float, high: float, *, count: int = 5) -> np.ndarray:
    """About ``count`` round tick values (steps 1, 2, 2.5 or 5 x 10^k) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ParameterError(f"tick range must be finite, got {low!r}..{high!r}")
    if high <= low:
        high = low + (abs(low) if low else 1.0)
    raw = (high - low) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw - 1e-12)
    first = math.floor(low / step + 1e-9) * step
    n = int(math.ceil((high - first) / step - 1e-9)) + 1
    return np.round(first + step * np.arange(n), 10)


def tick_text(value: float) -> str:
    """An axis label: ``0.25``, ``1234``, ``10k``, ``2.5M`` (no exponent form above 1e-3)."""
    size = abs(value)
    if size >= 1e4:
        divisor, suffix = next((d, s) for d, s in ((1e9, "G"), (1e6, "M"), (1e3, "k")) if size >= d)
        return f"{value / divisor:.4g}{suffix}"
    return f"{value:.4g}" if size >= 1e-3 or value == 0 else f"{value:.1e}"


def _legend(img: np.ndarray, names: Sequence[str], x0: int, y: int, width: int) -> int:
    """Draw colour swatches with names left to right from (x0, y), wrapping at ``width``; returns the next y."""
    import cv2

    x = x0
    for k, name in enumerate(names):
        w = 18 + text_width(name) + 16
        if x + w > x0 + width and x > x0:
            x, y = x0, y + 20
        cv2.rectangle(img, (x, y - 10), (x + 12, y + 1), PALETTE[k % len(PALETTE)], -1)
        _text(img, name, x + 17, y)
        x += w
    return y + 20


def _legend_height(names: Sequence[str], width: int) -> int:
    rows, x = 1, 0
    for name in names:
        w = 18 + text_width(name) + 16
        if x + w > width and x > 0:
            rows, x = rows + 1, 0
        x += w
    return 20 * rows


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str = "",
              value_label: str = "", value_max: float | None = None, width: int = 900, bar_px: int = 12,
              show_values: bool = True) -> np.ndarray:
    """Horizontal grouped bars: one group per category (top to bottom), one bar per series.

    Parameters
    ----------
    categories : names of the K groups, drawn right-aligned left of the bars.
    series : {name: K values}, one colour each (:data:`PALETTE` order); NaN draws "n/a".
    value_max : the value at the right end of the axis (default: the largest value, rounded up to
        a tick; 1.0 suits AP and F1). Values are clipped to [0, value_max] for drawing only.
    width : image width, pixels. bar_px : height of one bar, pixels.

    Returns
    -------
    (H, W, 3) uint8 RGB, W = ``width``, H = header + K x (len(series) x bar_px + 8) + axis.
    """
    import cv2

    names = list(series)
    values = np.array([np.asarray(series[n], dtype=np.float64) for n in names]).reshape(len(names), -1)
    if not names or values.shape[1] != len(categories):
        raise ParameterError(f"bar_chart needs at least one series of {len(categories)} values (one per category), "
                             f"got {[len(np.atleast_1d(series[n])) for n in names]}")
    finite = values[np.isfinite(values)]
    top = value_max if value_max is not None else (nice_ticks(0.0, float(finite.max()))[-1]
                                                   if finite.size and finite.max() > 0 else 1.0)
    ticks = nice_ticks(0.0, top)
    top = float(ticks[-1])
    left = max(text_width(c) for c in categories) + 16 if categories else 16
    right = 52 if show_values else 20
    plot_w = max(60, width - left - right)
    head = (30 if title else 8) + _legend_height(names, width - 16)
    group_h = len(names) * bar_px + 8
    height = head + len(categories) * group_h + 40
    img = np.full((height, width, 3), 255, np.uint8)
    if title:
        _text(img, title, 8, 20, scale=_TITLE, thickness=1)
    _legend(img, names, 8, (30 if title else 8) + 14, width - 16)
    body_top = head + 4
    for i in range(len(categories)):
        if i % 2:
            cv2.rectangle(img, (0, body_top + i * group_h), (width - 1, body_top + (i + 1) * group_h - 1), _BAND, -1)
    for t in ticks:
        x = left + int(round(t / top * plot_w))
        cv2.line(img, (x, body_top), (x, body_top + len(categories) * group_h), _GRID, 1)
        _text(img, tick_text(t), x, body_top + len(categories) * group_h + 16, scale=_SMALL, colour=_SOFT,
              align="center")
    if value_label:
        _text(img, value_label, left + plot_w // 2, height - 6, scale=_SMALL, colour=_SOFT, align="center")
    for i, category in enumerate(categories):
        y0 = body_top + i * group_h + 4
        _text(img, category, left - 8, y0 + (len(names) * bar_px) // 2 + 5, align="right")
        for j in range(len(names)):
            v = values[j, i]
            by = y0 + j * bar_px
            if not np.isfinite(v):
                _text(img, "n/a", left + 4, by + bar_px - 2, scale=_SMALL, colour=_SOFT)
                continue
            x1 = left + int(round(min(max(v, 0.0), top) / top * plot_w))
            cv2.rectangle(img, (left, by + 1), (max(left + 1, x1), by + bar_px - 1), PALETTE[j % len(PALETTE)], -1)
            if show_values:
                _text(img, f"{v:.2f}", x1 + 4, by + bar_px - 2, scale=_SMALL, colour=_INK)
    cv2.line(img, (left, body_top), (left, body_top + len(categories) * group_h), _INK, 1)
    return img


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str = "",
               x_label: str = "", y_label: str = "", width: int = 620, height: int = 340,
               y_range: tuple[float, float] | None = None) -> np.ndarray:
    """Lines on shared axes: ``series`` = {name: (x values, y values)}, one colour each.

    Points with a non-finite x or y are skipped; with at most 40 points a series also gets dots.
    ``y_range`` fixes the y axis (e.g. (0, 1) for scores); by default it spans the data, padded
    to round ticks. Returns an (``height``, ``width``, 3) uint8 RGB array.
    """
    import cv2

    names = list(series)
    clean = {}
    for name in names:
        x, y = (np.asarray(v, dtype=np.float64).ravel() for v in series[name])
        if x.shape != y.shape:
            raise ParameterError(f"line_chart series {name!r}: {x.size} x values but {y.size} y values")
        ok = np.isfinite(x) & np.isfinite(y)
        clean[name] = (x[ok], y[ok])
    xs = np.concatenate([c[0] for c in clean.values()]) if clean else np.zeros(0)
    ys = np.concatenate([c[1] for c in clean.values()]) if clean else np.zeros(0)
    img = np.full((height, width, 3), 255, np.uint8)
    head = (30 if title else 8) + _legend_height(names, width - 16)
    if title:
        _text(img, title, 8, 20, scale=_TITLE)
    _legend(img, names, 8, (30 if title else 8) + 14, width - 16)
    left, right, bottom = 62, 16, 42
    x0, x1, y0, y1 = left, width - right, head + 6, height - bottom
    if x1 - x0 < 40 or y1 - y0 < 40:
        raise ParameterError(f"line_chart of {width}x{height} px leaves no room to plot; make it larger")
    if xs.size == 0:
        _text(img, "no data", (x0 + x1) // 2, (y0 + y1) // 2, colour=_SOFT, align="center")
        return img
    x_ticks = nice_ticks(float(xs.min()), float(xs.max()))
    y_ticks = nice_ticks(*(y_range if y_range is not None else (float(ys.min()), float(ys.max()))))
    if y_range is not None:
        y_ticks = y_ticks[(y_ticks >= y_range[0] - 1e-9) & (y_ticks <= y_range[1] + 1e-9)]
        y_lo, y_hi = y_range
    else:
        y_lo, y_hi = float(y_ticks[0]), float(y_ticks[-1])
    x_lo, x_hi = float(x_ticks[0]), float(x_ticks[-1])

    def px(xv: np.ndarray, yv: np.ndarray) -> np.ndarray:
        u = x0 + (xv - x_lo) / ((x_hi - x_lo) or 1.0) * (x1 - x0)
        v = y1 - (np.clip(yv, y_lo, y_hi) - y_lo) / ((y_hi - y_lo) or 1.0) * (y1 - y0)
        return np.stack([u, v], axis=1).round().astype(np.int32)

    for t in y_ticks:
        v = int(px(np.array([x_lo]), np.array([t]))[0, 1])
        cv2.line(img, (x0, v), (x1, v), _GRID, 1)
        _text(img, tick_text(t), x0 - 6, v + 4, scale=_SMALL, colour=_SOFT, align="right")
    for t in x_ticks:
        u = int(px(np.array([t]), np.array([y_lo]))[0, 0])
        cv2.line(img, (u, y1), (u, y1 + 4), _INK, 1)
        _text(img, tick_text(t), u, y1 + 18, scale=_SMALL, colour=_SOFT, align="center")
    cv2.rectangle(img, (x0, y0), (x1, y1), _INK, 1)
    for k, name in enumerate(names):
        points = px(*clean[name])
        colour = PALETTE[k % len(PALETTE)]
        if len(points) > 1:
            cv2.polylines(img, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        if 0 < len(points) <= 40:
            for p in points:
                cv2.circle(img, (int(p[0]), int(p[1])), 3, colour, -1, cv2.LINE_AA)
    if x_label:
        _text(img, x_label, (x0 + x1) // 2, height - 6, scale=_SMALL, colour=_SOFT, align="center")
    if y_label:
        _vertical_text(img, y_label, 2, (y0 + y1) // 2, scale=_SMALL)
    return img
