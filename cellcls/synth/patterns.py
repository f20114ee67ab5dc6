"""The 19 green (protein) patterns, one function per class id, drawn on one cell's crop.

``PATTERNS[class_id](ctx, rng)`` returns a float32 (h, w) object image (before optics and
noise) of the protein in that cell, peak ~1, zero outside the cell. ``ctx`` is a
:class:`CellContext`: the cell's masks, distance maps and marker channels on its crop.
Lengths are written in full-resolution HPA pixels and converted with ``ctx.px``.

The patterns that a classifier must tell apart are drawn to differ the way the real ones
do: nuclear spots differ in count, size and whether a diffuse nucleoplasm stays
(speckles 4 vs bodies 5 vs nucleoli 2 vs fibrillar centres 3); filaments differ in geometry
(actin 9: straight fibres along the long axis plus a cortex; intermediate filaments 8:
wavy perinuclear cage; microtubules 10: radiate from the centrosome and copy red);
juxtanuclear blobs differ in size and number (centrosome 12, golgi 7, aggresome 15).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import cv2
import numpy as np

from ..classes import NUM_CLASSES
from .draw import blur, gaussian_blob, polylines, spots, walks
from .geometry import smooth_noise

__all__ = ["CellContext", "PatternFn", "PATTERNS", "NUCLEAR_CLASSES", "pattern", "register_pattern", "as_float"]

#: Classes whose protein sits in the nucleus (lost when the nuclear envelope breaks down in mitosis).
NUCLEAR_CLASSES = frozenset({0, 1, 2, 3, 4, 5})


@dataclass
class CellContext:
    """One cell on its crop (all arrays (h, w), crop pixel coordinates at ``scale``).

    Attributes
    ----------
    cell, nucleus, nucleoli : bool masks of this cell, its nucleus and its nucleoli.
    red, yellow : float32 marker objects (microtubules, ER) already drawn for this cell.
    centre, nucleus_centre, mtoc : (y, x) crop coordinates of the outline centre, the nucleus
        centre and the microtubule organising centre (centrosome).
    angle : orientation of the long axis (radians); axes: (long, short) outline radii, px.
    dividing : whether the cell is in mitosis (nucleus = condensed chromosomes).
    scale : pixel size relative to full-resolution HPA.
    """

    cell: np.ndarray
    nucleus: np.ndarray
    nucleoli: np.ndarray
    red: np.ndarray
    yellow: np.ndarray
    centre: tuple[float, float]
    nucleus_centre: tuple[float, float]
    mtoc: tuple[float, float]
    angle: float
    axes: tuple[float, float]
    nucleus_angle: float
    dividing: bool
    scale: float

    def px(self, full_res_px: float) -> float:
        """A length in full-resolution px converted to this crop's px."""
        return full_res_px * self.scale

    @property
    def shape(self) -> tuple[int, int]:
        return self.cell.shape

    @cached_property
    def cyto(self) -> np.ndarray:
        return self.cell & ~self.nucleus

    @cached_property
    def dist_edge(self) -> np.ndarray:
        """Distance (px) inside the cell to its outline; the image border is not an outline."""
        m = cv2.copyMakeBorder(self.cell.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        return cv2.distanceTransform(m, cv2.DIST_L2, 3)[1:-1, 1:-1]

    @cached_property
    def dist_nucleus(self) -> np.ndarray:
        """Distance (px) outside the nucleus to it; 0 on the nucleus."""
        if not self.nucleus.any():
            return np.full(self.shape, 1e3, np.float32)
        return cv2.distanceTransform((~self.nucleus).astype(np.uint8), cv2.DIST_L2, 3)

    @cached_property
    def depth_nucleus(self) -> np.ndarray:
        """Distance (px) inside the nucleus to its edge; 0 outside."""
        m = cv2.copyMakeBorder(self.nucleus.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        return cv2.distanceTransform(m, cv2.DIST_L2, 3)[1:-1, 1:-1]

    @cached_property
    def nucleus_radius(self) -> float:
        return max(1.0, math.sqrt(float(self.nucleus.sum()) / math.pi))

    def texture(self, rng: np.random.Generator, corr_full_px: float) -> np.ndarray:
        """Smooth unit-std noise on the crop, correlation length in full-resolution px."""
        return smooth_noise(rng, self.shape, max(1.0, self.px(corr_full_px)))

    def yx_grid(self) -> tuple[np.ndarray, np.ndarray]:
        return np.mgrid[0 : self.shape[0], 0 : self.shape[1]].astype(np.float32)


PatternFn = Callable[[CellContext, np.random.Generator], np.ndarray]
PATTERNS: dict[int, PatternFn] = {}


def register_pattern(table: dict[int, PatternFn], class_id: int, *,
                     what: str = "pattern") -> Callable[[PatternFn], PatternFn]:
    """Decorator putting a drawing function into ``table`` under ``class_id``; a second one is an error."""

    def wrap(fn: PatternFn) -> PatternFn:
        if class_id in table:
            raise ValueError(f"{what} for class {class_id} registered twice")
        table[class_id] = fn
        return fn

    return wrap


def pattern(class_id: int) -> Callable[[PatternFn], PatternFn]:
    """Register the drawing function of class ``class_id``."""
    return register_pattern(PATTERNS, class_id)


def as_float(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as float32 0/1 (what the drawing functions multiply)."""
    return mask.astype(np.float32)


_f = as_float


def _nucleoplasm(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    tex = ctx.texture(rng, 30)
    return _f(ctx.nucleus) * (0.8 + 0.12 * tex) * (1 - 0.75 * _f(ctx.nucleoli))


@pattern(0)
def nucleoplasm(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Diffuse nuclear fill sparing the nucleoli, slightly grainy."""
    grain = blur(rng.standard_normal(ctx.shape).astype(np.float32), ctx.px(3)) * 0.15
    return np.clip(_nucleoplasm(ctx, rng) + grain * _f(ctx.nucleus), 0, None)


@pattern(1)
def nuclear_membrane(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A thin rim on the nuclear envelope."""
    signed = ctx.depth_nucleus - ctx.dist_nucleus
    w = max(0.6, ctx.px(4))
    ring = np.exp(-0.5 * ((signed - w * 0.5) / w) ** 2) * _f(ctx.cell)
    return ring * (0.85 + 0.15 * ctx.texture(rng, 20)) + 0.06 * _f(ctx.nucleus)


@pattern(2)
def nucleoli(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """The 1-4 nucleoli, filled."""
    body = blur(_f(ctx.nucleoli), ctx.px(2)) * (0.9 + 0.1 * ctx.texture(rng, 10))
    return body + 0.05 * _f(ctx.nucleus)


@pattern(3)
def fibrillar_center(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Several tiny dots clustered inside the nucleoli."""
    n = int(rng.integers(3, 7)) * max(1, int(round(ctx.nucleoli.sum() / max(1.0, (ctx.px(40)) ** 2 * math.pi))))
    dots = spots(rng, ctx.nucleoli, min(n, 24), sigma_px=max(0.45, ctx.px(3)), amplitude=(0.7, 1.0))
    return dots + 0.1 * blur(_f(ctx.nucleoli), ctx.px(2))


@pattern(4)
def nuclear_speckles(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Many (12-30) small irregular speckles over a weak nucleoplasm."""
    where = _f(ctx.nucleus & ~ctx.nucleoli) * (ctx.depth_nucleus > ctx.px(6))
    n = int(rng.integers(12, 31))
    sp = spots(rng, where, n, sigma_px=max(0.55, ctx.px(5)), amplitude=(0.5, 1.0))
    sp += spots(rng, where, n, sigma_px=max(0.45, ctx.px(3)), amplitude=(0.3, 0.6))  # irregular lobes
    return np.minimum(sp, 1.2) + 0.22 * _nucleoplasm(ctx, rng)


@pattern(5)
def nuclear_bodies(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A few (1-6) round, bright nuclear dots with no diffuse fill."""
    where = _f(ctx.nucleus & ~ctx.nucleoli) * (ctx.depth_nucleus > ctx.px(8))
    n = int(rng.integers(1, 7))
    return spots(rng, where, n, sigma_px=max(0.6, ctx.px(6)), amplitude=(0.8, 1.0)) + 0.03 * _f(ctx.nucleus)


@pattern(6)
def endoplasmic_reticulum(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """The reticular ER: follows the yellow marker."""
    return ctx.yellow * (0.85 + 0.15 * ctx.texture(rng, 40))


@pattern(7)
def golgi(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A compact cluster of small blobs in a crescent by the nucleus, on the centrosome side."""
    yy, xx = ctx.yx_grid()
    ny, nx = ctx.nucleus_centre
    theta0 = math.atan2(ctx.mtoc[0] - ny, ctx.mtoc[1] - nx)
    theta = np.arctan2(yy - ny, xx - nx)
    window = np.clip((np.cos(theta - theta0) - 0.55) / 0.45, 0, 1)
    shell = np.exp(-0.5 * ((ctx.dist_nucleus - ctx.px(14)) / max(0.8, ctx.px(10))) ** 2)
    where = window * shell * _f(ctx.cyto)
    n = int(rng.integers(6, 16))
    blobs = spots(rng, where, n, sigma_px=max(0.6, ctx.px(5)), amplitude=(0.5, 1.0))
    return np.minimum(blobs, 1.3)


@pattern(8)
def intermediate_filaments(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A wavy perinuclear cage: curved, wiggling filaments around the nucleus and outwards."""
    ny, nx = ctx.nucleus_centre
    rn = ctx.nucleus_radius
    k = int(rng.integers(12, 22))
    phi = rng.uniform(0, 2 * math.pi, k)
    rad = rn * rng.uniform(1.05, 2.0, k)
    starts = np.stack([ny + rad * np.sin(phi), nx + rad * np.cos(phi)], 1)
    heading = phi + math.pi / 2 * rng.choice([-1, 1], k) + rng.normal(0, 0.35, k)
    step = max(1.0, ctx.px(10))
    n_steps = int(max(6, 1.4 * math.pi * rn / step))
    curves = walks(rng, starts, heading, n_steps=n_steps, step_px=step, turn_sd=0.12, wave=0.35)
    # curvature towards the nucleus: walks that drift outward are bent back by a second family
    k2 = int(rng.integers(4, 9))
    phi2 = rng.uniform(0, 2 * math.pi, k2)
    starts2 = np.stack([ny + rn * 1.1 * np.sin(phi2), nx + rn * 1.1 * np.cos(phi2)], 1)
    curves2 = walks(rng, starts2, phi2 + rng.normal(0, 0.5, k2), n_steps=n_steps, step_px=step, turn_sd=0.15, wave=0.45)
    lines = polylines(ctx.shape, list(curves) + list(curves2))
    fade = 0.35 + 0.65 * np.exp(-ctx.dist_nucleus / max(1.0, 0.6 * rn))
    return blur(lines, ctx.px(1.5)) * fade * _f(ctx.cell) * (1 - 0.5 * _f(ctx.nucleus))


@pattern(9)
def actin_filaments(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Straight stress fibres along the cell's long axis, plus a bright cortical band."""
    cy, cx = ctx.centre
    a, b = ctx.axes
    k = int(rng.integers(6, 15))
    ang = ctx.angle + rng.normal(0, 0.06, k)
    offset = rng.uniform(-0.85, 0.85, k) * b
    along = np.stack([np.cos(ang), np.sin(ang)], 1)  # (dx, dy)
    perp = np.stack([-np.sin(ctx.angle), np.cos(ctx.angle)])
    mid = np.array([cx, cy]) + offset[:, None] * perp[None, :]
    half = 1.2 * a
    curves = np.stack([mid - half * along, mid + half * along], 1)
    fibres = np.zeros(ctx.shape, np.float32)
    for c, amp in zip(curves, rng.uniform(0.5, 1.0, k)):
        fibres = np.maximum(fibres, amp * polylines(ctx.shape, [c]))
    inner = _f(ctx.dist_edge > ctx.px(6))
    cortex = np.exp(-0.5 * (ctx.dist_edge / max(0.7, ctx.px(6))) ** 2) * _f(ctx.cell)
    return blur(fibres, ctx.px(1.5)) * inner + 0.55 * cortex + 0.05 * _f(ctx.cell)


@pattern(10)
def microtubules(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Microtubules: the red marker's filaments."""
    return ctx.red * (0.85 + 0.15 * ctx.texture(rng, 40))


@pattern(11)
def mitotic_spindle(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A bipolar spindle (dividing cells only): fibres fanning from two poles to the metaphase plate."""
    if not ctx.dividing:
        return np.zeros(ctx.shape, np.float32)
    ny, nx = ctx.nucleus_centre
    plate = ctx.nucleus_angle
    axis = plate + math.pi / 2
    half_len = 0.75 * min(ctx.axes)
    plate_half = 0.9 * ctx.nucleus_radius * 1.4
    k = int(rng.integers(10, 18))
    curves = []
    for sign in (-1, 1):
        pole = np.array([nx + sign * half_len * math.cos(axis), ny + sign * half_len * math.sin(axis)])
        t = rng.uniform(-1, 1, k) * plate_half
        ends = np.stack([nx + t * math.cos(plate), ny + t * math.sin(plate)], 1)
        curves += [np.stack([pole, e]) for e in ends]
    lines = blur(polylines(ctx.shape, curves), ctx.px(2))
    poles = sum(
        gaussian_blob(ctx.shape, (ny + s * half_len * math.sin(axis), nx + s * half_len * math.cos(axis)), (max(0.8, ctx.px(8)),) * 2)
        for s in (-1, 1)
    )
    return (lines + 0.8 * poles) * _f(ctx.cell)


@pattern(12)
def centrosome(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """One or two tiny bright dots at the centrosome next to the nucleus."""
    sig = max(0.55, ctx.px(4))
    out = gaussian_blob(ctx.shape, ctx.mtoc, (sig, sig))
    if rng.random() < 0.6:
        d = ctx.px(rng.uniform(8, 16))
        t = rng.uniform(0, 2 * math.pi)
        out = out + rng.uniform(0.6, 1.0) * gaussian_blob(ctx.shape, (ctx.mtoc[0] + d * math.sin(t), ctx.mtoc[1] + d * math.cos(t)), (sig, sig))
    return out * _f(ctx.cell) + 0.03 * _f(ctx.cyto)


@pattern(13)
def plasma_membrane(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A rim on the cell outline (not along the image border)."""
    w = max(0.7, ctx.px(5))
    rim = np.exp(-0.5 * (ctx.dist_edge / w) ** 2) * _f(ctx.cell)
    return rim * (0.75 + 0.25 * ctx.texture(rng, 25)) + 0.05 * _f(ctx.cyto)


@pattern(14)
def mitochondria(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Many short tubules in the cytoplasm, denser around the nucleus."""
    where = _f(ctx.cyto) * (0.3 + np.exp(-ctx.dist_nucleus / max(1.0, 0.8 * ctx.nucleus_radius)))
    area_ratio = float(ctx.cyto.sum()) / max(1.0, ctx.px(100) ** 2)
    k = int(np.clip(rng.uniform(8, 14) * area_ratio, 15, 160))
    w = where.ravel() / where.sum() if where.sum() > 0 else None
    if w is None:
        return np.zeros(ctx.shape, np.float32)
    idx = rng.choice(w.size, size=k, p=w)
    starts = np.stack(np.divmod(idx, ctx.shape[1]), 1).astype(np.float64)
    step = max(0.8, ctx.px(7))
    tubes = walks(rng, starts, rng.uniform(0, 2 * math.pi, k), n_steps=int(rng.integers(3, 6)), step_px=step, turn_sd=0.35)
    lines = polylines(ctx.shape, tubes)
    return blur(lines, ctx.px(2)) * 1.4 * _f(ctx.cell) * (1 - 0.6 * _f(ctx.nucleus))


@pattern(15)
def aggresome(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """One large, very bright juxtanuclear body."""
    ny, nx = ctx.nucleus_centre
    my, mx = ctx.mtoc
    d = math.hypot(my - ny, mx - nx) or 1.0
    push = ctx.px(rng.uniform(4, 12))
    cy, cx = my + (my - ny) / d * push, mx + (mx - nx) / d * push
    r = ctx.px(rng.uniform(14, 24))
    blob = gaussian_blob(ctx.shape, (cy, cx), (max(1.0, r), max(1.0, r * rng.uniform(0.7, 1.0))), rng.uniform(0, math.pi))
    return np.minimum(1.6 * blob, 1.0) * _f(ctx.cell) + 0.08 * _f(ctx.cyto)


@pattern(16)
def cytosol(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Diffuse cytoplasm, thinning towards the cell edge, weak over the nucleus."""
    thick = 0.55 + 0.45 * np.clip(ctx.dist_edge / max(1.0, ctx.px(40)), 0, 1)
    body = _f(ctx.cyto) * thick * (0.85 + 0.15 * ctx.texture(rng, 40))
    return body + 0.12 * _f(ctx.nucleus)


@pattern(17)
def vesicles(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Many small round puncta scattered through the cytoplasm."""
    area_ratio = float(ctx.cyto.sum()) / max(1.0, ctx.px(100) ** 2)
    n = int(np.clip(rng.uniform(6, 14) * area_ratio, 15, 140))
    pts = spots(rng, _f(ctx.cyto), n, sigma_px=max(0.5, ctx.px(3.5)), amplitude=(0.4, 1.0))
    return np.minimum(pts, 1.2) + 0.04 * _f(ctx.cyto)


@pattern(18)
def negative(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """No specific signal: the protein is not detected (the image keeps its faint background)."""
    return np.zeros(ctx.shape, np.float32)


assert sorted(PATTERNS) == list(range(NUM_CLASSES)), "every class needs a pattern"
