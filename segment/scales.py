"""One notion of scale for ``cellcls segment``, and a check of the cells found against HPA's sizes.

Two numbers describe the pixels a segmentation sees, both relative to real full-resolution HPA
images (a 2048² Kaggle image is 1):

- ``image_scale``: the pixel size of the stored images (1 for Kaggle / HPA data; 0.25 for the
  synthetic world, whose images are quarter-size fields; read from ``world.json``);
- ``scale``: the resize applied to them before segmentation.

Their product, the *effective scale*, is the resolution the networks see and the one the
labelling cut-offs are scaled to. The 2021 solutions ran the networks at 1/4 of HPA's
resolution ("faster HPA cell segmentation", HPA_FACTS §4), so ``--scale auto`` picks
``scale = 0.25 / image_scale``: 0.25 for Kaggle images, 1 for the synthetic world.

After a run, :func:`check_cell_sizes` compares the cells found with what HPA cells look like at
that scale and returns loud warnings (with the likely cause) when most images have no cells or
the typical cell is far too small or too large: the usual sign that the scales do not describe
the images.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import numpy as np

__all__ = [
    "TARGET_EFFECTIVE_SCALE",
    "HPA_MIN_CELL_AREA_PX",
    "HPA_TYPICAL_CELL_AREA_PX",
    "ScaleChoice",
    "CellSizes",
    "resolve_scale",
    "describe_resolution",
    "check_cell_sizes",
    "measure_cell_sizes",
]

#: Resolution the networks see by default, relative to HPA full resolution (the "faster HPA cell
#: segmentation" path of the 2021 solutions: channels resized to 1/4 before the networks).
TARGET_EFFECTIVE_SCALE = 0.25

#: label_cell's cell cut-off at full resolution (HPA_FACTS §4): smaller cells are removed, so no
#: cell the hpa or classical backend keeps is smaller than this x effective_scale².
HPA_MIN_CELL_AREA_PX = 5500

#: Full-resolution area below which the 7th-place 2021 solution already treated an interior cell
#: as small and down-weighted it (HPA_FACTS §8): an ordinary HPA cell is at least this big, i.e.
#: ~6x the cut-off above.
HPA_TYPICAL_CELL_AREA_PX = 32_000

# The band the median cell area (median over images of each image's median, in pixels at the
# segmentation scale s) must lie in. It is derived from the facts above, not tuned on the
# synthetic world, and kept wide so that a plausible run never warns:
#
# - too small: median < 2 x the cut-off (5500 s²). label_cell drops every cell below the
#   cut-off, so a median "below the cut-off" cannot happen; what happens instead, when cells are
#   smaller than the scales claim, is that most of them are dropped and the survivors sit just
#   above the cut-off. Ordinary HPA cells are >= ~6x the cut-off, so a median within 2x of it
#   means the cut-off is eating the distribution.
# - too large: median > 100 x the cut-off. The common mistake, full-size images taken for
#   quarter-size ones (or the reverse), is a factor 4 in side = 16 in area; 16 x an ordinary
#   cell (~6x the cut-off) is ~100x the cut-off.
# - too coarse: median < the cut-off at 1/4 resolution (344 px), whatever s is. The typical
#   cell then has fewer pixels than the SMALLEST cell HPA keeps at the resolution its networks
#   are run at: the images were shrunk below what the networks (and the labelling radii, which
#   round to 0-2 px there) can resolve. For s >= 0.18 the "too small" rule already covers it.
# - empty: no cell in more than half of the images.
_SMALL_FACTOR = 2.0
_LARGE_FACTOR = 100.0
_EMPTY_FRACTION = 0.5


@dataclass(frozen=True)
class ScaleChoice:
    """The scales of a run and where each came from.

    Attributes
    ----------
    scale : resize factor applied to the stored images before segmentation.
    image_scale : pixel size of the stored images relative to HPA full resolution.
    scale_from, image_scale_from : where each value came from ("auto", "--scale", a world.json path...).
    """

    scale: float
    image_scale: float
    scale_from: str
    image_scale_from: str

    @property
    def effective_scale(self) -> float:
        """Pixel size of the segmented images relative to HPA full resolution."""
        return self.scale * self.image_scale

    def sentence(self) -> str:
        """One sentence: the resolution the networks see relative to HPA, and why."""
        if self.scale_from == "auto":
            how = f"--scale auto = {self.scale:g}"
        else:
            how = f"--scale {self.scale:g}"
        return (f"segmenting at {describe_resolution(self.effective_scale)} "
                f"({how} x image scale {self.image_scale:g} from {self.image_scale_from})")


@dataclass(frozen=True)
class CellSizes:
    """What the cells of a run look like (input of :func:`check_cell_sizes`).

    Attributes
    ----------
    cell_counts : cells found in each segmented image.
    median_areas_px : median cell area of each image that has cells (possibly a sample of them),
        in pixels at the segmentation scale.
    """

    cell_counts: tuple[int, ...]
    median_areas_px: tuple[float, ...]

    @property
    def median_area_px(self) -> float:
        """Median over images of the per-image median cell area (NaN when no image has cells)."""
        return float(np.median(self.median_areas_px)) if self.median_areas_px else math.nan

    @property
    def empty_images(self) -> int:
        return sum(1 for n in self.cell_counts if n == 0)

    def describe(self) -> str:
        """One line for the run summary."""
        if not self.cell_counts:
            return "cell sizes: no segmented image to measure"
        area = f"{self.median_area_px:.0f} px" if self.median_areas_px else "n/a"
        return (f"cell sizes: median cell area {area} at segmentation scale, "
                f"{self.empty_images} of {len(self.cell_counts)} image(s) without cells")


def describe_resolution(scale: float) -> str:
    """Words for an effective scale: ``0.25 -> "1/4 of HPA's resolution"``, ``1 -> "HPA's full
    resolution"``, ``2 -> "2x HPA's resolution"``, ``0.3 -> "3/10 of HPA's resolution"`` (a fraction when one with a
    denominator <= 64 is exact, else the decimal)."""
    if abs(scale - 1) < 1e-9:
        return "HPA's full resolution"
    if scale > 1:
        return f"{scale:g}x HPA's resolution"
    fraction = Fraction(scale).limit_denominator(64)
    text = f"{fraction.numerator}/{fraction.denominator}" if abs(float(fraction) - scale) < 1e-9 else f"{scale:g}"
    return f"{text} of HPA's resolution"


def resolve_scale(scale: str | float, *, image_scale: float, image_scale_from: str) -> ScaleChoice:
    """Turn ``--scale`` (``"auto"`` or a number) into a :class:`ScaleChoice`.

    ``auto`` = ``TARGET_EFFECTIVE_SCALE / image_scale``: the resize that brings the images to 1/4
    of HPA's resolution (0.25 for Kaggle images, 1 for the quarter-size synthetic world; above 1,
    i.e. enlarging, for images smaller still). An explicit number is used as given.
    """
    if not image_scale > 0:
        raise ValueError(f"image_scale must be > 0, got {image_scale!r}")
    if scale == "auto":
        return ScaleChoice(TARGET_EFFECTIVE_SCALE / float(image_scale), float(image_scale), "auto", image_scale_from)
    value = float(scale)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"--scale must be > 0 or 'auto', got {scale!r}")
    return ScaleChoice(value, float(image_scale), "--scale", image_scale_from)


def check_cell_sizes(sizes: CellSizes, choice: ScaleChoice) -> list[str]:
    """Warnings (possibly none) about cells that do not look like HPA cells at ``choice``'s scale.

    Pure: no I/O. Each warning says what was seen, what HPA cells look like at this scale, and
    the likely cause (which of --scale / --image-scale, and what to try). The limits and where
    they come from are in the comment above ``_SMALL_FACTOR``.
    """
    n_images = len(sizes.cell_counts)
    if n_images == 0:
        return []
    s = choice.effective_scale
    at = describe_resolution(s)
    cut_px = HPA_MIN_CELL_AREA_PX * s * s
    typical_px = HPA_TYPICAL_CELL_AREA_PX * s * s
    quarter_cut_px = HPA_MIN_CELL_AREA_PX * TARGET_EFFECTIVE_SCALE**2
    hpa = (f"where HPA cells are >= {cut_px:.0f} px (label_cell drops smaller ones) and typically "
           f">= {typical_px:.0f} px")
    warnings: list[str] = []
    if sizes.empty_images > _EMPTY_FRACTION * n_images:
        warnings.append(f"no cells found in {sizes.empty_images} of {n_images} image(s) segmented at {at}. "
                        f"{_cause_small(choice)}")
    median = sizes.median_area_px
    if math.isnan(median):
        return warnings
    seen = f"median cell area {median:.0f} px at the segmentation scale, {at}"
    if median < _SMALL_FACTOR * cut_px:
        warnings.append(f"{seen}, {hpa}: the cells are smaller than the scales say. {_cause_small(choice)}")
    elif median < quarter_cut_px:
        warnings.append(f"{seen}: below {quarter_cut_px:.0f} px, the smallest cell HPA keeps at 1/4, where its "
                        f"networks run; cells this small are not resolved. {_cause_coarse(choice)}")
    elif median > _LARGE_FACTOR * cut_px:
        warnings.append(f"{seen}, {hpa}: the cells look ~{median / typical_px:.0f}x larger than HPA's. "
                        f"{_cause_large(choice)}")
    return warnings


def _flags(choice: ScaleChoice) -> str:
    scale = "--scale auto" if choice.scale_from == "auto" else f"--scale {choice.scale:g}"
    return f"{scale} with image scale {choice.image_scale:g} from {choice.image_scale_from}"


def _cause_small(choice: ScaleChoice) -> str:
    if choice.effective_scale < TARGET_EFFECTIVE_SCALE / 2:
        return _cause_coarse(choice)
    return (f"{_flags(choice)} probably does not match these images: if their pixels are larger than HPA's "
            "(downsized images, a synthetic world without its world.json), give --image-scale = their pixel "
            "size relative to HPA (0.25 for quarter-size); also check that they are HPA-like fields "
            "(blue = nuclei)")


def _cause_coarse(choice: ScaleChoice) -> str:
    return (f"{_flags(choice)} shrinks the images to "
            f"{describe_resolution(choice.effective_scale)}: drop --scale (auto segments at 1/4, here --scale "
            f"{TARGET_EFFECTIVE_SCALE / choice.image_scale:g})")


def _cause_large(choice: ScaleChoice) -> str:
    return (f"{_flags(choice)} probably does not match these images: their pixels look smaller than that "
            "image scale says (full-size images taken for quarter-size ones?); give --image-scale 1 for "
            "HPA/Kaggle-size pixels, or remove a stray world.json beside the images")


def measure_cell_sizes(
    cache_dir: str | os.PathLike,
    *,
    params_hash: str,
    ids: Iterable[str] | None = None,
    max_images: int = 48,
) -> CellSizes:
    """Cell counts and median cell areas of the cache entries made with ``params_hash``.

    Counts come from the manifest (every "ok" entry of that key, limited to ``ids`` when given);
    areas from at most ``max_images`` of the entries with cells, spread evenly over the sorted
    IDs, read at segmentation scale (a bounded cost: ~ms per 512² entry).
    """
    from cellcls.errors import CacheError
    from cellcls.masks import MaskCache

    cache = MaskCache(cache_dir)
    manifest = cache.manifest()
    rows = manifest[(manifest["status"] == "ok") & (manifest["params_hash"] == params_hash)]
    if ids is not None:
        rows = rows[rows["ID"].isin(set(ids))]
    counts = tuple(int(n) for n in rows["n_cells"].fillna(0))
    with_cells = sorted(rows.loc[rows["n_cells"].fillna(0) > 0, "ID"])
    if len(with_cells) > max_images:
        picks = np.linspace(0, len(with_cells) - 1, max_images).round().astype(int)
        with_cells = [with_cells[i] for i in dict.fromkeys(picks.tolist())]
    medians = []
    for image_id in with_cells:
        try:
            cells = cache.read(image_id).cells
        except CacheError:  # damaged since the manifest was written: the next run redoes it
            continue
        areas = np.bincount(cells.ravel())[1:]
        areas = areas[areas > 0]
        if areas.size:
            medians.append(float(np.median(areas)))
    return CellSizes(counts, tuple(medians))
