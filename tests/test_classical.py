"""The weight-free backend segments the synthetic world, and cell_f1 counts matches correctly."""
from __future__ import annotations

import numpy as np
import pytest

from cellcls.synth import make_sample
from segment.classical import ClassicalParams, pseudo_probability_maps, segment_classical
from segment.evaluate import cell_f1, pair_iou
from segment.labelling import LabelParams

# Dense (45 cells per full-resolution field) and sparse (12) images, none used to tune the backend.
WORLD = [(300, 45.0), (301, 45.0), (302, 45.0), (310, 12.0), (311, 12.0), (312, 12.0)]


def as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / np.iinfo(image.dtype).max


def below_cut_offs(sample, params: LabelParams) -> np.ndarray:
    """Truth ids that label_cell's size cut-offs drop by design (border-cut cells, mostly)."""
    scaled = params.scaled(sample.scale)
    cell_area = np.bincount(sample.cells.ravel())
    nucleus_area = np.bincount(sample.nuclei.ravel(), minlength=cell_area.size)
    small = (cell_area < scaled.min_cell_area_px) | (nucleus_area < scaled.min_nucleus_area_px)
    small[0] = False
    return np.flatnonzero(small)


@pytest.fixture(scope="module")
def world():
    out = []
    for seed, density in WORLD:
        sample = make_sample(seed, density=density)
        nuclei, cells = segment_classical(as_float(sample.image), scale=sample.scale)
        out.append((seed, density, sample, nuclei, cells))
    return out


@pytest.mark.slow
def test_world_has_touching_and_border_cut_cells(world):
    # Guard: the F1 below must be earned on hard scenes, not on isolated cells.
    for seed, density, sample, _, _ in world:
        truth = sample.cells
        h_touch = (truth[:, 1:] != truth[:, :-1]) & (truth[:, 1:] > 0) & (truth[:, :-1] > 0)
        v_touch = (truth[1:, :] != truth[:-1, :]) & (truth[1:, :] > 0) & (truth[:-1, :] > 0)
        edge = np.concatenate([truth[0], truth[-1], truth[:, 0], truth[:, -1]])
        assert h_touch.any() or v_touch.any(), f"seed {seed}: no touching cells"
        assert np.unique(edge[edge > 0]).size >= 2, f"seed {seed}: no border-cut cells"
    dense = [s.n_cells for _, d, s, _, _ in world if d > 30]
    sparse = [s.n_cells for _, d, s, _, _ in world if d < 30]
    assert min(dense) > max(sparse)


@pytest.mark.slow
def test_cell_f1_on_the_synthetic_world_is_at_least_0_9(world):
    # Two honest readings. "all": every truth cell counts, including border-cut cells below the
    # size cut-offs that label_cell drops by design (so does the HPA ground truth, which is
    # label_cell output). "segmentable": those cells are ignored (neither missed nor, when
    # matched, counted). Both must reach 0.9 on average.
    report = []
    for seed, density, sample, _, cells in world:
        ignore = below_cut_offs(sample, LabelParams())
        f1_all = cell_f1(cells, sample.cells)["f1"]
        f1_seg = cell_f1(cells, sample.cells, ignore_true_ids=ignore)["f1"]
        report.append((seed, density, sample.n_cells, f1_all, f1_seg))
    text = "\n".join(f"seed {s} density {d:g}: {n} cells, F1 all {a:.3f}, segmentable {g:.3f}" for s, d, n, a, g in report)
    print(text)
    assert np.mean([r[3] for r in report]) >= 0.9, text
    assert np.mean([r[4] for r in report]) >= 0.9, text
    assert min(r[3] for r in report) >= 0.75, text


@pytest.mark.slow
def test_outputs_follow_label_cell_conventions(world):
    for seed, _, sample, nuclei, cells in world:
        assert cells.shape == nuclei.shape == sample.cells.shape
        assert cells.dtype == nuclei.dtype == np.uint16
        ids = np.unique(cells)
        assert np.array_equal(ids, np.arange(ids.size)), f"seed {seed}: ids not 1..N"
        # A nucleus carries its cell's id and lies inside it.
        assert np.all(cells[nuclei > 0] == nuclei[nuclei > 0])
        # Nothing smaller than the scaled cut-off survives.
        areas = np.bincount(cells.ravel())[1:]
        assert areas.min() >= LabelParams().scaled(sample.scale).min_cell_area_px


def test_same_image_as_uint16_float_gives_same_cells():
    sample = make_sample(5, size_px=(256, 256), bit_depth=16)
    image = as_float(sample.image)
    before = image.copy()
    nuclei_a, cells_a = segment_classical(image, scale=sample.scale)
    nuclei_b, cells_b = segment_classical(image, scale=sample.scale)
    assert np.array_equal(image, before), "input modified"
    assert np.array_equal(cells_a, cells_b) and np.array_equal(nuclei_a, nuclei_b)
    assert cells_a.max() >= 1
    assert cell_f1(cells_a, sample.cells, ignore_true_ids=below_cut_offs(sample, LabelParams()))["f1"] >= 0.8


def test_scale_sets_the_size_cut_offs():
    # Quarter-resolution cells (~1,250-3,750 px) pass the quarter cut-off (344 px); told the
    # image is at full resolution, the backend applies 5500 px and rightly finds nothing.
    sample = make_sample(7, size_px=(256, 256), density=30)
    image = as_float(sample.image)
    _, cells = segment_classical(image, scale=sample.scale)
    _, cells_full = segment_classical(image, scale=1.0)
    assert cells.max() >= 1 and cells_full.max() == 0


def test_pseudo_maps_are_probability_maps():
    sample = make_sample(3, size_px=(128, 192))
    nuclei_pred, cell_pred = pseudo_probability_maps(as_float(sample.image), scale=sample.scale)
    for m in (nuclei_pred, cell_pred):
        assert m.shape == (128, 192, 3) and m.dtype == np.float32
        assert m.min() >= 0.0 and m.max() <= 1.0
        assert not m[..., 0].any()
    # Nuclei lie in the cell foreground; nuclear seeds (interior off the rim) exist.
    assert np.all(cell_pred[..., 2][nuclei_pred[..., 2] > 0] > 0.5)
    assert ((nuclei_pred[..., 2] > 0) & (nuclei_pred[..., 1] == 0)).any()


def test_blank_image_has_no_cells():
    nuclei, cells = segment_classical(np.zeros((64, 96, 4)), scale=0.25)
    assert cells.shape == (64, 96) and cells.max() == 0 and nuclei.max() == 0


@pytest.mark.parametrize(
    "image, scale",
    [
        (np.zeros((32, 32, 3)), 0.25),
        (np.zeros((32, 32, 4), np.uint8), 0.25),
        (np.full((32, 32, 4), 1.5), 0.25),
        (np.zeros((32, 32, 4)), 0.0),
    ],
)
def test_bad_input_is_rejected(image, scale):
    with pytest.raises(ValueError):
        segment_classical(image, scale=scale)


def test_params_validate_and_hash():
    assert ClassicalParams().hash() == ClassicalParams().hash()
    assert ClassicalParams(nucleus_weight=0.5).hash() != ClassicalParams().hash()
    assert ClassicalParams(labels=LabelParams(min_cell_area_px=1)).hash() != ClassicalParams().hash()
    with pytest.raises(ValueError):
        ClassicalParams(nucleus_weight=2.0)
    with pytest.raises(ValueError):
        ClassicalParams(cell_smooth_px=-1.0)


# ----------------------------------------------------------------------------- cell_f1


def squares(boxes, shape=(40, 40), ids=None) -> np.ndarray:
    out = np.zeros(shape, np.uint16)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        out[y0:y1, x0:x1] = (ids[i] if ids else i + 1)
    return out


def test_f1_perfect_match_ignores_id_values():
    truth = squares([(0, 10, 0, 10), (20, 30, 20, 30)])
    pred = squares([(0, 10, 0, 10), (20, 30, 20, 30)], ids=[7, 3])
    assert cell_f1(pred, truth) == {"tp": 2.0, "fp": 0.0, "fn": 0.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_f1_iou_threshold_is_inclusive():
    truth = squares([(0, 10, 0, 10)])
    pred = squares([(0, 6, 0, 10)])  # IoU 60 / 100
    assert cell_f1(pred, truth)["tp"] == 1.0
    assert cell_f1(pred, truth, iou_threshold=0.61)["tp"] == 0.0


def test_f1_counts_merges_and_misses():
    truth = squares([(0, 10, 0, 10), (0, 10, 10, 20), (30, 40, 30, 40)])
    pred = squares([(0, 10, 0, 20), (25, 30, 0, 5)])  # merges cells 1 and 2, one spurious
    r = cell_f1(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (0.0, 2.0, 3.0) and r["f1"] == 0.0
    pred = squares([(0, 10, 0, 11), (30, 40, 30, 40)])  # cell 1 (IoU 100/110), cell 3, cell 2 missed
    r = cell_f1(pred, truth)
    assert (r["tp"], r["fp"], r["fn"]) == (2.0, 0.0, 1.0)
    assert r["f1"] == pytest.approx(4 / 5) and r["recall"] == pytest.approx(2 / 3)


def test_f1_ignored_truth_is_neither_missed_nor_a_false_positive():
    truth = squares([(0, 10, 0, 10), (30, 40, 30, 40)])
    found_both = squares([(0, 10, 0, 10), (30, 40, 30, 40)])
    found_one = squares([(0, 10, 0, 10)])
    assert cell_f1(found_one, truth, ignore_true_ids=[2])["f1"] == 1.0
    assert cell_f1(found_both, truth, ignore_true_ids=[2]) == cell_f1(found_one, truth, ignore_true_ids=[2])
    assert cell_f1(found_one, truth)["f1"] == pytest.approx(2 / 3)


def test_f1_of_nothing_against_nothing_is_1_and_pair_iou_is_exact():
    empty = np.zeros((8, 8), np.int32)
    assert cell_f1(empty, empty)["f1"] == 1.0
    truth = squares([(0, 10, 0, 10)])
    pred = squares([(5, 15, 0, 10)])
    p, t, iou = pair_iou(pred, truth)
    assert p.tolist() == [1] and t.tolist() == [1] and iou.tolist() == [50 / 150]
    with pytest.raises(ValueError):
        cell_f1(pred, truth[:-1])
