"""One synthetic image with per-cell ground truth: :func:`make_sample`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..classes import NEGATIVE
from .geometry import CELL_LINES, CellLine, layout_cells
from .proteins import MITOTIC_SPINDLE, Protein, assign_cell_labels, draw_acquisition, draw_image_shares, draw_protein
from .render import acquire, render_objects
from .shapes import cell_shape
from .variants import DEFAULT_VARIANT, RENDERERS, WorldVariant, mix_weights, side_stream

__all__ = ["SynthSample", "make_sample", "render_sample", "draw_density", "image_labels_from_cells"]

_PATTERN_SALT = 0x9A77E2  # seeds the green stream of a non-default renderer


@dataclass(frozen=True)
class SynthSample:
    """A synthetic HPA-like image and its truth.

    Attributes
    ----------
    image : (H, W, 4) uint8 or uint16, RGBY order (:data:`cellcls.classes.CHANNELS`).
    cells : (H, W) uint16 instance map, 0 = background, cell ids 1..N.
    nuclei : (H, W) uint16, nucleus pixels carry their cell's id.
    cell_labels : class ids each cell shows, keyed by cell id (Negative = ``(18,)``).
    image_labels : the weak image-level label: sorted union of the cell labels, Negative
        dropped unless no cell shows a protein (see :func:`image_labels_from_cells`).
    scale : pixel size relative to a full-resolution HPA image (0.25 = quarter resolution).
    """

    image: np.ndarray
    cells: np.ndarray
    nuclei: np.ndarray
    cell_labels: dict[int, tuple[int, ...]]
    image_labels: tuple[int, ...]
    scale: float

    @property
    def n_cells(self) -> int:
        return len(self.cell_labels)


def image_labels_from_cells(cell_labels: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """The weak image label: union of the cells' classes, Negative only when no cell shows anything.

    As in the real train set, where Negative (18) is an image label only for images without
    any detected protein, a positive image's unstained cells do not make it Negative; their
    cell truth still says ``(18,)``. An image without cells has the empty label ``()``.
    """
    union = set().union(*cell_labels) if len(cell_labels) else set()
    if len(union) > 1:
        union.discard(NEGATIVE)
    return tuple(sorted(union))


def draw_density(rng: np.random.Generator) -> float:
    """Cells per 2048 x 2048 full-resolution field: sparse (~10) to dense (~45) images."""
    return float(rng.uniform(10, 45))


def render_sample(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int],
    scale: float,
    protein: Protein,
    line: CellLine,
    bit_depth: int = 8,
    density: float | None = None,
    variant: WorldVariant | None = None,
) -> SynthSample:
    """Draw one image of ``protein`` in cell line ``line``; see :func:`make_sample`.

    ``variant`` draws the cell shapes, green patterns and Negative share differently (its class
    mix is used where the protein is drawn); None = the default world's drawing.
    """
    v = DEFAULT_VARIANT if variant is None else variant
    density = draw_density(rng) if density is None else float(density)
    shares = draw_image_shares(rng, protein.pattern_set, non_expressing=v.negative_share)
    if MITOTIC_SPINDLE in protein.pattern_set:
        # the spindle's share is the share of dividing cells: 2-10 % of the expected cells, at least one
        expected_cells = density * (shape[0] / scale) * (shape[1] / scale) / 2048.0**2
        n_dividing = max(1, int(round(shares.per_class[MITOTIC_SPINDLE] * expected_cells)))
    else:
        n_dividing = int(rng.random() < 0.15)
    for _ in range(6):  # an image without any cell is useless: draw again, denser
        layout = layout_cells(rng, shape, scale=scale, line=line, density=density, n_dividing=n_dividing, form=cell_shape(v.cell_shape))
        if layout.specs:
            break
        density *= 1.5
    dividing = [s.dividing for s in layout.specs]
    labels = assign_cell_labels(rng, protein.pattern_set, dividing, shares=shares, alternate=protein.alternate)
    if v.renderer == DEFAULT_VARIANT.renderer:
        objects = render_objects(rng, layout, labels, scale=scale, style=protein.style)
    else:  # other green textures from a stream of their own: every other channel stays the same
        objects = render_objects(
            rng, layout, labels, scale=scale, style=protein.style,
            patterns=RENDERERS.get(v.renderer), pattern_rng=side_stream(rng, _PATTERN_SALT),
        )
    image = acquire(rng, objects, scale=scale, settings=draw_acquisition(rng, protein), bit_depth=bit_depth)
    cell_labels = {i: lab for i, lab in enumerate(labels, start=1)}
    union = image_labels_from_cells(labels)
    return SynthSample(
        image=image, cells=layout.cells, nuclei=layout.nuclei, cell_labels=cell_labels, image_labels=union, scale=float(scale)
    )


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(int(seed))


def make_sample(
    seed: int | np.random.Generator,
    *,
    size_px: tuple[int, int] = (512, 512),
    scale: float = 0.25,
    labels: Sequence[int] | None = None,
    bit_depth: int = 8,
    density: float | None = None,
    variant: WorldVariant | None = None,
) -> SynthSample:
    """One synthetic HPA-like image with per-cell truth.

    Parameters
    ----------
    seed : int or numpy Generator. The same int gives the same sample bit for bit.
    size_px : (H, W) of the image in pixels at ``scale``.
    scale : pixel size relative to full-resolution HPA (1.0 = a 2048 x 2048 image's pixel;
        0.25 = quarter resolution). Cells are ~20,000-60,000 * scale**2 px.
    labels : the protein's pattern set (class ids); None draws one with frequencies shaped
        like the real train counts (and, a third of the time, an alternate class a few cells
        show). Negative (18) only alone. With ``labels`` given, every cell shows a subset of
        them or is Negative: each class is shown by a class-dependent share of the cells
        (:data:`~cellcls.synth.proteins.CELL_SHARE`) and some cells express nothing callable;
        ``image_labels`` is what the cells show.
    bit_depth : 8 (uint8) or 16 (uint16, using the full 16-bit range).
    density : expected cells per 2048 x 2048 full-resolution field (real: ~10-45); None draws one.
    variant : draw the image differently (:func:`cellcls.synth.variants.resolve_variant`: cell
        shape, green renderer, class mix of a drawn pattern set, Negative share); None = default.

    Returns
    -------
    SynthSample

    Examples
    --------
    >>> s = make_sample(0, size_px=(256, 256), labels=(0, 16))
    >>> s.image.shape, s.image.dtype.name
    ((256, 256, 4), 'uint8')
    """
    h, w = (int(x) for x in size_px)
    if h < 16 or w < 16:
        raise ValueError(f"size_px must be at least 16 x 16, got {size_px}")
    if not 0.05 <= float(scale) <= 2.0:
        raise ValueError(f"scale must be in [0.05, 2] (relative to full-resolution HPA pixels), got {scale}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    rng = _as_rng(seed)
    v = DEFAULT_VARIANT if variant is None else variant
    protein = draw_protein(rng, "sample", labels, weights=mix_weights(v.class_mix))
    line = CELL_LINES[int(rng.integers(len(CELL_LINES)))]
    return render_sample(
        rng, shape=(h, w), scale=float(scale), protein=protein, line=line, bit_depth=bit_depth, density=density, variant=v
    )
