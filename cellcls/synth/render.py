"""From a cell layout to a 4-channel image: markers, green patterns, optics, noise, bit depth.

Two stages, both array in, array out:

* :func:`render_objects` draws the noiseless object (H, W, 4) float32 in RGBY order:
  red microtubules radiating from each centrosome (a spindle in dividing cells), blue
  chromatin with darker nucleoli, a yellow reticular ER denser around the nucleus, and
  the green protein: each cell's classes drawn by :data:`~cellcls.synth.patterns.PATTERNS`
  times that cell's expression level, over a faint non-specific haze.
* :func:`acquire` plays the microscope: Gaussian PSF, per-channel gain and offset,
  Poisson-like shot noise (variance proportional to the signal) plus Gaussian read noise,
  clipping and quantisation to 8 or 16 bits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .draw import blur, polylines, walks
from .geometry import Layout, smooth_noise
from .patterns import PATTERNS, CellContext, PatternFn

__all__ = ["Acquisition", "GreenStyle", "build_contexts", "render_objects", "acquire"]

#: Patterns are normalised to peak 1, but never amplified more than 1 / this.
_MIN_PATTERN_PEAK = 0.25


@dataclass(frozen=True)
class GreenStyle:
    """How the protein shows in one image.

    class_weight : relative brightness per class id (19 floats), so that co-localised
        patterns mix in varying proportions.
    expression_sd : log-normal spread of the per-cell expression level.
    nonspecific : level of the faint background haze in every cell (specific peak ~1).
    """

    class_weight: tuple[float, ...]
    expression_sd: float
    nonspecific: float


@dataclass(frozen=True)
class Acquisition:
    """Microscope settings of one image (fractions of the full-scale value, per RGBY channel)."""

    gain: tuple[float, float, float, float]
    offset: tuple[float, float, float, float]
    photons: float  # photon count at full scale: lower = noisier
    read_noise: float
    psf_full_px: float = 2.5


def _crop_box(sl: tuple[slice, slice], shape: tuple[int, int], pad: int) -> tuple[slice, slice]:
    return (
        slice(max(0, sl[0].start - pad), min(shape[0], sl[0].stop + pad)),
        slice(max(0, sl[1].start - pad), min(shape[1], sl[1].stop + pad)),
    )


def build_contexts(layout: Layout, scale: float) -> list[tuple[tuple[slice, slice], CellContext]]:
    """One :class:`CellContext` per cell (id = index + 1) on its padded bounding box."""
    out = []
    shape = layout.cells.shape
    for idx, s in enumerate(layout.specs, start=1):
        box = _crop_box(s.crop, shape, 2)
        oy, ox = box[0].start, box[1].start
        cell = layout.cells[box] == idx
        nuc = layout.nuclei[box] == idx
        ctx = CellContext(
            cell=cell,
            nucleus=nuc,
            nucleoli=layout.nucleoli[box] & nuc,
            red=np.zeros(cell.shape, np.float32),
            yellow=np.zeros(cell.shape, np.float32),
            centre=(s.centre[0] - oy, s.centre[1] - ox),
            nucleus_centre=(s.nucleus_centre[0] - oy, s.nucleus_centre[1] - ox),
            mtoc=(s.mtoc[0] - oy, s.mtoc[1] - ox),
            angle=s.angle,
            axes=s.axes,
            nucleus_angle=s.nucleus_angle,
            dividing=s.dividing,
            scale=scale,
        )
        out.append((box, ctx))
    return out


def _red(ctx: CellContext, rng: np.random.Generator) -> np.ndarray:
    """Microtubules: filaments radiating from the centrosome to the cell edge."""
    cell = ctx.cell.astype(np.float32)
    if ctx.dividing:
        return PATTERNS[11](ctx, rng) + 0.3 * cell
    k = int(np.clip(rng.uniform(0.8, 1.2) * 70 * math.sqrt(cell.sum() / max(1.0, ctx.px(190) ** 2)), 30, 160))
    step = max(1.0, ctx.px(12))
    jitter = rng.normal(0, max(0.5, ctx.px(8)), (k, 2))
    starts = np.asarray(ctx.mtoc)[None, :] + jitter
    n_steps = int(math.ceil(2.2 * max(ctx.axes) / step))
    curves = walks(rng, starts, rng.uniform(0, 2 * math.pi, k), n_steps=n_steps, step_px=step, turn_sd=0.16)
    lines = blur(polylines(ctx.shape, curves), ctx.px(1.5))
    yy, xx = ctx.yx_grid()
    hub = np.exp(-0.5 * ((yy - ctx.mtoc[0]) ** 2 + (xx - ctx.mtoc[1]) ** 2) / max(1.0, ctx.px(20)) ** 2)
    red = (0.6 * np.minimum(lines, 1.5) + 0.2 + 0.25 * hub) * cell
    return red * (1 - 0.55 * ctx.nucleus)


def _yellow(ctx: CellContext, ridge: np.ndarray) -> np.ndarray:
    """ER: the reticular ridge field, dense around the nucleus, plus the nuclear envelope."""
    cell = ctx.cell.astype(np.float32)
    if ctx.dividing:
        return (0.45 * ridge + 0.2) * cell
    cyto = ctx.cyto.astype(np.float32)
    near = np.exp(-ctx.dist_nucleus / max(1.0, 0.5 * min(ctx.axes)))
    envelope = np.exp(-0.5 * (ctx.dist_nucleus / max(0.7, ctx.px(5))) ** 2) * cyto
    return (ridge * (0.3 + 0.7 * near) + 0.12) * cyto + 0.5 * envelope


def _blue(ctx: CellContext, texture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chromatin: nucleus with texture, darker nucleoli, a brighter edge; condensed DNA is bright."""
    nuc = ctx.nucleus.astype(np.float32)
    level = rng.uniform(0.7, 1.0)
    if ctx.dividing:
        return nuc * (1.1 + 0.2 * texture) * level
    edge = np.exp(-0.5 * (ctx.depth_nucleus / max(0.7, ctx.px(5))) ** 2) * nuc
    body = nuc * (0.65 + 0.12 * texture) * (1 - 0.45 * ctx.nucleoli)
    return (body + 0.15 * edge) * level


def _er_ridge(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A reticular network: the near-zero set of band-pass noise, (H, W) float32 in [0, 1]."""
    white = rng.standard_normal(shape).astype(np.float32)
    s1 = max(0.8, 9 * scale)
    band = blur(white, s1) - blur(white, 2.2 * s1)
    sd = float(band.std()) or 1.0
    return np.exp(-((band / (0.3 * sd)) ** 2)).astype(np.float32)


def render_objects(
    rng: np.random.Generator,
    layout: Layout,
    cell_labels: list[tuple[int, ...]],
    *,
    scale: float,
    style: GreenStyle,
    patterns: Mapping[int, PatternFn] | None = None,
    pattern_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Noiseless object intensities (H, W, 4) float32 in RGBY order, peaks ~1.

    ``cell_labels[i]`` are the classes cell id ``i + 1`` shows (``(18,)`` = Negative).
    ``patterns`` replaces the green pattern functions (None = :data:`PATTERNS`); they draw from
    ``pattern_rng``, while the default patterns still take their draws from ``rng`` and are
    discarded, so that for the same ``rng`` every channel but green is the same.
    """
    if patterns is not None and pattern_rng is None:
        raise ValueError("other green patterns need their own pattern_rng")
    h, w = layout.cells.shape
    obj = np.zeros((4, h, w), np.float32)
    contexts = build_contexts(layout, scale)
    ridge = _er_ridge(rng, (h, w), scale)
    blue_tex = smooth_noise(rng, (h, w), max(1.0, 10 * scale))
    haze_tex = smooth_noise(rng, (h, w), max(1.0, 60 * scale))
    expression = np.exp(rng.normal(0, style.expression_sd, len(contexts))).clip(0.2, 3.0)
    for (box, ctx), labels, expr in zip(contexts, cell_labels, expression):
        cell = ctx.cell
        ctx.red = _red(ctx, rng).astype(np.float32)
        ctx.yellow = _yellow(ctx, ridge[box]).astype(np.float32)
        blue = _blue(ctx, blue_tex[box], rng)
        green = np.zeros(ctx.shape, np.float32)
        for c in labels:
            pat = PATTERNS[c](ctx, rng)
            if patterns is not None:  # the default's draws are taken (above), its drawing dropped
                pat = patterns[c](ctx, pattern_rng)
            # a pattern whose structure lies outside the crop (a centrosome beyond the image
            # border) keeps only its faint haze: stretching that to peak 1 would light the whole cell
            peak = max(float(pat.max()), _MIN_PATTERN_PEAK)
            green += pat * np.float32(style.class_weight[c] * expr / peak)
        haze = style.nonspecific * (0.85 + 0.15 * haze_tex[box]) * (0.8 * ctx.cyto + 0.45 * ctx.nucleus)
        for ch, val in ((0, ctx.red), (1, green + haze), (2, blue), (3, ctx.yellow)):
            dst = obj[ch][box]
            dst[cell] += val[cell]
    return np.moveaxis(obj, 0, -1)


def acquire(
    rng: np.random.Generator, objects: np.ndarray, *, scale: float, settings: Acquisition, bit_depth: int
) -> np.ndarray:
    """Image the objects: PSF blur, gain/offset, shot + read noise, quantisation.

    Parameters
    ----------
    objects : (H, W, 4) float32 object intensities (peaks ~1).
    bit_depth : 8 -> uint8 (0..255), 16 -> uint16 (0..65535).

    Returns
    -------
    (H, W, 4) uint8 or uint16 in RGBY order.
    """
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    sigma = max(0.35, settings.psf_full_px * scale)
    out_max = 255.0 if bit_depth == 8 else 65535.0
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    h, w = objects.shape[:2]
    img = np.empty((h, w, 4), dtype)
    for ch in range(4):
        v = blur(objects[..., ch], sigma) * np.float32(settings.gain[ch]) + np.float32(settings.offset[ch])
        noise_sd = np.sqrt(np.maximum(v, 0) / np.float32(settings.photons)) + np.float32(settings.read_noise)
        v = v + noise_sd * rng.standard_normal((h, w), dtype=np.float32)
        img[..., ch] = np.rint(np.clip(v, 0.0, 1.0) * np.float32(out_max)).astype(dtype)
    return img
