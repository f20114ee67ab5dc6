"""segment.labelling equals hpacellseg 0.1.8 ``label_cell`` on its fixture, and fixes its defects.

The fixture (tests/data/label_cell_fixture.npz, a copy of reference/label_cell_fixture.npz) holds
the real function's inputs and outputs at full resolution (stock constants) and at quarter
resolution (the "faster HPA cell segmentation" constants). Comparison as in its notes: equal
background, a bijection of cell ids, nuclei equal through that bijection.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import skimage

from segment.labelling import LabelParams, label_cell, label_nuclei

FIXTURE = Path(__file__).parent / "data" / "label_cell_fixture.npz"
CASES = ("case1", "case2", "case3", "case4")
QUARTER = LabelParams().scaled(0.25)
SKIMAGE_GE_0_25 = tuple(int(x) for x in skimage.__version__.split(".")[:2]) >= (0, 25)


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:  # no pickle needed
        yield {key: data[key] for key in data.files}


def expected(fixture: dict, case: str, res: str) -> tuple[np.ndarray, np.ndarray]:
    cell_key = f"{case}_{res}_cell_label"
    # skimage >= 0.25 breaks watershed plateau ties differently; the fixture stores that variant.
    if SKIMAGE_GE_0_25 and f"{cell_key}_skimage_ge_0_25" in fixture:
        cell_key += "_skimage_ge_0_25"
    return fixture[f"{case}_{res}_nuclei_label"], fixture[cell_key]


def assert_same_labelling(exp_nuclei, exp_cells, got_nuclei, got_cells) -> None:
    """Equal background, a bijection of cell ids, nuclei equal through it (fixture notes §3)."""
    assert got_cells.shape == exp_cells.shape and got_nuclei.shape == exp_nuclei.shape
    differing = int(((exp_cells == 0) != (got_cells == 0)).sum())
    assert differing == 0, f"cell background differs in {differing} px"
    fg = exp_cells > 0
    stride = int(got_cells.max()) + 1
    pairs = np.unique(exp_cells[fg].astype(np.int64) * stride + got_cells[fg])
    exp_ids, got_ids = np.divmod(pairs, stride)
    n_exp, n_got = np.unique(exp_ids).size, np.unique(got_ids).size
    assert pairs.size == n_exp == n_got, f"{pairs.size} id pairs for {n_exp} expected, {n_got} found cells"
    to_expected = np.zeros(stride, np.int64)
    to_expected[got_ids] = exp_ids
    mapped = to_expected[got_nuclei]
    assert np.array_equal(mapped, exp_nuclei), f"nuclei differ in {int((mapped != exp_nuclei).sum())} px"


def run_case(fixture: dict, case: str, res: str, params: LabelParams):
    nuclei_pred = fixture[f"{case}_{res}_nuclei_pred"]
    cell_pred = fixture[f"{case}_{res}_cell_pred"]
    return label_cell(nuclei_pred, cell_pred, params=params)


@pytest.mark.parametrize("case", CASES)
def test_quarter_resolution_equals_reference(fixture, case):
    nuclei, cells = run_case(fixture, case, "quarter", QUARTER)
    exp_nuclei, exp_cells = expected(fixture, case, "quarter")
    assert_same_labelling(exp_nuclei, exp_cells, nuclei, cells)
    assert cells.dtype == nuclei.dtype == np.uint16
    # The last relabel is raster-order labelling, so even the ids agree.
    assert np.array_equal(cells, exp_cells) and np.array_equal(nuclei, exp_nuclei)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_full_resolution_equals_reference(fixture, case):
    nuclei, cells = run_case(fixture, case, "full", LabelParams())
    exp_nuclei, exp_cells = expected(fixture, case, "full")
    assert_same_labelling(exp_nuclei, exp_cells, nuclei, cells)


@pytest.mark.parametrize("case", CASES)
def test_float_maps_u_over_255_give_the_same_labels(fixture, case):
    # Documented equivalence: uint8 u and float64 u / 255 label alike (the border sum's uint8
    # wrap aside, which touches 1 px of case2 without effect on the labels).
    nuclei_pred = fixture[f"{case}_quarter_nuclei_pred"] / 255.0
    cell_pred = fixture[f"{case}_quarter_cell_pred"] / 255.0
    nuclei, cells = label_cell(nuclei_pred, cell_pred, params=QUARTER)
    exp_nuclei, exp_cells = expected(fixture, case, "quarter")
    assert np.array_equal(cells, exp_cells) and np.array_equal(nuclei, exp_nuclei)


@pytest.mark.parametrize("res", ["quarter", "full"])
def test_cell_threshold_matches_the_reference_value(fixture, res):
    # max(0.22, threshold_otsu(cell[..., 2] / 255) * 0.5) as recorded inside the original call;
    # uint8 maps take a cheaper histogram path, float maps skimage's own: both must agree.
    from segment.labelling import _as_maps, _cell_threshold

    for case in CASES:
        cell_pred = fixture[f"{case}_{res}_cell_pred"]
        planes, _ = _as_maps(cell_pred, cell_pred)
        float_planes, _ = _as_maps(cell_pred / 255.0, cell_pred / 255.0)
        reference = float(fixture[f"{case}_{res}_threshold_value"])
        assert _cell_threshold(planes, QUARTER) == reference
        assert _cell_threshold(float_planes, QUARTER) == reference


def test_stock_constants_find_nothing_on_quarter_maps(fixture):
    # hpacellseg issue #20: full-resolution cut-offs on quarter-resolution maps.
    for case in ("case1", "case2"):
        nuclei, cells = run_case(fixture, case, "quarter", LabelParams())
        assert cells.max() == 0 and nuclei.max() == 0


def test_quarter_constants_are_not_a_no_op_on_quarter_maps(fixture):
    # The disk radius matters (disk(6) at quarter resolution is a detectable deviation).
    wrong = dataclasses.replace(QUARTER, closing_radius_px=6)
    _, cells = run_case(fixture, "case1", "quarter", wrong)
    _, exp_cells = expected(fixture, "case1", "quarter")
    assert not np.array_equal(cells > 0, exp_cells > 0)


def test_inputs_are_not_modified(fixture):
    nuclei_pred = fixture["case4_quarter_nuclei_pred"].copy()
    cell_pred = fixture["case4_quarter_cell_pred"].copy()
    label_cell(nuclei_pred, cell_pred, params=QUARTER)
    label_nuclei(nuclei_pred, cell_pred, params=QUARTER)
    assert np.array_equal(nuclei_pred, fixture["case4_quarter_nuclei_pred"])
    assert np.array_equal(cell_pred, fixture["case4_quarter_cell_pred"])


def test_label_nuclei_gives_the_seeds_of_the_final_nuclei(fixture):
    seeds = label_nuclei(
        fixture["case2_quarter_nuclei_pred"], fixture["case2_quarter_cell_pred"], params=QUARTER
    )
    nuclei, cells = run_case(fixture, "case2", "quarter", QUARTER)
    assert seeds.dtype == np.uint16
    assert np.array_equal(np.unique(seeds), np.arange(int(seeds.max()) + 1))  # ids 1..N
    # Final nuclei are these nuclei restricted to cells (minus small leftovers).
    assert not ((nuclei > 0) & (seeds == 0)).any()
    # Every cell grew from one of them.
    assert set(np.unique(cells[seeds > 0])) >= set(np.unique(cells[cells > 0]))


def grid_of_cells(rows: int, cols: int, *, pitch: int = 24, cell: int = 22, nucleus: int = 16):
    """uint8 maps of rows x cols square cells, each with a centred square nucleus, 2 px apart."""
    h, w = rows * pitch, cols * pitch
    nuclei_pred = np.zeros((h, w, 3), np.uint8)
    cell_pred = np.zeros((h, w, 3), np.uint8)
    off_n = (pitch - nucleus) // 2
    for r in range(rows):
        for c in range(cols):
            y, x = r * pitch, c * pitch
            cell_pred[y : y + cell, x : x + cell, 2] = 230
            nuclei_pred[y + off_n : y + off_n + nucleus, x + off_n : x + off_n + nucleus, 2] = 240
    return nuclei_pred, cell_pred


def test_more_than_255_cells_keep_distinct_ids():
    # 15 x 20 = 300 cells on a non-square map: the original's uint8 cast would wrap ids here.
    nuclei_pred, cell_pred = grid_of_cells(15, 20)
    nuclei, cells = label_cell(nuclei_pred, cell_pred, params=QUARTER)
    assert cells.shape == (360, 480) and cells.dtype == np.uint16
    assert int(cells.max()) == 300
    assert np.array_equal(np.unique(cells), np.arange(301))
    # Raster order: the first cell met scanning row-major is 1, the last one 300.
    assert cells[10, 10] == 1 and cells[-14, -14] == 300 and cells[10, 34] == 2
    # One nucleus per cell, carrying its cell's id and lying inside it.
    assert np.array_equal(np.unique(nuclei), np.arange(301))
    assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])


def test_uint8_border_sum_wraps_like_the_original():
    nuclei_pred, cell_pred = grid_of_cells(1, 1, pitch=40, cell=36, nucleus=26)
    # 200 + 100 wraps to 44 in uint8: border_ok holds and the nucleus keeps its seed. In float
    # there is no wrap: 1 - (200 + 100) / 255 < 0.05 removes every seed, so no cell is found.
    nuclei_pred[..., 1] = 200
    cell_pred[..., 1] = 100
    _, cells_u8 = label_cell(nuclei_pred, cell_pred, params=QUARTER)
    _, cells_float = label_cell(nuclei_pred / 255.0, cell_pred / 255.0, params=QUARTER)
    assert cells_u8.max() == 1 and cells_float.max() == 0


def dumbbell(neck_border: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 maps of two nuclei (radius 9 px, 30 px apart) joined by a 3 px neck, in two touching cells.

    The nuclei network marks the neck's middle 9 px as border with ``neck_border`` (0..255).
    """
    yy, xx = np.mgrid[:64, :96]
    nuclei_pred = np.zeros((64, 96, 3), np.uint8)
    cell_pred = np.zeros((64, 96, 3), np.uint8)
    for cy, cx in [(32, 33), (32, 63)]:
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        nuclei_pred[r2 <= 9**2, 2] = 240
        cell_pred[r2 <= 18**2, 2] = 230
    nuclei_pred[(abs(yy - 32) <= 1) & (xx > 33) & (xx < 63), 2] = 240
    nuclei_pred[(abs(yy - 32) <= 1) & (xx >= 44) & (xx <= 52), 1] = neck_border
    return nuclei_pred, cell_pred


@pytest.mark.parametrize(
    "neck_border, cells_found",
    [
        (245, 2),  # 1 - 245/255 = 0.0392, not above the 0.05 margin: the neck is cut, two seeds
        (235, 1),  # 1 - 235/255 = 0.0784 is above it: the neck stays in the seed, one nucleus
    ],
)
def test_seed_border_margin_decides_whether_a_dumbbell_is_split(neck_border, cells_found):
    # Pins seed_border_margin to [0.0393, 0.0784): 0 keeps the first neck whole, 0.08 cuts the second.
    nuclei, cells = label_cell(*dumbbell(neck_border), params=QUARTER)
    assert int(cells.max()) == int(nuclei.max()) == cells_found
    for k in range(1, cells_found + 1):  # each a whole cell with its nucleus (cut-offs 344 and 157 px)
        assert (cells == k).sum() > 700 * (3 - cells_found) and (nuclei == k).sum() > 200


def test_nuclear_threshold_is_strict():
    # 102 / 255 == 0.4 exactly: not nuclear. 103 is.
    nuclei_pred, cell_pred = grid_of_cells(1, 1, pitch=40, cell=36, nucleus=26)
    at = nuclei_pred.copy()
    at[..., 2][at[..., 2] > 0] = 102
    above = nuclei_pred.copy()
    above[..., 2][above[..., 2] > 0] = 103
    assert label_cell(at, cell_pred, params=QUARTER)[1].max() == 0
    assert label_cell(above, cell_pred, params=QUARTER)[1].max() == 1


def test_scaled_gives_the_quarter_constants():
    q = LabelParams().scaled(0.25)
    assert (
        q.max_nuclear_hole_area_px,
        q.min_nuclear_mask_object_area_px,
        q.min_nuclear_seed_area_px,
        q.min_nucleus_area_px,
        q.min_cell_area_px,
        q.closing_radius_px,
    ) == (63, 1, 32, 157, 344, 2)
    # Probabilities do not scale; the seed threshold is the original's 0.4 - 0.25.
    assert q.seed_threshold == 0.4 - 0.25 == 0.15000000000000002
    assert (q.nuclei_threshold, q.cell_threshold_floor, q.otsu_factor) == (0.4, 0.22, 0.5)
    assert LabelParams().scaled(1.0) == LabelParams()
    half = LabelParams().scaled(0.5)
    assert (half.min_cell_area_px, half.min_nucleus_area_px, half.closing_radius_px) == (1375, 625, 3)
    # Float noise must not bump a cut-off: 1000 * 0.1**2 is 10.000000000000002.
    assert LabelParams().scaled(0.1).max_nuclear_hole_area_px == 10


def test_params_hash_is_stable_and_sensitive():
    assert LabelParams().hash() == LabelParams().hash()
    assert len(LabelParams().hash()) == 64
    assert LabelParams().hash() != QUARTER.hash()
    assert LabelParams(min_cell_area_px=5501).hash() != LabelParams().hash()
    assert LabelParams().to_dict()["min_cell_area_px"] == 5500


@pytest.mark.parametrize(
    "kwargs", [dict(min_cell_area_px=-1), dict(closing_radius_px=1.5), dict(nuclei_threshold=float("nan"))]
)
def test_params_reject_bad_values(kwargs):
    with pytest.raises(ValueError):
        LabelParams(**kwargs)


def test_scaled_rejects_bad_scale():
    for scale in (0, -0.25, float("inf")):
        with pytest.raises(ValueError):
            LabelParams().scaled(scale)


@pytest.mark.parametrize(
    "nuclei_pred, cell_pred, message",
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), "same shape"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "(H, W, 3)"),
        (np.zeros((8, 8, 3), np.uint16), np.zeros((8, 8, 3), np.uint16), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), "same dtype"),
        (np.full((8, 8, 3), 2.0), np.zeros((8, 8, 3)), "[0, 1]"),
        (np.full((8, 8, 3), np.nan), np.zeros((8, 8, 3)), "[0, 1]"),
    ],
)
def test_bad_maps_are_rejected(nuclei_pred, cell_pred, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        label_cell(nuclei_pred, cell_pred, params=QUARTER)


# ----------------------------------------------------------------------------- fast primitives
# segment._label_ops replaces scipy / skimage calls with faster ones that must give the very same
# arrays (ids and their order included). These checks catch a library upgrade breaking that.


def random_masks(count: int = 12):
    from scipy import ndimage as ndi

    rng = np.random.default_rng(7)
    for i in range(count):
        h, w = (int(v) for v in rng.integers(1, 90, 2))
        if i % 2:  # salt-and-pepper: many tiny components meeting diagonally
            yield rng.random((h, w)) < rng.uniform(0.3, 0.7)
        else:  # blobs
            yield ndi.gaussian_filter(rng.random((h, w)), 2) > 0.5


def test_label4_equals_scipy_label():
    from scipy import ndimage as ndi

    from segment._label_ops import _label4

    for mask in random_masks():
        expected, count = ndi.label(mask)
        got, got_count = _label4(mask)
        assert got_count == count and np.array_equal(got, expected)


@pytest.mark.parametrize("min_area_px", [0, 3])
def test_raster_components_8_equals_scipy_label_drop_and_renumber(min_area_px):
    from scipy import ndimage as ndi

    from segment._label_ops import _raster_components_8

    for mask in random_masks():
        labels, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
        keep = np.bincount(labels.ravel()) >= min_area_px
        keep[0] = False
        lut = np.zeros(keep.size, np.int64)
        lut[keep] = np.arange(1, keep.sum() + 1)
        assert np.array_equal(_raster_components_8(mask, min_area_px), lut[labels])


@pytest.mark.parametrize("line", [False, True])
def test_watershed_equals_skimage_watershed(line):
    from skimage.segmentation import watershed

    from segment._label_ops import _watershed

    rng = np.random.default_rng(3)
    for i, mask in enumerate(random_masks(8)):
        # Coarse levels make plateaus, where only the queue's tie-breaking decides.
        image = rng.integers(0, 4, mask.shape).astype(np.uint8 if i % 2 else np.float64)
        markers = np.where(rng.random(mask.shape) < 0.05, rng.integers(1, 6, mask.shape), 0)
        markers = markers.astype(np.int32 if i % 2 else np.int64)  # some lie outside the mask
        expected = watershed(image, markers, mask=mask, watershed_line=line)
        got = _watershed(image, markers, mask, line=line)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_unverified_skimage_takes_the_public_watershed_with_the_same_result(monkeypatch):
    from segment import _label_ops

    assert _label_ops._private_watershed_verified()  # the pinned skimage uses the fast path
    rng = np.random.default_rng(5)
    mask = next(random_masks(1))
    image = rng.integers(0, 4, mask.shape).astype(np.float64)
    markers = np.where(rng.random(mask.shape) < 0.05, rng.integers(1, 6, mask.shape), 0).astype(np.int32)
    fast = _label_ops._watershed(image, markers, mask, line=True).copy()
    monkeypatch.setattr(_label_ops, "VERIFIED_SKIMAGE_VERSIONS", frozenset())
    assert not _label_ops._private_watershed_verified()
    assert np.array_equal(_label_ops._watershed(image, markers, mask, line=True), fast)


def test_per_pixel_on_uint8_equals_the_float_comparison():
    from segment._label_ops import _per_pixel

    plane = np.arange(256, dtype=np.uint8).reshape(16, 16)
    for predicate in (
        lambda p: p > 0.4,  # 102 / 255 == 0.4 is out
        lambda p: p > 0.4 + (-0.25),
        lambda p: (1 - p) > 0.05,
        lambda p: p > 1.0,
        lambda p: p >= 0.0,
        lambda p: (p > 0.2) & (p < 0.6),  # not monotone: table look-up
    ):
        assert np.array_equal(_per_pixel(plane, predicate), predicate(plane / 255.0))


def test_watershed_of_no_image_floods_a_flat_image():
    from skimage.segmentation import watershed

    from segment._label_ops import _watershed

    rng = np.random.default_rng(5)
    for mask in random_masks(6):
        markers = np.where(rng.random(mask.shape) < 0.05, rng.integers(1, 6, mask.shape), 0).astype(np.int32)
        expected = watershed(mask.astype(np.uint8), markers, mask=mask, watershed_line=True)
        assert np.array_equal(_watershed(None, markers, mask, line=True), expected)


def random_labels(count: int = 12):
    """Label images: 4-connected blobs / salt-and-pepper (some over half covered, some under) and
    touching ids (a random id per pixel block), int32."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(11)
    for i, mask in enumerate(random_masks(count)):
        if i % 3 == 2:  # touching regions of different ids, some background
            blocks = rng.integers(0, 6, (mask.shape[0] // 4 + 1, mask.shape[1] // 4 + 1))
            yield np.kron(blocks, np.ones((4, 4), np.int32))[: mask.shape[0], : mask.shape[1]].astype(np.int32)
        else:
            yield ndi.label(mask)[0].astype(np.int32)


def test_relief_floods_like_the_negated_probabilities():
    from skimage.segmentation import watershed

    from segment._label_ops import _relief, _watershed

    rng = np.random.default_rng(13)
    for mask in random_masks(8):
        interior = rng.choice(np.array([0, 37, 38, 200, 255], np.uint8), mask.shape)  # plateaus and near-ties
        markers = np.where(rng.random(mask.shape) < 0.05, rng.integers(1, 6, mask.shape), 0).astype(np.int32)
        expected = watershed(-(interior / 255.0), markers, mask=mask)
        assert np.array_equal(_watershed(_relief(interior), markers, mask), expected)
        floats = interior / 255.0
        assert np.array_equal(_relief(floats), -floats)


def test_component_areas_8_partition_like_scipy_label_with_their_areas():
    from scipy import ndimage as ndi

    from segment._label_ops import _component_areas_8

    for mask in random_masks():
        expected, count = ndi.label(mask, structure=np.ones((3, 3), bool))
        labels, areas = _component_areas_8(mask)
        assert np.array_equal(labels == 0, expected == 0)
        pairs = np.unique(np.stack([expected.ravel(), labels.ravel()]), axis=1)
        assert pairs.shape[1] == count + 1  # a bijection of the ids (background with background)
        expected_areas = np.bincount(expected.ravel())
        assert np.array_equal(areas[labels], expected_areas[expected])
        assert areas[0] == (~mask).sum()


def test_id_areas_equal_scipy_sums_on_sparse_and_dense_labels():
    from scipy import ndimage as ndi

    from segment._label_ops import _id_areas

    covers = set()
    for labels in random_labels():
        top = int(labels.max())
        ones = np.ones(labels.shape, np.int64)
        expected = ndi.sum_labels(ones, labels, index=np.arange(top + 1)).astype(np.int64)
        expected[0] = 0
        assert np.array_equal(_id_areas(labels), expected)
        covers.add(bool(np.count_nonzero(labels) > labels.size // 2))
    assert covers == {False, True}  # both counting paths ran


@pytest.mark.parametrize("renumber", [False, True])
@pytest.mark.parametrize("min_area_px", [0, 1, 4, 30])
def test_drop_small_ids_equals_skimage_remove_small_objects(min_area_px, renumber):
    import warnings

    from skimage.morphology import remove_small_objects
    from skimage.segmentation import relabel_sequential

    from segment._label_ops import _drop_small_ids

    for labels in random_labels():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "only one label" on some inputs
            expected = remove_small_objects(labels, max_size=min_area_px - 1)
        if renumber:
            expected = relabel_sequential(expected)[0]
        assert np.array_equal(_drop_small_ids(labels, min_area_px, renumber=renumber), expected)


def test_keep_ids_zeroes_the_dropped_and_renumbers_like_relabel_sequential():
    from skimage.segmentation import relabel_sequential

    from segment._label_ops import _keep_ids

    rng = np.random.default_rng(17)
    for labels in random_labels():
        present = np.bincount(labels.ravel()) > 0
        keep = (rng.random(int(labels.max()) + 1) < 0.6) & present  # kept ids occur (the contract)
        given = keep.copy()
        kept = np.where(keep[labels] & (labels > 0), labels, 0)
        assert np.array_equal(_keep_ids(labels, keep, renumber=False), kept)
        assert np.array_equal(_keep_ids(labels, keep, renumber=True), relabel_sequential(kept)[0])
        assert np.array_equal(keep, given)  # the caller's array is not changed
    every = np.ones(int(labels.max()) + 1, bool)
    assert np.array_equal(_keep_ids(labels, every, renumber=False), labels)


@pytest.mark.parametrize("min_area_px", [0, 1, 2, 5, 40])
def test_drop_small_components_equals_skimage_remove_small_objects(min_area_px):
    from skimage.morphology import remove_small_objects

    from segment._label_ops import _drop_small_components

    for mask in random_masks():
        expected = remove_small_objects(mask, max_size=min_area_px - 1, connectivity=1)
        got = _drop_small_components(mask, min_area_px)
        assert got.dtype == bool and np.array_equal(got, expected)


@pytest.mark.parametrize("max_hole_area_px", [1, 2, 5, 40])
def test_fill_small_holes_equals_skimage_remove_small_holes(max_hole_area_px):
    from skimage.morphology import remove_small_holes

    from segment._label_ops import _fill_small_holes

    for mask in random_masks():
        expected = remove_small_holes(mask, max_size=max_hole_area_px - 1, connectivity=1)
        assert np.array_equal(_fill_small_holes(mask, max_hole_area_px), expected)


def test_fill_enclosed_holes_equals_scipy_binary_fill_holes():
    from scipy import ndimage as ndi

    from segment._label_ops import _fill_enclosed_holes

    for mask in (*random_masks(), np.ones((5, 7), bool), np.zeros((4, 4), bool)):
        assert np.array_equal(_fill_enclosed_holes(mask), ndi.binary_fill_holes(mask))


def test_thick_boundaries_equal_skimage_find_boundaries():
    from skimage.segmentation import find_boundaries

    from segment._label_ops import _thick_boundaries

    for labels in random_labels():
        assert np.array_equal(_thick_boundaries(labels), find_boundaries(labels, mode="thick"))


def test_fill_label_holes_equals_the_originals_fill_holes():
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from segment._label_ops import _fill_label_holes

    for labels in random_labels():
        # hpacellseg's __fill_holes, written out with the library calls it makes.
        cut = labels * np.invert(find_boundaries(labels))
        expected = ndi.label(ndi.binary_fill_holes(cut > 0))[0]
        assert np.array_equal(_fill_label_holes(labels), expected)


def test_disk_equals_skimage_disk():
    from skimage.morphology import disk

    from segment._label_ops import _disk

    for radius in range(9):
        assert np.array_equal(_disk(radius), disk(radius))


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
@pytest.mark.parametrize("offset", [0, 70_000], ids=["uint16-ids", "ids-over-65535"])
def test_grey_closing_equals_skimage_closing(radius, offset):
    from skimage.morphology import closing, disk

    from segment._label_ops import _grey_closing

    for labels in random_labels(9):
        labels = np.where(labels > 0, labels + offset, 0).astype(np.int32)
        expected = closing(labels, disk(radius))
        got = _grey_closing(labels, radius)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
