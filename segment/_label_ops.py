"""Image primitives of :mod:`segment.labelling`, each exactly equal to the scipy / skimage call
that hpacellseg's ``label_cell`` makes, only faster.

Every function documents the call it stands for and why the result is the same array (ids and
their order included): the Kaggle ground truth was made with those calls, so "close" is not
enough. ``tests/test_labelling.py`` checks each against the library call it replaces.
"""
from __future__ import annotations

import numpy as np


def _per_pixel(plane: np.ndarray, predicate) -> np.ndarray:
    """``predicate(probability)`` per pixel (bool), for uint8 (``u / 255``) or float64 planes.

    A uint8 plane has only 256 levels, so the predicate is evaluated once per level on
    ``level / 255.0`` (the very float64 the original compares) and the table is looked up: the
    same result per pixel as dividing the whole plane, without the float64 image. Monotone
    tables (all thresholds here) become a single uint8 comparison.
    """
    if plane.dtype != np.uint8:
        return np.asarray(predicate(plane), dtype=bool)
    table = np.asarray(predicate(np.arange(256) / 255.0), dtype=bool)
    levels = np.flatnonzero(table)
    if levels.size in (0, 256):
        return np.full(plane.shape, bool(levels.size))
    if levels[-1] == 255 and levels.size == 256 - levels[0]:  # levels[0]..255
        return plane >= levels[0]
    if levels[0] == 0 and levels.size == levels[-1] + 1:  # 0..levels[-1]
        return plane <= levels[-1]
    return np.take(table, plane)


def _relief(interior: np.ndarray) -> np.ndarray:
    """The cell watersheds' image: the original's ``-interior``, or an exact stand-in.

    For uint8, ``255 - u`` orders and ties pixels exactly as ``-(u / 255)`` (both strictly
    decreasing in ``u``); the watershed only compares values and takes maxima, so the flooding
    is the same, without dividing and negating a float64 image.
    """
    if interior.dtype == np.uint8:
        return 255 - interior
    return -interior


def _label4(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a bool mask: ``scipy.ndimage.label(mask)``'s int32 ids and count.

    OpenCV's 4-connected scan (SAUF) is pixel-based: provisional labels arise in raster order and
    each component keeps its smallest, so the final ids are scipy's (raster order of the first
    pixel), 2-3x faster. (Its 8-connected scans work on 2x2 blocks and number components in
    block order, which differs: see :func:`_raster_components_8`.)
    """
    import cv2

    count, labels = cv2.connectedComponents(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity=4, ltype=cv2.CV_32S
    )
    return labels, int(count) - 1


def _component_areas_8(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a bool mask and their areas (index 0 = background).

    The ids are OpenCV's (not raster order): use only where the numbering is thrown away.
    """
    import cv2

    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    return labels, stats[:, cv2.CC_STAT_AREA]


def _raster_components_8(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """8-connected components of at least ``min_area_px`` px, ids 1..K in raster order (int32).

    Equals ``scipy.ndimage.label`` with a 3x3 square, dropping the small components and
    renumbering the rest in id order, in about half the time. OpenCV numbers components in its
    own (2x2-block) order, so they are re-sorted by their first pixel in raster order: it lies
    in the component's top row, and it is the component's first pixel among the top rows of all
    components taken in row order (no component has a pixel above its own top row).
    """
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(mask, dtype=bool).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    top_rows = labels[np.unique(stats[1:, cv2.CC_STAT_TOP])].ravel()
    present = np.flatnonzero(top_rows)
    ids, first = np.unique(top_rows[present], return_index=True)  # ids == 1..count-1
    raster_order = ids[np.argsort(first)]
    kept = raster_order[stats[raster_order, cv2.CC_STAT_AREA] >= min_area_px]
    lut = np.zeros(count, dtype=np.int32)
    lut[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    return np.take(lut, labels)


#: skimage (major, minor) versions whose private watershed internals were checked against the public
#: function (tests/test_labelling.py); any other version takes the public path, so a changed private
#: API can never change masks silently.
VERIFIED_SKIMAGE_VERSIONS = frozenset({(0, 26)})


def _private_watershed_verified() -> bool:
    import skimage

    major_minor = tuple(int(part) for part in skimage.__version__.split(".")[:2])
    return major_minor in VERIFIED_SKIMAGE_VERSIONS


def _watershed(
    image: np.ndarray | None, markers: np.ndarray, mask: np.ndarray, *, line: bool = False
) -> np.ndarray:
    """``skimage.segmentation.watershed(image, markers, mask=mask, watershed_line=line)``.

    ``image=None`` stands for a flat image (one value wherever ``mask`` holds), which is all
    the flooding ever reads: no image is built.

    Calls skimage's own flooding kernel with the inputs its wrapper would build (same padding,
    neighbour order, marker order and dtypes), so the result is the same array; it only skips the
    wrapper's extra full-image copies (~3 ms per call at 512²). Falls back to the public function
    if skimage's private layout is not there. ``tests/test_labelling.py`` checks the two agree.
    Returns a view into a padded buffer, of ``markers``' dtype.
    """
    try:
        if not _private_watershed_verified():
            raise ImportError("skimage version not verified for the private flooding kernel")
        from skimage.morphology._util import _offsets_to_raveled_neighbors, _validate_connectivity
        from skimage.segmentation import _watershed_cy
    except ImportError:  # another skimage: the public function, exact by definition, ~3 ms slower
        from skimage.segmentation import watershed

        flat = np.zeros(mask.shape) if image is None else image
        return watershed(flat, markers, mask=mask, watershed_line=line)
    shape = (mask.shape[0] + 2, mask.shape[1] + 2)
    inner = (slice(1, -1), slice(1, -1))
    padded_image = np.zeros(shape, dtype=np.float64)
    if image is not None:
        padded_image[inner] = image
    padded_mask = np.zeros(shape, dtype=np.int8)
    padded_mask[inner] = mask
    output = np.zeros(shape, dtype=markers.dtype)
    np.multiply(markers, mask, out=output[inner])  # markers outside the mask are dropped
    footprint, offset = _validate_connectivity(2, 1, None)
    neighbours = _offsets_to_raveled_neighbors(shape, footprint, center=offset)
    strides = np.array(padded_image.strides, dtype=np.intp) // padded_image.itemsize
    _watershed_cy.watershed_raveled(
        padded_image.ravel(), np.flatnonzero(output != 0), neighbours, padded_mask.ravel(), strides,
        0, output.ravel(), line,
    )
    return output[inner]


def _id_areas(labels: np.ndarray) -> np.ndarray:
    """Pixel count of every id 0..max (``np.bincount``), except that id 0 is left at 0.

    Sparse label images are counted from their labelled pixels only (4x faster at 10 % cover).
    """
    labelled = int(np.count_nonzero(labels))
    if labelled > labels.size // 2:
        areas = np.bincount(labels.ravel())
    else:
        areas = np.bincount(labels[labels != 0], minlength=int(labels.max(initial=0)) + 1)
    areas[0] = 0
    return areas


def _keep_ids(labels: np.ndarray, keep: np.ndarray, *, renumber: bool) -> np.ndarray:
    """Zero the ids whose ``keep`` entry is False; optionally renumber kept ids 1..K in id order.

    ``keep`` has one entry per id 0..max (entry 0 is ignored). Renumbering numbers every kept
    entry, so keep only ids that occur (as :func:`_drop_small_ids` does) for the result to be
    ``skimage.segmentation.relabel_sequential``'s.
    """
    keep = keep.copy()
    keep[0] = False
    if keep[1:].all() and (not renumber or keep.size == int(labels.max(initial=0)) + 1):
        return labels  # nothing to drop and the ids are already 1..K: skip a full-image pass
    if renumber:
        lut = np.zeros(keep.size, dtype=np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1)
    else:
        lut = np.where(keep, np.arange(keep.size, dtype=np.int32), 0)
    return np.take(lut, labels)  # = lut[labels], faster for large images


def _drop_small_ids(labels: np.ndarray, min_area_px: int, *, renumber: bool = False) -> np.ndarray:
    """Zero every id (any shape, each id one object) covering fewer than ``min_area_px`` pixels.

    ``skimage.morphology.remove_small_objects(labels, max_size=min_area_px - 1)``, followed with
    ``renumber`` by ``relabel_sequential``: ids that do not occur are never kept, so the kept ones
    become exactly 1..K (also for ``min_area_px`` 0).
    """
    sizes = _id_areas(labels)
    return _keep_ids(labels, sizes >= max(min_area_px, 1), renumber=renumber)


def _drop_small_components(mask: np.ndarray, min_area_px: int) -> np.ndarray:
    """``mask`` without its 4-connected components smaller than ``min_area_px`` (bool)."""
    if min_area_px <= 1:
        return mask.copy()
    labels, _ = _label4(mask)
    sizes = _id_areas(labels)
    keep = sizes >= min_area_px
    if keep[1:].all():
        return mask.copy()  # nothing to drop: skip a full-image pass
    keep[0] = False
    return np.take(keep, labels)


def _fill_small_holes(mask: np.ndarray, max_hole_area_px: int) -> np.ndarray:
    """Fill 4-connected background components smaller than ``max_hole_area_px``, edge ones too."""
    return ~_drop_small_components(~mask, max_hole_area_px)


def _fill_enclosed_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` (4-connected background): fill what the edge cannot reach."""
    background, count = _label4(~mask)
    if count == 0:
        return mask.copy()
    reaches_edge = np.zeros(count + 1, dtype=bool)
    for edge in (background[0, :], background[-1, :], background[:, 0], background[:, -1]):
        reaches_edge[edge] = True
    if reaches_edge[1:].all():
        return mask.copy()  # no hole: skip a full-image pass
    reaches_edge[0] = False
    return np.take(~reaches_edge, background)


def _thick_boundaries(labels: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.find_boundaries(labels, mode='thick')``: pixels whose 4-neighbourhood
    holds another value (background included)."""
    vertical = labels[1:, :] != labels[:-1, :]
    horizontal = labels[:, 1:] != labels[:, :-1]
    out = np.zeros(labels.shape, dtype=bool)
    out[1:, :] |= vertical
    out[:-1, :] |= vertical
    out[:, 1:] |= horizontal
    out[:, :-1] |= horizontal
    return out


def _fill_label_holes(labels: np.ndarray) -> np.ndarray:
    """The original's ``__fill_holes``: cut the thick boundaries, fill holes, relabel 4-connected."""
    interior = (labels > 0) & ~_thick_boundaries(labels)
    return _label4(_fill_enclosed_holes(interior))[0]


def _disk(radius_px: int) -> np.ndarray:
    """``skimage.morphology.disk(radius_px)`` as uint8 (rows/cols with x² + y² <= r²)."""
    span = np.arange(-radius_px, radius_px + 1)
    return (span[:, None] ** 2 + span[None, :] ** 2 <= radius_px**2).astype(np.uint8)


def _grey_closing(labels: np.ndarray, radius_px: int) -> np.ndarray:
    """Grey-level closing of a label image with a disk.

    Equals ``skimage.morphology.closing(labels, disk(r))``: its default 'reflect' border only
    mirrors pixels already inside a centred convex symmetric footprint, which is OpenCV's
    default of ignoring outside pixels.
    """
    import cv2

    if radius_px == 0:
        return labels.copy()
    kernel = _disk(radius_px)
    work_dtype = np.uint16 if int(labels.max(initial=0)) < 65536 else np.float64
    work = labels.astype(work_dtype)
    closed = cv2.erode(cv2.dilate(work, kernel), kernel)
    return closed.astype(labels.dtype)
