"""A second, independently written set of green patterns: the ``alt`` renderer.

``ALT_PATTERNS[class_id](ctx, rng)`` has the contract of
:data:`cellcls.synth.patterns.PATTERNS` (float32 (h, w) on the cell's crop, peak ~1, zero
outside the cell, lengths in full-resolution px through ``ctx.px``) and puts each class in the
same compartment, but with other looks, so that a model tuned on the default textures meets
new ones:

* nuclear spots: fewer, larger speckles over more nucleoplasm (4); more, smaller bodies (5);
  ring-shaped nucleoli with a dim core (2); fewer, bigger fibrillar centres (3); a mottled,
  centre-weighted nucleoplasm (0);
* rims: a wider, beaded nuclear rim peaking just inside the envelope (1); a broad, patchy
  plasma-membrane band peaking a little inside the outline (13);
* filaments: long, smooth, thicker radial intermediate filaments (8); two crossing families of
  thicker, shorter stress fibres (9); fine curly microtubules of their own instead of a copy of
  the red channel (10); a barrel spindle with large poles (11);
* textures at other correlation lengths: a finer reticulum for the ER, drawn independently of
  the yellow marker (6); long thin mitochondrial tubules with fragments (14); a flat, coarsely
  mottled cytosol (16); fewer, larger vesicles biased to the periphery (17);
* juxtanuclear bodies: a curved golgi ribbon (7); one larger centrosome dot with a halo (12);
  an aggresome of a few merged blobs (15).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from ..classes import NUM_CLASSES
from .draw import blur, gaussian_blob, polylines, spots, walks
from .patterns import CellContext, PatternFn, as_float, register_pattern

__all__ = ["ALT_PATTERNS"]

ALT_PATTERNS: dict[int, PatternFn] = {}


def _alt(class_id: int) -> Callable[[PatternFn], PatternFn]:
    return register_pattern(ALT_PATTERNS, class_id, what="alt pattern")


_f = as_float


def _fill(ctx: CellContext, rng: np.random.Generator, corr_full_px: float, amount: float) -> np.ndarray:
    """Mottled nuclear fill, brighter towards the nucleus centre, nucleoli half spared."""
    centre = np.clip(ctx.depth_nucleus / max(1.0, 0.5 * ctx.nucleus_radius), 0, 1)
    tex = ctx.texture(rng, corr_full_px)
    return _f(ctx.nucleus) * (0.65 + 0.35 * centre) * np.clip(1 + amount * tex, 0, None) * (1 - 0.5 * _f(ctx.nucleoli))


@_alt(0)
def nucleoplasm(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Centre-weighted nuclear fill with coarse mottling (12 full-res px)."""
    return _fill(ctx, rng, 12, 0.3)


@_alt(1)
def nuclear_membrane(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A wide rim peaking inside the envelope (6 full-res px deep), strongly beaded along it."""
    w = max(0.9, ctx.px(7))
    ring = np.exp(-0.5 * ((ctx.depth_nucleus - ctx.px(6)) / w) ** 2) * _f(ctx.nucleus)
    ring += 0.3 * np.exp(-0.5 * (ctx.dist_nucleus / max(0.6, ctx.px(2))) ** 2) * _f(ctx.cyto)
    band = _f(ring > 0.35)
    n = int(np.clip(ctx.nucleus_radius * 2 * math.pi / max(1.0, ctx.px(18)), 6, 40))
    beads = spots(rng, band, n, sigma_px=max(0.6, ctx.px(4)), amplitude=(0.5, 1.0))
    return ring * (0.3 + 0.7 * np.minimum(beads, 1.0)) * _f(ctx.cell)


@_alt(2)
def nucleoli(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Soft, swollen nucleoli of uneven brightness, each with a brighter shell."""
    lab, n = ndi.label(ctx.nucleoli)
    level = np.concatenate([[0.0], rng.uniform(0.45, 1.0, n)]).astype(np.float32)
    body = level[lab]
    soft = blur(body, ctx.px(5))
    shell = np.clip(blur(body, ctx.px(1)) - 0.8 * blur(body, ctx.px(3)), 0, None)
    out = soft / max(float(soft.max()), 1e-6) + 1.5 * shell
    return out * _f(ctx.nucleus) + 0.08 * _f(ctx.nucleus)


@_alt(3)
def fibrillar_center(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Two to five larger dots per nucleolar area, no nucleolar haze."""
    units = max(1, int(round(ctx.nucleoli.sum() / max(1.0, ctx.px(40) ** 2 * math.pi))))
    n = int(rng.integers(2, 6)) * units
    return spots(rng, _f(ctx.nucleoli), min(n, 16), sigma_px=max(0.6, ctx.px(4.5)), amplitude=(0.75, 1.0))


@_alt(4)
def nuclear_speckles(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Fewer (6-14), larger speckles over a clear nucleoplasm."""
    where = _f(ctx.nucleus & ~ctx.nucleoli) * (ctx.depth_nucleus > ctx.px(8))
    n = int(rng.integers(6, 15))
    sp = spots(rng, where, n, sigma_px=max(0.7, ctx.px(7.5)), amplitude=(0.6, 1.0))
    return np.minimum(sp, 1.1) + 0.35 * _fill(ctx, rng, 20, 0.15)


@_alt(5)
def nuclear_bodies(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """More (3-10), smaller nuclear dots over a faint haze."""
    where = _f(ctx.nucleus & ~ctx.nucleoli) * (ctx.depth_nucleus > ctx.px(5))
    n = int(rng.integers(3, 11))
    return spots(rng, where, n, sigma_px=max(0.5, ctx.px(4)), amplitude=(0.7, 1.0)) + 0.07 * _f(ctx.nucleus)


def _reticulum(ctx: CellContext, rng: np.random.Generator, sigma_full_px: float, width: float) -> np.ndarray:
    """A reticular network on the crop: near-zero set of band-pass noise, in [0, 1]."""
    white = rng.standard_normal(ctx.shape).astype(np.float32)
    s = max(0.7, ctx.px(sigma_full_px))
    band = blur(white, s) - blur(white, 1.8 * s)
    sd = float(band.std()) or 1.0
    return np.exp(-((band / (width * sd)) ** 2)).astype(np.float32)


@_alt(6)
def endoplasmic_reticulum(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A finer reticulum of its own (5 full-res px), dense by the nucleus, with the envelope."""
    net = _reticulum(ctx, rng, 5, 0.4)
    near = np.exp(-ctx.dist_nucleus / max(1.0, 0.35 * min(ctx.axes)))
    envelope = np.exp(-0.5 * (ctx.dist_nucleus / max(0.6, ctx.px(3))) ** 2)
    return (net * (0.25 + 0.75 * near) + 0.08) * _f(ctx.cyto) + 0.7 * envelope * _f(ctx.cyto)


@_alt(7)
def golgi(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A curved ribbon hugging the nucleus on the centrosome side, with a few beads."""
    ny, nx = ctx.nucleus_centre
    theta0 = math.atan2(ctx.mtoc[0] - ny, ctx.mtoc[1] - nx)
    span = rng.uniform(0.5, 1.1)
    r = ctx.nucleus_radius + ctx.px(rng.uniform(6, 14))
    t = np.linspace(theta0 - span, theta0 + span, 24)
    wob = 1 + 0.08 * np.sin(3 * t + rng.uniform(0, 2 * math.pi))
    arc = np.stack([nx + r * wob * np.cos(t), ny + r * wob * np.sin(t)], 1)
    ribbon = blur(polylines(ctx.shape, [arc], thickness=max(1, int(round(ctx.px(6))))), ctx.px(2.5))
    beads = spots(rng, ribbon, int(rng.integers(2, 6)), sigma_px=max(0.6, ctx.px(4)), amplitude=(0.4, 0.8))
    return np.minimum(ribbon + beads, 1.3) * _f(ctx.cyto)


@_alt(8)
def intermediate_filaments(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Long, smooth, thick filaments running from the nucleus out towards the edge."""
    ny, nx = ctx.nucleus_centre
    rn = ctx.nucleus_radius
    k = int(rng.integers(8, 15))
    phi = rng.uniform(0, 2 * math.pi, k)
    starts = np.stack([ny + 0.9 * rn * np.sin(phi), nx + 0.9 * rn * np.cos(phi)], 1)
    heading = phi + rng.normal(0, 0.6, k)
    step = max(1.0, ctx.px(12))
    n_steps = int(max(5, 1.6 * max(ctx.axes) / step))
    curves = walks(rng, starts, heading, n_steps=n_steps, step_px=step, turn_sd=0.07, wave=0.15)
    lines = polylines(ctx.shape, list(curves), thickness=max(1, int(round(ctx.px(3)))))
    fade = 0.5 + 0.5 * np.exp(-ctx.dist_nucleus / max(1.0, rn))
    return blur(lines, ctx.px(2.5)) * fade * _f(ctx.cyto)


@_alt(9)
def actin_filaments(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Two crossing families of short, thick stress fibres, plus a thin cortex."""
    cy, cx = ctx.centre
    a, b = ctx.axes
    fibres = np.zeros(ctx.shape, np.float32)
    tilt = rng.uniform(0.25, 0.5)
    for sign in (-1, 1):
        k = int(rng.integers(3, 8))
        ang = ctx.angle + sign * tilt + rng.normal(0, 0.12, k)
        offset = rng.uniform(-0.8, 0.8, k) * b
        shift = rng.uniform(-0.3, 0.3, k) * a
        half = rng.uniform(0.5, 0.9, k) * a
        along = np.stack([np.cos(ang), np.sin(ang)], 1)
        perp = np.stack([-np.sin(ang), np.cos(ang)], 1)
        mid = np.array([cx, cy])[None, :] + offset[:, None] * perp + shift[:, None] * along
        for m, d, hl, amp in zip(mid, along, half, rng.uniform(0.6, 1.0, k)):
            seg = np.stack([m - hl * d, m + hl * d])[None]
            fibres = np.maximum(fibres, amp * polylines(ctx.shape, seg, thickness=max(1, int(round(ctx.px(3))))))
    cortex = np.exp(-0.5 * (ctx.dist_edge / max(0.6, ctx.px(3))) ** 2)
    return (blur(fibres, ctx.px(2)) * _f(ctx.dist_edge > ctx.px(4)) + 0.4 * cortex + 0.04) * _f(ctx.cell)


@_alt(10)
def microtubules(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Fine, curly microtubules of their own from the centrosome, a bright aster at the hub."""
    cell = _f(ctx.cell)
    k = int(np.clip(90 * math.sqrt(cell.sum() / max(1.0, ctx.px(190) ** 2)), 40, 200))
    step = max(0.8, ctx.px(8))
    starts = np.asarray(ctx.mtoc)[None, :] + rng.normal(0, max(0.5, ctx.px(4)), (k, 2))
    n_steps = int(math.ceil(2.0 * max(ctx.axes) / step))
    curves = walks(rng, starts, rng.uniform(0, 2 * math.pi, k), n_steps=n_steps, step_px=step, turn_sd=0.28)
    lines = blur(polylines(ctx.shape, curves), ctx.px(0.8))
    hub = gaussian_blob(ctx.shape, ctx.mtoc, (max(1.0, ctx.px(12)),) * 2)
    return (0.8 * np.minimum(lines, 1.2) + 0.5 * hub + 0.08) * cell * (1 - 0.7 * _f(ctx.nucleus))


@_alt(11)
def mitotic_spindle(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A barrel spindle (dividing cells only): bowed fibres between two large poles."""
    if not ctx.dividing:
        return np.zeros(ctx.shape, np.float32)
    ny, nx = ctx.nucleus_centre
    axis = ctx.nucleus_angle + math.pi / 2
    half_len = 0.6 * min(ctx.axes)
    ux, uy = math.cos(axis), math.sin(axis)
    t = np.linspace(-1, 1, 13)[:, None]
    curves = []
    for bow in rng.uniform(-1, 1, int(rng.integers(6, 12))) * ctx.nucleus_radius * 1.3:
        along = t * half_len
        across = bow * (1 - t**2)
        curves.append(np.concatenate([nx + along * ux - across * uy, ny + along * uy + across * ux], 1))
    lines = blur(polylines(ctx.shape, curves), ctx.px(2.5))
    sig = (max(1.0, ctx.px(12)),) * 2
    poles = sum(gaussian_blob(ctx.shape, (ny + s * half_len * uy, nx + s * half_len * ux), sig) for s in (-1, 1))
    return (0.8 * lines + poles) * _f(ctx.cell)


@_alt(12)
def centrosome(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """One larger dot at the centrosome inside a faint pericentriolar halo."""
    dot = gaussian_blob(ctx.shape, ctx.mtoc, (max(0.8, ctx.px(7)),) * 2)
    halo = gaussian_blob(ctx.shape, ctx.mtoc, (max(1.5, ctx.px(rng.uniform(16, 24))),) * 2)
    return (dot + 0.3 * halo) * _f(ctx.cell)


@_alt(13)
def plasma_membrane(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A broad band peaking inside the outline (5 full-res px), patchy along it."""
    w = max(1.0, ctx.px(8))
    band = np.exp(-0.5 * ((ctx.dist_edge - ctx.px(5)) / w) ** 2) * _f(ctx.cyto)
    patches = np.clip(1 + 0.8 * ctx.texture(rng, 10), 0.15, None)
    return band * patches


@_alt(14)
def mitochondria(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Long thin tubules spread over the cytoplasm, plus fragments (dots)."""
    where = _f(ctx.cyto) * (0.6 + np.exp(-ctx.dist_nucleus / max(1.0, 1.5 * ctx.nucleus_radius)))
    if where.sum() <= 0:
        return np.zeros(ctx.shape, np.float32)
    area_ratio = float(ctx.cyto.sum()) / max(1.0, ctx.px(100) ** 2)
    k = int(np.clip(rng.uniform(3, 6) * area_ratio, 8, 60))
    idx = rng.choice(where.size, size=k, p=where.ravel() / where.sum())
    starts = np.stack(np.divmod(idx, ctx.shape[1]), 1).astype(np.float64)
    step = max(0.8, ctx.px(6))
    tubes = walks(rng, starts, rng.uniform(0, 2 * math.pi, k), n_steps=int(rng.integers(7, 13)), step_px=step, turn_sd=0.2)
    lines = blur(polylines(ctx.shape, tubes), ctx.px(1))
    dots = spots(rng, where, 2 * k, sigma_px=max(0.5, ctx.px(2.5)), amplitude=(0.4, 0.8))
    return np.minimum(1.2 * lines + dots, 1.2) * _f(ctx.cyto)


@_alt(15)
def aggresome(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """A juxtanuclear body made of a few merged blobs."""
    ny, nx = ctx.nucleus_centre
    my, mx = ctx.mtoc
    d = math.hypot(my - ny, mx - nx) or 1.0
    cy, cx = my + (my - ny) / d * ctx.px(8), mx + (mx - nx) / d * ctx.px(8)
    out = np.zeros(ctx.shape, np.float32)
    for _ in range(int(rng.integers(3, 6))):
        oy, ox = rng.normal(0, ctx.px(7), 2)
        r = max(0.8, ctx.px(rng.uniform(7, 12)))
        out = np.maximum(out, gaussian_blob(ctx.shape, (cy + oy, cx + ox), (r, r * rng.uniform(0.6, 1.0)), rng.uniform(0, math.pi)))
    return out * _f(ctx.cell) + 0.05 * _f(ctx.cyto)


@_alt(16)
def cytosol(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Flat cytoplasm up to the edge, coarsely mottled (15 full-res px), some over the nucleus."""
    return _f(ctx.cyto) * np.clip(0.8 + 0.2 * ctx.texture(rng, 15), 0, None) + 0.2 * _f(ctx.nucleus)


@_alt(17)
def vesicles(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Fewer, larger puncta, more of them towards the cell periphery."""
    out_ward = np.clip(ctx.dist_nucleus / max(1.0, ctx.px(60)), 0, 1)
    where = _f(ctx.cyto) * (0.2 + out_ward)
    area_ratio = float(ctx.cyto.sum()) / max(1.0, ctx.px(100) ** 2)
    n = int(np.clip(rng.uniform(3, 7) * area_ratio, 8, 70))
    return np.minimum(spots(rng, where, n, sigma_px=max(0.6, ctx.px(5.5)), amplitude=(0.5, 1.0)), 1.2) + 0.03 * _f(ctx.cyto)


@_alt(18)
def negative(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """No specific signal."""
    return np.zeros(ctx.shape, np.float32)


assert sorted(ALT_PATTERNS) == list(range(NUM_CLASSES)), "every class needs an alt pattern"
