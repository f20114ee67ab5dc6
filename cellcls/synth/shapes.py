"""Cell-shape families: how :func:`~cellcls.synth.geometry.layout_cells` draws outlines and nuclei.

A :class:`CellShape` holds the numbers the layout draws cells with; :data:`CELL_SHAPES` maps a
name (``cellcls synth --cell-shape``) to one. ``default`` reproduces the original world exactly
(same numbers, same random draws); the others draw the world differently, to test that a
pipeline tuned on the default cells holds on other geometry:

* ``round``: near-circular cells (aspect 1.0-1.12) with smooth outlines and round nuclei.
* ``elongated``: spindle-like cells (aspect 2.8-4.5, fibroblast-like) with long nuclei
  aligned with the cell, in colonies of roughly parallel cells.
* ``irregular``: lobed outlines (strong harmonics of orders 2-8) roughened by a stronger,
  shorter-range warp field: low solidity.

Nuclei always stay inside their cells and the size cut-offs of the layout
(:data:`~cellcls.synth.geometry.MIN_CELL_AREA_PX_FULL`, ``MIN_NUCLEUS_AREA_PX_FULL``) hold for
every family: the layout enforces them whatever the shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..registry import Registry

__all__ = ["CellShape", "CELL_SHAPES", "DEFAULT_SHAPE", "cell_shape"]


@dataclass(frozen=True)
class CellShape:
    """The numbers one shape family draws interphase cells with (dividing cells stay round).

    Attributes
    ----------
    name : registry name.
    elongation : (low, high) long/short axis ratio of the nominal outline; None = the cell line's.
    area_gain : factor on the cell line's nominal outline area (dimensionless).
    irregularity_gain : factor on the cell line's outline modulation amplitude.
    harmonic_orders : number of Fourier orders modulating the outline (orders 2..K+1).
    harmonic_decay : order-k amplitude falls as k ** -decay.
    max_harmonic_sum : the drawn amplitudes are scaled down to sum to at most this (None: never);
        keeps the modulated radius positive.
    nucleus_elongation : (low, high cap) of the nucleus axis ratio, drawn in
        [low, min(high, cell aspect + 0.1)].
    nucleus_angle_sd : spread (radians) of the nucleus axis around the cell axis.
    aligned_fit : fit the nucleus by its extent across the cell axis (True, for long aligned
        nuclei) instead of by its long radius (False, the default world's conservative rule).
    colony_angle_sd : None = every cell's angle uniform; else a budded cell takes its parent's
        angle plus a normal draw of this spread (radians): parallel colonies.
    warp_gain, warp_corr_gain : factors on the shared outline warp field's amplitude
        (0.10 x mean cell radius) and correlation length (0.8 x mean cell radius).
    """

    name: str
    elongation: tuple[float, float] | None = None
    area_gain: float = 1.0
    irregularity_gain: float = 1.0
    harmonic_orders: int = 4
    harmonic_decay: float = 0.6
    max_harmonic_sum: float | None = None
    nucleus_elongation: tuple[float, float] = (1.0, 1.6)
    nucleus_angle_sd: float = 0.3
    aligned_fit: bool = False
    colony_angle_sd: float | None = None
    warp_gain: float = 1.0
    warp_corr_gain: float = 1.0

    def draw_harmonics(self, rng: np.random.Generator, irregularity: float) -> np.ndarray:
        """(K, 2) amplitude, phase of the outline modulation for one cell."""
        k = self.harmonic_orders
        harmonics = np.stack(
            [irregularity * rng.uniform(0.3, 1.0, k) / np.arange(1, k + 1) ** self.harmonic_decay, rng.uniform(0, 2 * math.pi, k)], 1
        )
        if self.max_harmonic_sum is not None:
            total = float(harmonics[:, 0].sum())
            if total > self.max_harmonic_sum:
                harmonics[:, 0] *= self.max_harmonic_sum / total
        return harmonics

    def nucleus_fit_radius(self, na: float, nb: float, n_angle: float, angle: float) -> float:
        """Radius (px) of the nucleus that must fit inside the outline's short radius."""
        if not self.aligned_fit:
            return na
        rel = n_angle - angle
        return math.hypot(nb * math.cos(rel), na * math.sin(rel))


CELL_SHAPES: Registry[CellShape] = Registry("cell shape")


def cell_shape(name: str) -> CellShape:
    """The registered shape family ``name``; an unknown name lists the valid ones."""
    return CELL_SHAPES.get(name)


DEFAULT_SHAPE = CELL_SHAPES.add("default", CellShape("default"))
CELL_SHAPES.add(
    "round",
    CellShape(
        "round", elongation=(1.0, 1.12), irregularity_gain=0.3, nucleus_elongation=(1.0, 1.2), warp_gain=0.45,
    ),
)
CELL_SHAPES.add(
    "elongated",
    CellShape(
        "elongated",
        elongation=(2.8, 4.5),
        area_gain=1.15,
        irregularity_gain=0.6,
        nucleus_elongation=(1.5, 2.4),
        nucleus_angle_sd=0.08,
        aligned_fit=True,
        colony_angle_sd=0.25,
    ),
)
CELL_SHAPES.add(
    "irregular",
    CellShape(
        "irregular",
        irregularity_gain=3.0,
        harmonic_orders=7,
        harmonic_decay=0.25,
        max_harmonic_sum=0.45,
        warp_gain=1.3,
        warp_corr_gain=0.6,
    ),
)
