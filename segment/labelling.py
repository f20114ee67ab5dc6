"""Turn nuclei / cell probability maps into labelled nuclei and cells (hpacellseg's ``label_cell``).

This re-implements the post-processing of HPA-Cell-Segmentation v0.1.8
(``hpacellseg.utils.label_cell``) as pure functions whose results equal the original's on its
fixture (ids up to a permutation; in fact the same raster-order ids). The Kaggle ground-truth
masks were made with that function, so its quirks are reproduced on purpose:

- the "exclude the border channel" step of the first cell watershed is a no-op in the original
  (``np.invert`` of a 0/1 int8 array gives -1/-2, both truthy): the cell mask is just
  ``interior > threshold``;
- the ``np.clip(interior, 255 * thr, interior)`` "distance" is a no-op too (upper bound below the
  lower bound returns the input): the watershed image is just ``-interior``;
- the nuclear mask is strictly ``> 0.4`` (102/255 is out) and the seed threshold is
  ``0.4 + (-0.25) == 0.15000000000000002`` (uint8 39 is in);
- the cell labels are closed with a GREY-level closing of the label image (ids matter);
- with uint8 input the border sum ``nuclei[..., 1] + cell[..., 1]`` wraps modulo 256 as in the
  original (float input has no wrap);
- every "remove small" is strict (``size < cut-off`` goes), 4-connected on masks; the final
  relabels are 8-connected.

Defects NOT reproduced: the uint8 cast of the cell labels (more than 255 cells work), inputs are
never mutated, outputs are uint16 (uint32 above 65535 ids) with ids 1..N in raster order.

Inputs are ``(H, W, 3)`` maps in hpacellseg's layout: channel 0 unused, 1 = border probability,
2 = interior probability. ``uint8`` maps hold ``round(p * 255)``; floating maps hold ``p`` in
[0, 1] and are taken in float64. A uint8 map ``u`` gives exactly the same labels as the float64
map ``u / 255`` except where the uint8 border sum wraps (only possible when both border values
exceed 127). The original divides by 255 before every comparison, so this is its arithmetic.

The image steps (components, hole filling, watersheds, thresholds) are faster stand-ins from
:mod:`segment._label_ops`, each giving the very array the scipy / skimage call would.

Pixel areas and radii are at the resolution of the maps; :meth:`LabelParams.scaled` derives them
from the full-resolution constants (a 2048² HPA image is scale 1; the "faster HPA cell
segmentation" path runs at scale 0.25).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
from dataclasses import dataclass

import numpy as np

from ._label_ops import (
    _component_areas_8,
    _drop_small_components,
    _drop_small_ids,
    _fill_label_holes,
    _fill_small_holes,
    _grey_closing,
    _label4,
    _per_pixel,
    _raster_components_8,
    _relief,
    _watershed,
)

__all__ = ["LabelParams", "label_nuclei", "label_cell", "relabel_dtype"]

# Bump when the labelling algorithm changes in a way that changes its output: part of the
# parameters hash, so mask caches keyed by it are invalidated.
_ALGORITHM_VERSION = "hpacellseg-0.1.8-label_cell/1"


def _ceil_area(area_px: float) -> int:
    # A component of a px at scale s stands for a / s² full-resolution px; "a / s² < A" is
    # "a < A s²", i.e. "a < ceil(A s²)" for integer a. Rounding to 9 digits first keeps
    # 1000 * 0.1**2 = 10.000000000000002 at 10.
    return int(math.ceil(round(area_px, 9)))


def _half_up(length_px: float) -> int:
    return int(math.floor(round(length_px, 9) + 0.5))


@dataclass(frozen=True)
class LabelParams:
    """Parameters of :func:`label_cell`; defaults are hpacellseg's full-resolution constants.

    Probabilities are in [0, 1]; areas in pixels and radii in pixels at the resolution of the
    maps given to :func:`label_cell`. Use ``LabelParams().scaled(0.25)`` for maps at a quarter of
    HPA full resolution (the "faster HPA cell segmentation" constants).

    Attributes
    ----------
    nuclei_threshold : nuclear mask is ``nuclei interior > nuclei_threshold`` (strict).
    seed_threshold_offset : nuclear seeds are ``interior * border_ok > nuclei_threshold + offset``.
    seed_border_margin : ``border_ok = 1 - (nuclei border + cell border) > seed_border_margin``.
    cell_border_threshold : the second cell watershed may grow into ``cell border > this``.
    cell_threshold_floor, otsu_factor : cell mask is ``cell interior > max(floor, otsu * factor)``.
    min_nuclear_seed_area_px : seed components (4-connected) smaller than this are dropped.
    max_nuclear_hole_area_px : background components (4-connected) of the nuclear mask smaller
        than this are filled, including ones touching the image edge (as skimage does).
    min_nuclear_mask_object_area_px : nuclear-mask components smaller than this are dropped.
    min_nucleus_area_px : nuclei smaller than this are dropped (twice, as in the original).
    min_cell_area_px : cells smaller than this are dropped (twice, as in the original).
    closing_radius_px : radius of the disk of the grey-level closing of the cell label image.
    """

    nuclei_threshold: float = 0.4
    seed_threshold_offset: float = -0.25
    seed_border_margin: float = 0.05
    cell_border_threshold: float = 0.05
    cell_threshold_floor: float = 0.22
    otsu_factor: float = 0.5
    min_nuclear_seed_area_px: int = 500
    max_nuclear_hole_area_px: int = 1000
    min_nuclear_mask_object_area_px: int = 8
    min_nucleus_area_px: int = 2500
    min_cell_area_px: int = 5500
    closing_radius_px: int = 6

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                    raise ValueError(
                        f"LabelParams.{field.name} must be a non-negative int (pixels), got {value!r}"
                    )
                object.__setattr__(self, field.name, int(value))
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
                    raise ValueError(f"LabelParams.{field.name} must be a float, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"LabelParams.{field.name} must be finite, got {value!r}")
                object.__setattr__(self, field.name, float(value))

    @property
    def seed_threshold(self) -> float:
        """``nuclei_threshold + seed_threshold_offset`` (0.15000000000000002 by default)."""
        return self.nuclei_threshold + self.seed_threshold_offset

    def scaled(self, scale: float) -> "LabelParams":
        """These parameters for maps at ``scale`` times the resolution they are given for.

        Areas are multiplied by ``scale**2`` and rounded up (a strict "smaller than" cut-off on
        integer areas: ``a / s² < A`` iff ``a < ceil(A s²)``); radii are multiplied by ``scale``
        and rounded half up. Probability thresholds do not change. ``LabelParams().scaled(0.25)``
        gives the quarter-resolution constants: holes 63, mask objects 1, seeds 32, nuclei 157,
        cells 344, disk radius 2. Apply it to full-resolution parameters only (it compounds).
        """
        if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale!r}")
        area = float(scale) ** 2
        return dataclasses.replace(
            self,
            min_nuclear_seed_area_px=_ceil_area(self.min_nuclear_seed_area_px * area),
            max_nuclear_hole_area_px=_ceil_area(self.max_nuclear_hole_area_px * area),
            min_nuclear_mask_object_area_px=_ceil_area(self.min_nuclear_mask_object_area_px * area),
            min_nucleus_area_px=_ceil_area(self.min_nucleus_area_px * area),
            min_cell_area_px=_ceil_area(self.min_cell_area_px * area),
            closing_radius_px=_half_up(self.closing_radius_px * float(scale)),
        )

    def to_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (JSON-serialisable)."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hex digest (sha256) of the fields and the algorithm version: a cache key."""
        payload = {"algorithm": _ALGORITHM_VERSION, "params": self.to_dict()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- helpers


def relabel_dtype(max_id: int) -> np.dtype:
    """uint16 when ``max_id`` fits (< 65536), else uint32."""
    return np.dtype(np.uint16) if max_id < 65536 else np.dtype(np.uint32)


def _as_maps(nuclei_pred: np.ndarray, cell_pred: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Validate both maps; return the probability planes and the border sum.

    Planes are uint8 views (probability ``u / 255``, see :func:`_per_pixel`) for uint8 input and
    float64 copies for float input. The border sum is ``nuclei[..., 1] + cell[..., 1]`` with the
    original's uint8 wrap-around for uint8 input (again a uint8 plane meaning ``sum / 255``).
    """
    nuclei_pred = np.asarray(nuclei_pred)
    cell_pred = np.asarray(cell_pred)
    for name, arr in (("nuclei_pred", nuclei_pred), ("cell_pred", cell_pred)):
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(
                f"{name} must have shape (H, W, 3) with H, W >= 1 (hpacellseg layout: unused, "
                f"border, interior), got {arr.shape}"
            )
    if nuclei_pred.shape != cell_pred.shape:
        raise ValueError(
            f"nuclei_pred {nuclei_pred.shape} and cell_pred {cell_pred.shape} must have the same shape"
        )
    if nuclei_pred.dtype != cell_pred.dtype:
        raise ValueError(
            f"nuclei_pred ({nuclei_pred.dtype}) and cell_pred ({cell_pred.dtype}) must have the same "
            "dtype; convert both to uint8 (p * 255, rounded) or both to float in [0, 1]"
        )
    dtype = nuclei_pred.dtype
    if dtype == np.uint8:
        planes = {
            "nuclei_interior": nuclei_pred[..., 2],
            "cell_interior": cell_pred[..., 2],
            "cell_border": cell_pred[..., 1],
        }
        # uint8 + uint8 stays uint8 and wraps modulo 256, as in the original.
        return planes, np.add(nuclei_pred[..., 1], cell_pred[..., 1], dtype=np.uint8)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(
            f"prediction maps must be uint8 (0..255) or float in [0, 1], got {dtype}; "
            "divide integer maps by their maximum value to get probabilities"
        )
    planes = {
        "nuclei_interior": nuclei_pred[..., 2].astype(np.float64),
        "cell_interior": cell_pred[..., 2].astype(np.float64),
        "cell_border": cell_pred[..., 1].astype(np.float64),
    }
    nuclei_border = nuclei_pred[..., 1].astype(np.float64)
    for name, plane in (*planes.items(), ("nuclei_border", nuclei_border)):
        low, high = float(plane.min(initial=0.0)), float(plane.max(initial=0.0))
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            raise ValueError(
                f"float prediction maps must lie in [0, 1]; {name} spans [{low}, {high}]"
            )
    return planes, nuclei_border + planes["cell_border"]


def _finish(labels: np.ndarray) -> np.ndarray:
    return labels.astype(relabel_dtype(int(labels.max(initial=0))), copy=False)


# ----------------------------------------------------------------------------- stages


def _nuclear_labels(planes: dict[str, np.ndarray], border_sum: np.ndarray, params: LabelParams) -> np.ndarray:
    """Stage 1 of ``label_cell``: seeded flat watershed of the nuclear mask; int32 ids 1..N."""
    from skimage.measure import label as sk_label

    interior = planes["nuclei_interior"]
    border_ok = _per_pixel(border_sum, lambda p: (1 - p) > params.seed_border_margin)
    above = _per_pixel(interior, lambda p: p > params.seed_threshold)
    # The original thresholds interior * border_ok: the interior where border_ok, else 0.
    seeds = (above | ~border_ok) if 0.0 > params.seed_threshold else (above & border_ok)
    seed_labels, _ = _label4(seeds)
    # Dropping whole components and renumbering in id order == remove_small_objects + relabel.
    markers = _drop_small_ids(seed_labels, params.min_nuclear_seed_area_px, renumber=True)

    mask = _per_pixel(interior, lambda p: p > params.nuclei_threshold)
    mask = _fill_small_holes(mask, params.max_nuclear_hole_area_px)
    mask = _drop_small_components(mask, params.min_nuclear_mask_object_area_px)
    # The original floods the mask itself (1 inside): a constant over every pixel the flood can
    # reach, i.e. a flat image; the queue's tie-breaking draws the lines.
    nuclei = _watershed(None, markers, mask, line=True)
    nuclei = _drop_small_ids(nuclei, params.min_nucleus_area_px)
    # Value-aware 8-connected relabel: an id split into pieces becomes several nuclei.
    # int32 (the ids are far fewer than 2**31): the watersheds then move half the bytes of int64.
    return sk_label(nuclei, connectivity=2).astype(np.int32, copy=False)


def _otsu_of_uint8_over_255(values_u8: np.ndarray) -> float:
    """``threshold_otsu(values_u8 / 255.0)`` (256 bins) from a 256-entry level count.

    numpy bins each element on its own value, so histogramming the 256 possible values weighted
    by their counts gives the very counts (and bin centres) of the float image's histogram.
    """
    from skimage.filters import threshold_otsu

    counts = np.bincount(values_u8.ravel(), minlength=256)
    present = np.flatnonzero(counts)
    levels = present / 255.0
    if present.size == 1:
        return float(levels[0])  # threshold_otsu returns the value of a flat image
    hist, edges = np.histogram(levels, bins=256, range=(levels[0], levels[-1]), weights=counts[present])
    return threshold_otsu(hist=(hist, (edges[:-1] + edges[1:]) / 2.0))


def _cell_threshold(planes: dict[str, np.ndarray], params: LabelParams) -> float:
    from skimage.filters import threshold_otsu

    # Otsu on the float64 probabilities with skimage's default 256 bins, as the original.
    if planes["cell_interior"].dtype == np.uint8:
        otsu = _otsu_of_uint8_over_255(planes["cell_interior"])
    else:
        otsu = threshold_otsu(planes["cell_interior"])
    return max(params.cell_threshold_floor, otsu * params.otsu_factor)


def _cell_labels(planes: dict[str, np.ndarray], nuclei: np.ndarray, params: LabelParams) -> np.ndarray:
    """Stages 2-3 of ``label_cell``: two watersheds of ``-interior``; int32 ids 1..N raster order."""
    interior = planes["cell_interior"]
    threshold = _cell_threshold(planes, params)
    cell_mask = _per_pixel(interior, lambda p: p > threshold)
    relief = _relief(interior)  # the original's np.clip "distance" returns the interior unchanged

    cells = _watershed(relief, nuclei, cell_mask)
    cells = _drop_small_ids(cells, params.min_cell_area_px)
    cells = _grey_closing(cells, params.closing_radius_px)
    cells = _fill_label_holes(cells)

    grow_mask = (cells > 0) | _per_pixel(planes["cell_border"], lambda p: p > params.cell_border_threshold)
    cells = _watershed(relief, cells, grow_mask)
    cells = _fill_label_holes(cells)
    return _raster_components_8(cells > 0, params.min_cell_area_px)


def label_nuclei(
    nuclei_pred: np.ndarray, cell_pred: np.ndarray, *, params: LabelParams = LabelParams()
) -> np.ndarray:
    """Label nuclei as the first stage of :func:`label_cell` does (before cells exist).

    Seeds are confident nuclear interior away from both networks' borders; the nuclear mask is
    flooded from them with a watershed line between touching nuclei.

    Parameters
    ----------
    nuclei_pred, cell_pred : (H, W, 3) uint8 or float ndarray
        Nuclei- and cell-network maps (channel 1 border, channel 2 interior); see the module
        docstring for the dtype rules. Not modified.
    params : LabelParams
        Cut-offs in pixels at the resolution of the maps.

    Returns
    -------
    (H, W) uint16 ndarray (uint32 above 65535 nuclei) of ids 1..N in raster order, 0 = background.
    Unlike hpacellseg's own ``label_nuclei`` (which compares 0..255 values with 0.15), these are the
    seeds ``label_cell`` grows cells from; the final nuclei of :func:`label_cell` differ.
    """
    planes, border_sum = _as_maps(nuclei_pred, cell_pred)
    return _finish(_nuclear_labels(planes, border_sum, params))


def label_cell(
    nuclei_pred: np.ndarray, cell_pred: np.ndarray, *, params: LabelParams = LabelParams()
) -> tuple[np.ndarray, np.ndarray]:
    """Label nuclei and cells from the two networks' maps, as hpacellseg 0.1.8 ``label_cell``.

    Parameters
    ----------
    nuclei_pred, cell_pred : (H, W, 3) uint8 or float ndarray
        Nuclei- and cell-network maps in hpacellseg's layout (channel 1 border, channel 2
        interior; channel 0 ignored). uint8 holds probability * 255; float holds probability in
        [0, 1]. A uint8 map ``u`` and the float64 map ``u / 255`` give equal labels (except the
        uint8 border-sum wrap, kept for fidelity). Not modified.
    params : LabelParams
        Cut-offs in pixels at the resolution of the maps; ``LabelParams().scaled(0.25)`` for
        quarter-resolution maps. The full-resolution defaults on quarter maps find nothing.

    Returns
    -------
    nuclei_labels, cell_labels : (H, W) uint16 ndarrays (uint32 above 65535 cells)
        Cells have ids 1..N in raster order of their first pixel; a nucleus carries the id of its
        cell (``nuclei_labels == k`` lies inside ``cell_labels == k``); 0 is background. A cell
        may have no nucleus.

    Examples
    --------
    >>> maps = np.zeros((64, 64, 3))
    >>> maps[8:40, 8:40, 2] = 1.0  # one square cell whose interior is all nucleus
    >>> nuclei, cells = label_cell(maps, maps, params=LabelParams().scaled(0.25))
    >>> int(cells.max()), cells.dtype.name, bool((nuclei == cells).all())
    (1, 'uint16', True)
    """
    planes, border_sum = _as_maps(nuclei_pred, cell_pred)
    nuclei = _nuclear_labels(planes, border_sum, params)
    cells = _cell_labels(planes, nuclei, params)

    # Only which pixels survive matters here, not the component ids.
    on_cells, areas = _component_areas_8((cells > 0) & (nuclei > 0))
    keep = areas >= params.min_nucleus_area_px
    keep[0] = False
    dtype = relabel_dtype(int(cells.max(initial=0)))
    cells = cells.astype(dtype)
    nuclei_out = np.where(np.take(keep, on_cells), cells, 0).astype(dtype)
    return nuclei_out, cells
