"""Cell and nucleus layout of a synthetic field of view.

All sizes are defined in full-resolution HPA pixels (a 2048 x 2048 image's pixel) and
multiplied by ``scale`` (pixel size relative to that; 0.25 = quarter resolution).

Cells are irregular, warped ellipses that compete for pixels: a pixel belongs to the cell
with the smallest normalised distance ``d = rho / m(theta)`` below 1 (``rho`` the elliptic
radius, ``m`` a low-order Fourier modulation of the outline), evaluated at coordinates
displaced by one smooth random warp field shared by all cells, so touching cells meet on
one wavy line and gaps stay where no outline reaches. A cell always owns its nucleus.
All distance work runs on each cell's bounding-box crop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage as ndi

from .shapes import DEFAULT_SHAPE, CellShape

__all__ = [
    "CellLine",
    "CELL_LINES",
    "CellSpec",
    "Layout",
    "MIN_CELL_AREA_PX_FULL",
    "MIN_NUCLEUS_AREA_PX_FULL",
    "smooth_noise",
    "layout_cells",
]

#: HPA-Cell-Segmentation's size cut-offs at full resolution (areas in full-res px).
MIN_CELL_AREA_PX_FULL = 5500
MIN_NUCLEUS_AREA_PX_FULL = 2500


@dataclass(frozen=True)
class CellLine:
    """Morphology of one cell line (areas in full-resolution px)."""

    name: str
    cell_area_px: tuple[float, float]  # log-uniform range of the nominal outline area
    elongation: tuple[float, float]  # long / short axis ratio range
    irregularity: float  # amplitude of the outline's Fourier modulation
    nucleus_area_px: tuple[float, float]
    nucleus_offset: float  # how far the nucleus sits off-centre, fraction of the short radius


CELL_LINES: tuple[CellLine, ...] = (
    CellLine("U-2 OS", (36000, 80000), (1.2, 2.2), 0.14, (7000, 14000), 0.35),
    CellLine("A-431", (30000, 56000), (1.0, 1.5), 0.10, (6500, 12000), 0.25),
    CellLine("U-251 MG", (38000, 84000), (1.3, 2.4), 0.18, (7000, 15000), 0.35),
    CellLine("HEK 293", (26000, 44000), (1.0, 1.4), 0.08, (6500, 11000), 0.20),
    CellLine("MCF7", (28000, 50000), (1.0, 1.4), 0.10, (7000, 13000), 0.25),
    CellLine("CACO-2", (30000, 52000), (1.0, 1.3), 0.07, (6500, 12000), 0.20),
    CellLine("HeLa", (32000, 64000), (1.1, 1.8), 0.12, (7000, 14000), 0.30),
    CellLine("RT4", (28000, 48000), (1.0, 1.3), 0.08, (6500, 11000), 0.20),
)


@dataclass
class CellSpec:
    """One cell's drawn parameters, in image pixel coordinates at the sample's scale."""

    centre: tuple[float, float]  # (y, x)
    axes: tuple[float, float]  # (long, short) radii of the outline, px
    angle: float  # orientation of the long axis, radians (x towards y)
    harmonics: np.ndarray  # (K, 2): amplitude, phase for orders 2..K+1
    nucleus_centre: tuple[float, float]
    nucleus_axes: tuple[float, float]
    nucleus_angle: float
    dividing: bool = False
    mtoc: tuple[float, float] = (0.0, 0.0)  # microtubule organising centre (centrosome), (y, x)
    crop: tuple[slice, slice] | None = None  # bounding box of the final cell
    touches_border: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class Layout:
    """The geometry of one image.

    Attributes
    ----------
    cells, nuclei : (H, W) uint16
        Instance maps, 0 = background, ids 1..N; nucleus pixels carry their cell's id.
    nucleoli : (H, W) bool
        Nucleolus pixels (inside nuclei of interphase cells).
    specs : list of CellSpec
        ``specs[i]`` describes cell id ``i + 1``.
    """

    cells: np.ndarray
    nuclei: np.ndarray
    nucleoli: np.ndarray
    specs: list[CellSpec]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], corr_px: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (H, W) float32 with correlation length ~corr_px pixels."""
    h, w = shape
    step = max(corr_px, 1.0)
    gh, gw = max(2, int(math.ceil(h / step)) + 2), max(2, int(math.ceil(w / step)) + 2)
    coarse = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(coarse, (int(gw * step), int(gh * step)), interpolation=cv2.INTER_CUBIC)
    field_ = big[:h, :w]
    if field_.shape != (h, w):  # tiny images: pad by reflection
        field_ = np.pad(field_, ((0, h - field_.shape[0]), (0, w - field_.shape[1])), mode="reflect")
    sd = float(field_.std()) or 1.0
    return ((field_ - field_.mean()) / sd).astype(np.float32)


def _elliptic_distance(
    yy: np.ndarray, xx: np.ndarray, centre, axes, angle: float, harmonics: np.ndarray
) -> np.ndarray:
    """Normalised distance (< 1 inside) of warped coordinates to an irregular ellipse.

    The outline radius is modulated by ``1 + sum_k a_k cos(k theta + phi_k)``, evaluated as
    ``Re(a_k e^{i phi_k} z^k)`` with ``z = e^{i theta}`` to avoid per-pixel trigonometry.
    """
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / axes[0]
    v = (-dx * s + dy * c) / axes[1]
    rho = np.sqrt(u * u + v * v)
    if harmonics.size:
        z = (u + 1j * v).astype(np.complex64) / np.maximum(rho, np.float32(1e-6))
        zk = z * z
        m = np.ones(rho.shape, np.float32)
        for amp, phase in harmonics:
            m += (np.complex64(amp * complex(math.cos(phase), math.sin(phase))) * zk).real
            zk = zk * z
        rho = rho / m
    return rho


def _draw_specs(
    rng: np.random.Generator,
    shape: tuple[int, int],
    scale: float,
    line: CellLine,
    n_cells: int,
    n_dividing: int,
    form: CellShape = DEFAULT_SHAPE,
) -> list[CellSpec]:
    """Place cells by rejection sampling: colonies grow by budding next to placed cells."""
    h, w = shape
    specs: list[CellSpec] = []
    attempts = 0
    while len(specs) < n_cells and attempts < n_cells * 40:
        attempts += 1
        dividing = len(specs) < n_dividing
        if dividing:
            area = rng.uniform(16000, 26000) * scale**2
            elong, irr = rng.uniform(1.0, 1.1), 0.03
        else:
            area = math.exp(rng.uniform(*np.log(line.cell_area_px))) * scale**2 * form.area_gain
            elong = rng.uniform(*(form.elongation or line.elongation))
            irr = line.irregularity * form.irregularity_gain
        r = math.sqrt(area / math.pi)
        a, b = r * math.sqrt(elong), r / math.sqrt(elong)
        margin = 0.35 * b
        if dividing:  # keep dividing cells whole, away from the border
            lo_y, hi_y, lo_x, hi_x = a + 2, h - a - 2, a + 2, w - a - 2
            if hi_y <= lo_y or hi_x <= lo_x:
                dividing = False
                lo_y, hi_y, lo_x, hi_x = -margin, h + margin, -margin, w + margin
        else:
            lo_y, hi_y, lo_x, hi_x = -margin, h + margin, -margin, w + margin
        parent = None
        if specs and not dividing and rng.random() < 0.7:
            # bud off a random placed cell so that cells touch in colonies
            parent = specs[int(rng.integers(len(specs)))]
            ang = rng.uniform(0, 2 * math.pi)
            dist = (max(parent.axes) * 0.5 + min(parent.axes) * 0.5 + r) * rng.uniform(0.7, 1.0)
            cy, cx = parent.centre[0] + dist * math.sin(ang), parent.centre[1] + dist * math.cos(ang)
            if not (lo_y <= cy <= hi_y and lo_x <= cx <= hi_x):
                continue
        else:
            cy, cx = rng.uniform(lo_y, hi_y), rng.uniform(lo_x, hi_x)
        if parent is not None and form.colony_angle_sd is not None:
            angle = parent.angle + rng.normal(0, form.colony_angle_sd)  # parallel colonies
        else:
            angle = rng.uniform(0, math.pi)
        harmonics = (DEFAULT_SHAPE if dividing else form).draw_harmonics(rng, irr)
        if dividing:
            # condensed chromosomes: a bar (metaphase plate) across the cell centre
            n_area = rng.uniform(5200, 7500) * scale**2
            n_el = rng.uniform(2.2, 3.0)
            n_angle = rng.uniform(0, math.pi)
            offset = 0.0
        else:
            n_area = math.exp(rng.uniform(*np.log(line.nucleus_area_px))) * scale**2
            n_area = min(n_area, 0.4 * area)
            n_area = max(n_area, 1.25 * MIN_NUCLEUS_AREA_PX_FULL * scale**2)
            n_el = rng.uniform(form.nucleus_elongation[0], min(form.nucleus_elongation[1], elong + 0.1))
            n_angle = angle + rng.normal(0, form.nucleus_angle_sd)
            offset = line.nucleus_offset
        nr = math.sqrt(n_area / math.pi)
        na, nb = nr * math.sqrt(n_el), nr / math.sqrt(n_el)
        # the nucleus must fit inside the shortest radius of the outline with cytoplasm around it
        fit = na if dividing else form.nucleus_fit_radius(na, nb, n_angle, angle)
        room = b * (1 - float(harmonics[:, 0].sum())) * 0.85 - fit
        if room < 0:
            shrink = (b * (1 - float(harmonics[:, 0].sum())) * 0.8) / fit
            if shrink * shrink * n_area < 1.2 * MIN_NUCLEUS_AREA_PX_FULL * scale**2:
                continue
            na, nb = na * shrink, nb * shrink
            room = 0.0
        off = rng.uniform(0, offset) * room if room > 0 else 0.0  # off-centre nucleus
        off_ang = rng.uniform(0, 2 * math.pi)
        ny, nx = cy + off * math.sin(off_ang), cx + off * math.cos(off_ang)
        # rejection: nuclei never overlap, outlines do not swallow each other
        ok = True
        for o in specs:
            dn = math.hypot(ny - o.nucleus_centre[0], nx - o.nucleus_centre[1])
            dc = math.hypot(cy - o.centre[0], cx - o.centre[1])
            if dn < na + max(o.nucleus_axes) + 6 * scale + 2 or dc < 0.62 * (b + min(o.axes) + r) * 0.8:
                ok = False
                break
        if not ok:
            continue
        # the centrosome sits by the nucleus, on the side facing the cell centre (or anywhere if centred)
        towards = math.atan2(cy - ny, cx - nx) if off > 1e-3 else rng.uniform(0, 2 * math.pi)
        towards += rng.normal(0, 0.5)
        rel = towards - n_angle
        edge = 1.0 / math.sqrt((math.cos(rel) / na) ** 2 + (math.sin(rel) / nb) ** 2)
        mt_r = edge + rng.uniform(10, 30) * scale + 0.75
        mtoc = (ny + mt_r * math.sin(towards), nx + mt_r * math.cos(towards))
        specs.append(
            CellSpec(
                centre=(cy, cx),
                axes=(a, b),
                angle=angle,
                harmonics=harmonics.astype(np.float64),
                nucleus_centre=(ny, nx),
                nucleus_axes=(na, nb),
                nucleus_angle=n_angle,
                dividing=dividing,
                mtoc=mtoc,
            )
        )
    return specs


def _assign(
    specs: list[CellSpec], shape: tuple[int, int], warp: tuple[np.ndarray, np.ndarray], warp_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Competitive pixel assignment; returns (cells, nuclei) uint16 maps, id = index + 1."""
    h, w = shape
    best = np.ones(shape, np.float32)
    cells = np.zeros(shape, np.uint16)
    own_nuclei: list[tuple[tuple[slice, slice], np.ndarray]] = []
    wy, wx = warp
    nuc_harm = np.zeros((0, 2))
    for idx, s in enumerate(specs):
        reach = max(s.axes) * (1 + float(s.harmonics[:, 0].sum())) + warp_px + 2
        y0, y1 = max(0, int(s.centre[0] - reach)), min(h, int(math.ceil(s.centre[0] + reach)) + 1)
        x0, x1 = max(0, int(s.centre[1] - reach)), min(w, int(math.ceil(s.centre[1] + reach)) + 1)
        if y1 <= y0 or x1 <= x0:
            own_nuclei.append(((slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool)))
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] + wy[y0:y1, x0:x1]
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] + wx[y0:y1, x0:x1]
        d = _elliptic_distance(yy, xx, s.centre, s.axes, s.angle, s.harmonics)
        dn = _elliptic_distance(yy, xx, s.nucleus_centre, s.nucleus_axes, s.nucleus_angle, nuc_harm)
        nuc = dn < 1.0
        d = np.where(nuc, np.float32(0), d)
        sub_best = best[y0:y1, x0:x1]
        win = d < sub_best
        sub_best[win] = d[win]
        cells[y0:y1, x0:x1][win] = idx + 1
        own_nuclei.append(((slice(y0, y1), slice(x0, x1)), nuc))
    nuclei = np.zeros(shape, np.uint16)
    for idx, (sl, nuc) in enumerate(own_nuclei):
        if nuc.size:
            sub = nuclei[sl]
            sub[nuc & (cells[sl] == idx + 1)] = idx + 1
    return cells, nuclei


def _keep_largest_component(cells: np.ndarray, nuclei: np.ndarray) -> None:
    """Drop pixels of a cell cut off from its nucleus's component (in place)."""
    for idx, sl in enumerate(ndi.find_objects(cells), start=1):
        if sl is None:
            continue
        mask = cells[sl] == idx
        lab, n = ndi.label(mask)
        if n <= 1:
            continue
        nuc_lab = lab[nuclei[sl] == idx]
        keep = np.bincount(nuc_lab, minlength=n + 1)[1:].argmax() + 1 if nuc_lab.size else np.bincount(lab[mask]).argmax()
        cells[sl][mask & (lab != keep)] = 0


def layout_cells(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    scale: float,
    line: CellLine,
    density: float,
    n_dividing: int = 0,
    form: CellShape | None = None,
) -> Layout:
    """Draw the cells of one image.

    Parameters
    ----------
    rng : numpy Generator
    shape : (H, W) of the image in pixels at ``scale``.
    scale : pixel size relative to full-resolution HPA (0.25 = quarter resolution).
    line : the cell line's morphology.
    density : expected cells per 2048 x 2048 full-resolution field (real images: ~10-45).
    n_dividing : number of round mitotic cells to place (kept away from the border).
    form : the shape family of the interphase cells (:mod:`cellcls.synth.shapes`); None = the
        default world's, with exactly its random draws.

    Returns
    -------
    Layout with cells/nuclei (H, W) uint16, ids 1..N in placement order, and nucleoli (H, W) bool.
    Interior cells are at least 5500*scale**2 px with nuclei of at least 2500*scale**2 px; cells cut by
    the border may be smaller but keep part of their nucleus.
    """
    h, w = shape
    field_area = (h / scale) * (w / scale)
    n_cells = max(1, int(rng.poisson(density * field_area / 2048.0**2)))
    form = DEFAULT_SHAPE if form is None else form
    specs = _draw_specs(rng, shape, scale, line, n_cells, n_dividing, form)
    mean_r = math.sqrt(float(np.mean(line.cell_area_px)) / math.pi) * scale
    warp_px = 0.10 * mean_r * form.warp_gain
    corr_px = 0.8 * mean_r * form.warp_corr_gain
    warp = (
        smooth_noise(rng, shape, corr_px) * np.float32(warp_px),
        smooth_noise(rng, shape, corr_px) * np.float32(warp_px),
    )
    min_cell, min_nuc = MIN_CELL_AREA_PX_FULL * scale**2, MIN_NUCLEUS_AREA_PX_FULL * scale**2
    for attempt in range(4):
        cells, nuclei = _assign(specs, shape, warp, 2.5 * warp_px)
        _keep_largest_component(cells, nuclei)
        cell_area = np.bincount(cells.ravel(), minlength=len(specs) + 1)[1:]
        nuc_area = np.bincount(nuclei.ravel(), minlength=len(specs) + 1)[1:]
        border_ids = np.unique(np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]]))
        on_border = np.zeros(len(specs) + 1, bool)
        on_border[border_ids] = True
        on_border = on_border[1:]
        # interior cells must pass the segmentation cut-offs; border-cut ones keep a real piece
        keep = np.where(
            on_border,
            (cell_area >= 0.25 * min_cell) & (nuc_area >= 0.2 * min_nuc),
            (cell_area >= min_cell) & (nuc_area >= min_nuc),
        )
        if keep.all():
            break
        if attempt == 3:  # give up re-assigning: drop the failures, leaving gaps
            lut = np.zeros(len(keep) + 1, np.uint16)
            lut[np.flatnonzero(keep) + 1] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint16)
            cells, nuclei = lut[cells], lut[nuclei]
            on_border = on_border[keep]
        specs = [s for s, k in zip(specs, keep) if k]
    for s, sl, b in zip(specs, ndi.find_objects(cells, max_label=len(specs)), on_border):
        s.crop = sl
        s.touches_border = bool(b)
    nucleoli = _nucleoli(rng, nuclei, specs, scale)
    return Layout(cells=cells, nuclei=nuclei, nucleoli=nucleoli, specs=specs)


def _nucleoli(rng: np.random.Generator, nuclei: np.ndarray, specs: list[CellSpec], scale: float) -> np.ndarray:
    """1-4 compact nucleoli per interphase nucleus, as disks clipped to the nucleus (H, W) bool."""
    out = np.zeros(nuclei.shape, bool)
    for idx, s in enumerate(specs, start=1):
        if s.dividing or s.crop is None:
            s.extra["nucleoli"] = []
            continue
        sl = s.crop
        nuc = nuclei[sl] == idx
        if not nuc.any():
            s.extra["nucleoli"] = []
            continue
        inner = cv2.distanceTransform(nuc.astype(np.uint8), cv2.DIST_L2, 3)
        n = int(rng.choice([1, 2, 2, 3, 3, 4]))
        rn = math.sqrt(nuc.sum() / math.pi)
        cand = np.flatnonzero(inner.ravel() > 0.35 * rn)
        if cand.size == 0:
            cand = np.flatnonzero(inner.ravel() >= inner.max())
        picks = rng.choice(cand, size=min(n, cand.size), replace=False)
        yy, xx = np.mgrid[0 : nuc.shape[0], 0 : nuc.shape[1]]
        disks = []
        sub = np.zeros(nuc.shape, bool)
        for p in picks:
            py, px = divmod(int(p), nuc.shape[1])
            r = rng.uniform(0.13, 0.24) * rn * (1.2 if n == 1 else 1.0) + 0.4
            ar = rng.uniform(0.75, 1.0)
            sub |= ((yy - py) / r) ** 2 + ((xx - px) / (r * ar)) ** 2 <= 1.0
            disks.append((py + sl[0].start, px + sl[1].start, r))
        sub &= nuc
        out[sl] |= sub
        s.extra["nucleoli"] = disks
    return out
