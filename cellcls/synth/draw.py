"""Drawing primitives on float32 crops: blur, point spots, polylines, persistent random walks.

Every function returns a new (h, w) float32 array; coordinates are pixels of the crop,
points are (y, x) and polylines are (n, 2) arrays of (x, y) as OpenCV draws them.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["blur", "spots", "polylines", "walks", "gaussian_blob"]

_SUBPIXEL_BITS = 4  # polylines are drawn at 1/16 px precision


def blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a float32 (h, w) image; sigma below 0.1 px returns a copy."""
    img = np.asarray(img, np.float32)
    if sigma_px < 0.1:
        return img.copy()
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma_px), sigmaY=float(sigma_px), borderType=cv2.BORDER_REFLECT)


def spots(
    rng: np.random.Generator,
    weight: np.ndarray,
    n: int,
    *,
    sigma_px: float,
    amplitude: tuple[float, float] = (0.6, 1.0),
) -> np.ndarray:
    """``n`` Gaussian spots placed at pixels drawn with probability proportional to ``weight``.

    Each spot's peak is roughly its amplitude (drawn uniformly from ``amplitude``); spots
    may overlap. An all-zero weight gives an all-zero image.
    """
    w = np.asarray(weight, np.float64).ravel()
    out = np.zeros(np.shape(weight), np.float32)
    total = w.sum()
    if n <= 0 or total <= 0:
        return out
    idx = rng.choice(w.size, size=int(n), p=w / total)
    amp = rng.uniform(*amplitude, size=int(n)).astype(np.float32)
    np.add.at(out.ravel(), idx, amp)
    if sigma_px >= 0.1:
        out = blur(out, sigma_px) * np.float32(2 * math.pi * max(sigma_px, 0.5) ** 2)
    return out


def polylines(shape: tuple[int, int], curves: np.ndarray | list[np.ndarray], *, thickness: int = 1) -> np.ndarray:
    """Anti-aliased open polylines, value 1 on the line, as (h, w) float32 in [0, 1].

    ``curves``: an array (k, n, 2) or a list of (n, 2) arrays of (x, y) crop coordinates.
    """
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(np.asarray(c, np.float64) * (1 << _SUBPIXEL_BITS)).astype(np.int32) for c in curves]
    if pts:
        cv2.polylines(canvas, pts, False, 255, thickness=max(1, int(thickness)), lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    return canvas.astype(np.float32) * np.float32(1.0 / 255.0)


def walks(
    rng: np.random.Generator,
    starts_yx: np.ndarray,
    headings: np.ndarray,
    *,
    n_steps: int,
    step_px: float,
    turn_sd: float,
    wave: float = 0.0,
) -> np.ndarray:
    """Persistent random walks (filaments) as (k, n_steps + 1, 2) arrays of (x, y).

    The heading changes by a normal step of ``turn_sd`` radians per step; ``wave`` adds a
    sinusoidal wiggle of that amplitude (radians) for wavy filaments.
    """
    starts_yx = np.asarray(starts_yx, np.float64).reshape(-1, 2)
    k = starts_yx.shape[0]
    turns = rng.normal(0.0, turn_sd, size=(k, n_steps))
    if wave:
        phase = rng.uniform(0, 2 * math.pi, size=(k, 1))
        freq = rng.uniform(0.5, 1.2, size=(k, 1))
        turns += wave * np.cos(freq * np.arange(n_steps)[None, :] + phase) * freq
    ang = np.asarray(headings, np.float64).reshape(k, 1) + np.cumsum(turns, axis=1)
    steps = np.stack([np.cos(ang), np.sin(ang)], axis=2) * step_px  # (k, n, 2) as (dx, dy)
    path = np.concatenate([np.zeros((k, 1, 2)), np.cumsum(steps, axis=1)], axis=1)
    return path + starts_yx[:, None, ::-1]


def gaussian_blob(shape: tuple[int, int], centre_yx: tuple[float, float], sigma_px: tuple[float, float], angle: float = 0.0) -> np.ndarray:
    """An elliptical Gaussian of peak 1 centred at ``centre_yx``, (h, w) float32."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dy, dx = yy - centre_yx[0], xx - centre_yx[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / max(sigma_px[0], 1e-3)
    v = (-dx * s + dy * c) / max(sigma_px[1], 1e-3)
    return np.exp(-0.5 * (u * u + v * v)).astype(np.float32)
