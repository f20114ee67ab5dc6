"""The protein signal of a cell and the Negative it implies (cellcls.signal)."""
from __future__ import annotations

import numpy as np
import pytest

from cellcls.classes import NEGATIVE, NUM_CLASSES
from cellcls.signal import (
    cell_darkness,
    cell_protein_signal,
    dark_cell_targets,
    entry_cell_darkness,
    image_cell_darkness,
)


def _two_cells(dots_px: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A 40 x 40 image: cell 1 dark (haze 10), cell 2 the same haze with ``dots_px`` bright pixels, background 4."""
    cells = np.zeros((40, 40), np.uint16)
    cells[2:20, 2:20] = 1
    cells[22:40, 22:40] = 2
    green = np.full((40, 40), 4.0)
    green[cells > 0] = 10.0
    ys, xs = np.nonzero(cells == 2)
    green[ys[:dots_px], xs[:dots_px]] = 200.0
    return green, cells


def test_signal_is_a_high_percentile_above_the_background_so_small_bright_patterns_count():
    green, cells = _two_cells(dots_px=8)  # 8 of 324 pixels (2.5 %): the mean barely moves
    ids, signal = cell_protein_signal(green, cells)
    assert ids.tolist() == [1, 2]
    assert signal[0] == pytest.approx(10.0 - 4.0)
    assert signal[1] == pytest.approx(200.0 - 4.0)
    assert green[cells == 2].mean() < 20  # what a mean would have seen


def test_signal_without_background_pixels_is_measured_from_zero():
    cells = np.ones((6, 6), np.uint16)
    ids, signal = cell_protein_signal(np.full((6, 6), 7.0), cells)
    assert ids.tolist() == [1] and signal.tolist() == [7.0]


def test_signal_skips_absent_labels_and_rejects_mismatched_maps():
    green, cells = _two_cells()
    cells[cells == 1] = 5  # ids 1-4 absent
    ids, _ = cell_protein_signal(green, cells)
    assert ids.tolist() == [2, 5]
    with pytest.raises(ValueError, match="differ in size"):
        cell_protein_signal(green[:, :10], cells)
    with pytest.raises(ValueError, match="percentile"):
        cell_protein_signal(green, cells, percentile=101)


def test_darkness_is_relative_to_the_images_bright_cells_so_exposure_cancels():
    signal = np.arange(10) * 10.0  # its 90th percentile (the reference) is 81
    dark = cell_darkness(signal)
    assert dark.dtype == np.float32
    assert dark[0] == pytest.approx(1.0) and dark[4] == pytest.approx(1 - 40 / 81) and dark[8] == pytest.approx(1 / 81)
    assert dark[9] == 0.0  # brighter than the reference: clipped
    np.testing.assert_allclose(cell_darkness(signal * 37.0), dark, rtol=1e-6)


def test_darkness_of_an_image_without_any_signal_is_zero_not_a_division_by_zero():
    assert cell_darkness(np.array([-3.0, 0.0, 0.0])).tolist() == [0.0, 0.0, 0.0]
    assert cell_darkness(np.array([])).shape == (0,)


def test_image_darkness_calls_the_dark_cell_dark_and_the_stained_one_not():
    ids, dark = image_cell_darkness(*_two_cells())
    assert ids.tolist() == [1, 2]
    assert dark[0] > 0.9 and dark[1] == 0.0


def test_dark_targets_move_a_dark_cells_image_labels_to_negative():
    targets = np.zeros((3, NUM_CLASSES), np.float32)
    targets[0, [0, 16]] = 1.0          # broadcast labels of a positive image
    targets[1, [0, 16]] = [0.8, 0.4]   # soft labels
    targets[2, NEGATIVE] = 1.0         # an image labelled Negative
    out = dark_cell_targets(targets, np.array([0.75, 0.0, 0.1]))
    np.testing.assert_allclose(out[0, [0, 16, NEGATIVE]], [0.25, 0.25, 0.75])
    np.testing.assert_allclose(out[1, [0, 16, NEGATIVE]], [0.8, 0.4, 0.0])
    np.testing.assert_array_equal(out[2], targets[2])  # the image label already says Negative
    np.testing.assert_array_equal(targets[0, [0, 16]], [1.0, 1.0])  # input untouched
    with pytest.raises(ValueError, match="targets must be"):
        dark_cell_targets(targets, np.zeros(2))


class _Entry:
    def __init__(self, cells: np.ndarray) -> None:
        self.cells = cells


def test_entry_darkness_upscales_a_half_scale_map_and_follows_the_asked_order():
    green, cells = _two_cells()
    image = np.zeros((40, 40, 4), np.uint8)
    image[..., 1] = green.astype(np.uint8)
    half = cells[::2, ::2]  # exact 2x nearest-neighbour source of ``cells``
    dark = entry_cell_darkness(image, _Entry(half), [2, 1])
    _, full = image_cell_darkness(green, cells)
    np.testing.assert_allclose(dark, full[::-1], atol=1e-6)
    with pytest.raises(ValueError, match="cell 9"):
        entry_cell_darkness(image, _Entry(half), [1, 9])


@pytest.mark.parametrize("variant", ["default", "shifted"])
def test_darkness_finds_the_non_expressing_cells_of_worlds_drawn_differently(tmp_path, variant):
    """The rule is not fitted to one generator: on the default world and on the shifted one (other
    cell shapes, the independent pattern renderers, other Negative shares) the Negative cells of
    positive images are ranked darkest."""
    from sklearn.metrics import roc_auc_score

    from cellcls.io import read_image
    from cellcls.labels import read_train_csv
    from cellcls.show import read_truth
    from cellcls.synth import generate_world

    generate_world(tmp_path, n_train=16, n_test=0, size_px=384, seed=3, progress=False,
                   variant=None if variant == "default" else variant)
    labels = read_train_csv(tmp_path / "train.csv")
    negative, darkness = [], []
    for image_id, target in zip(labels.ids, labels.targets):
        if target[NEGATIVE]:
            continue
        cell_map, cell_labels = read_truth(tmp_path / "truth", image_id)
        ids, dark = image_cell_darkness(read_image(tmp_path / "train", image_id)[..., 1], cell_map)
        negative += [cell_labels[int(c)] == (NEGATIVE,) for c in ids]
        darkness += dark.tolist()
    negative = np.array(negative)
    assert 0.05 < negative.mean() < 0.8, "the world should hold both kinds of cells"
    assert roc_auc_score(negative, darkness) > 0.85
