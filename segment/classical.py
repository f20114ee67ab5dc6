"""Weight-free cell segmentation: classical image processing feeding :func:`label_cell`.

For machines without the HPA-Cell-Segmentation weights (the demo, CI): the marker channels are
turned into pseudo-probability maps in hpacellseg's layout, then labelled by the very
:func:`segment.labelling.label_cell` that post-processes the networks, so both backends share
one labelling path, its size cut-offs and its conventions (same id = same cell, nuclei
restricted to cells, uint16 ids 1..N in raster order).

The maps (all at the image's resolution; channels are first stretched between their 1st and
99.5th percentiles, so gain and offset do not matter):

- nuclear interior: blue, smoothed, above its Otsu threshold, holes < ``max_hole_area_px`` filled;
- nuclear border: a rim ``nuclear_rim_px`` wide inside each nucleus, so that the seeds are the
  nuclei's cores and nuclei touching through a neck get one seed each;
- cell interior: 0 in the background; in the foreground (smoothed red + yellow + blue above its
  Otsu threshold, plus the nuclei) a relief in [0.55, 1], highest at the nuclei and falling
  towards the cells' edges (smoothed signal blended with closeness to the nearest nucleus), so
  the seeded watershed splits touching cells along the valleys between them. Its floor of 0.55
  keeps ``label_cell``'s own threshold (``max(0.22, otsu * 0.5)`` <= 0.5) below every
  foreground pixel, so the cell mask is exactly this foreground;
- cell border: 0.5 on the dim margin (signal above ``margin_factor`` of the threshold, outside
  the foreground), into which the second watershed may grow existing cells (hysteresis).

Large enclosed holes are NOT filled: background ringed by touching cells stays background.
On the synthetic world (``cellcls.synth``) cell F1 at IoU 0.6 is ~0.97 (tests/test_classical.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from dataclasses import dataclass, field

import numpy as np

from .labelling import LabelParams, label_cell

__all__ = ["ClassicalParams", "pseudo_probability_maps", "segment_classical"]

_RED, _GREEN, _BLUE, _YELLOW = 0, 1, 2, 3

# Bump when the pseudo-probability maps change their output: part of ClassicalParams.hash().
_BACKEND_VERSION = "classical/1"


@dataclass(frozen=True)
class ClassicalParams:
    """Tunables of the classical backend; lengths in full-resolution HPA pixels.

    Attributes
    ----------
    nuclei_smooth_px : Gaussian sigma applied to the blue channel before thresholding.
    cell_smooth_px : Gaussian sigma applied to the cytoplasm signal before thresholding.
    relief_smooth_px : Gaussian sigma of the cytoplasm signal used as the watershed relief.
    nuclear_rim_px : width of the nuclear rim excluded from the seeds.
    nucleus_weight : how much distance to the nearest nucleus shapes the relief, in [0, 1]
        (0: the smoothed signal alone; 1: distance alone, a Voronoi split).
    distance_scale_px : decay length of the distance term.
    max_hole_area_px : holes in the nuclear and foreground masks smaller than this are filled.
    margin_factor : the cell border map marks signal above this fraction of the foreground
        threshold; cells may grow into it.
    labels : the labelling parameters at full resolution (scaled with the image's ``scale``).
    """

    nuclei_smooth_px: float = 4.0
    cell_smooth_px: float = 8.0
    relief_smooth_px: float = 16.0
    nuclear_rim_px: float = 12.0
    nucleus_weight: float = 0.3
    distance_scale_px: float = 60.0
    margin_factor: float = 0.5
    max_hole_area_px: float = 2000.0
    labels: LabelParams = field(default_factory=LabelParams)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name == "labels":
                if not isinstance(self.labels, LabelParams):
                    raise ValueError(f"ClassicalParams.labels must be a LabelParams, got {self.labels!r}")
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value < 0:
                raise ValueError(f"ClassicalParams.{f.name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.nucleus_weight <= 1.0:
            raise ValueError(f"ClassicalParams.nucleus_weight must be in [0, 1], got {self.nucleus_weight}")

    def to_dict(self) -> dict:
        """The fields as a plain dict (``labels`` nested), JSON-serialisable."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hex digest (sha256) of the fields and the backend version: a cache key."""
        payload = {"backend": _BACKEND_VERSION, "params": self.to_dict(), "labels": self.labels.hash()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _validate_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"image must be (H, W, 4) in RGBY order, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(
            f"image must be float in [0, 1], got {image.dtype}; divide by the dtype's maximum "
            "(255 for uint8, 65535 for uint16) first"
        )
    low, high = float(np.min(image)), float(np.max(image))
    if not (0.0 <= low and high <= 1.0):
        raise ValueError(f"image values must lie in [0, 1], got [{low}, {high}]")
    return image


def _blur(plane: np.ndarray, sigma_px: float) -> np.ndarray:
    import cv2

    plane = np.ascontiguousarray(plane, dtype=np.float32)
    if sigma_px < 0.3:
        return plane.copy()
    return cv2.GaussianBlur(plane, (0, 0), sigmaX=sigma_px, sigmaY=sigma_px, borderType=cv2.BORDER_REFLECT)


def _normalise(plane: np.ndarray) -> np.ndarray:
    """Stretch a channel so that its 1st percentile is 0 and its 99.5th is 1 (float32, clipped)."""
    # Every other row and column: a quarter of the work for the same stretch, deterministically.
    low, high = np.percentile(plane[::2, ::2], [1.0, 99.5])
    if high <= low:
        return np.zeros(plane.shape, np.float32)
    return np.clip((plane - low) / (high - low), 0.0, 1.0).astype(np.float32)


def _otsu(plane: np.ndarray) -> float:
    from skimage.filters import threshold_otsu

    if float(plane.min()) == float(plane.max()):
        return float(plane.max())  # a flat image has no foreground: nothing lies above it
    return float(threshold_otsu(plane))


def _fill_small_holes(mask: np.ndarray, max_area_px: float) -> np.ndarray:
    """Fill holes (4-connected background not reaching the edge) smaller than ``max_area_px``.

    Only small ones: a large enclosed hole is usually background ringed by touching cells.
    """
    from scipy import ndimage as ndi

    holes, count = ndi.label(~mask)
    if count == 0:
        return mask.copy()
    small = np.bincount(holes.ravel()) < max_area_px
    for edge in (holes[0, :], holes[-1, :], holes[:, 0], holes[:, -1]):
        small[edge] = False
    small[0] = False
    return mask | small[holes]


def _distance_inside(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of each mask pixel to the nearest non-mask pixel (float32)."""
    import cv2

    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)


def pseudo_probability_maps(
    image: np.ndarray, *, scale: float, params: ClassicalParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Classical stand-ins for the nuclei and cell networks' outputs.

    Parameters
    ----------
    image : (H, W, 4) float ndarray in [0, 1], RGBY order, at segmentation resolution.
    scale : pixel size relative to full-resolution HPA (0.25 for a 2048² field shown at 512²).
    params : tunables; ``ClassicalParams()`` by default.

    Returns
    -------
    nuclei_pred, cell_pred : (H, W, 3) float32 in [0, 1] in hpacellseg's layout (channel 0
    unused, 1 border, 2 interior), ready for :func:`label_cell`.
    """
    params = ClassicalParams() if params is None else params
    image = _validate_image(image)
    h, w = image.shape[:2]
    red = _normalise(image[..., _RED])
    yellow = _normalise(image[..., _YELLOW])
    blue = _normalise(image[..., _BLUE])

    nuclei_signal = _blur(blue, params.nuclei_smooth_px * scale)
    nuclei_mask = _fill_small_holes(nuclei_signal > _otsu(nuclei_signal), params.max_hole_area_px * scale**2)
    depth = _distance_inside(nuclei_mask)
    rim = nuclei_mask & (depth <= params.nuclear_rim_px * scale)

    cell_signal = _blur(red + yellow + blue, params.cell_smooth_px * scale)
    threshold = _otsu(cell_signal)
    foreground = _fill_small_holes((cell_signal > threshold) | nuclei_mask, params.max_hole_area_px * scale**2)
    margin = (cell_signal > params.margin_factor * threshold) & ~foreground

    relief = _blur(red + yellow + blue, params.relief_smooth_px * scale)
    relief = relief / max(float(relief[foreground].max(initial=0.0)), 1e-6)
    if params.nucleus_weight > 0:
        import cv2

        to_nucleus = cv2.distanceTransform((~nuclei_mask).astype(np.uint8), cv2.DIST_L2, 5)
        closeness = np.exp(-to_nucleus / max(params.distance_scale_px * scale, 1e-6))
        relief = (1 - params.nucleus_weight) * relief + params.nucleus_weight * closeness
    relief = np.clip(relief, 0.0, 1.0)

    nuclei_pred = np.zeros((h, w, 3), np.float32)
    nuclei_pred[..., 1] = rim
    nuclei_pred[..., 2] = nuclei_mask
    cell_pred = np.zeros((h, w, 3), np.float32)
    cell_pred[..., 1] = np.where(margin, 0.5, 0.0)
    cell_pred[..., 2] = np.where(foreground, 0.55 + 0.45 * relief, 0.0)
    return nuclei_pred, cell_pred


def segment_classical(
    image: np.ndarray, *, scale: float, params: ClassicalParams | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Segment nuclei and cells of an RGBY image without network weights.

    Parameters
    ----------
    image : (H, W, 4) float ndarray in [0, 1], RGBY order (red microtubules, green protein
        (unused), blue nuclei, yellow ER), at segmentation resolution. Not modified.
    scale : pixel size relative to full-resolution HPA: lengths and the label cut-offs of
        ``params`` (given at full resolution) are multiplied by it (areas by its square).
    params : tunables; ``ClassicalParams()`` by default.

    Returns
    -------
    nuclei_labels, cell_labels : (H, W) uint16 (uint32 above 65535 cells), as
    :func:`segment.labelling.label_cell`: cells 1..N in raster order, nuclei carry their cell's id.
    """
    params = ClassicalParams() if params is None else params
    if isinstance(scale, bool) or not (isinstance(scale, numbers.Real) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive number (pixel size relative to full resolution), got {scale!r}")
    nuclei_pred, cell_pred = pseudo_probability_maps(image, scale=scale, params=params)
    return label_cell(nuclei_pred, cell_pred, params=params.labels.scaled(scale))
