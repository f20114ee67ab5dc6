"""Cell crops: pixel-exact against the plain path (upscale the whole map, slice, mask, pad, resize)."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls.crops import CROP_MODES, crop_cells
from cellcls.errors import CropError
from cellcls.masks.table import cell_table


# ----------------------------------------------------------------------------- reference
def _upscale(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    big = cv2.resize(labels.astype(np.float64), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return big.astype(labels.dtype)


def _plain_crop(image, big, row, mode, size, margin):
    """One crop the obvious way: pad the whole frame with zeros, slice, mask, pad to square, cv2.resize."""
    height, width = big.shape
    pad = 2 * max(height, width) + size
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    padded_labels = np.pad(big, pad)
    if mode in ("masked", "context"):
        bh, bw = row.y1 - row.y0, row.x1 - row.x0
        my, mx = math.floor(margin * bh + 0.5), math.floor(margin * bw + 0.5)
        y0, x0, y1, x1 = row.y0 - my, row.x0 - mx, row.y1 + my, row.x1 + mx
    else:
        has_nucleus = np.isfinite(row.nucleus_centroid_y)
        cy = row.nucleus_centroid_y if has_nucleus else row.centroid_y
        cx = row.nucleus_centroid_x if has_nucleus else row.centroid_x
        y0, x0 = int(np.floor(cy + 0.5)) - size // 2, int(np.floor(cx + 0.5)) - size // 2
        y1, x1 = y0 + size, x0 + size
    patch = padded[y0 + pad:y1 + pad, x0 + pad:x1 + pad].copy()
    if mode in ("masked", "window_masked"):
        patch[padded_labels[y0 + pad:y1 + pad, x0 + pad:x1 + pad] != row.cell_id] = 0
    if mode in ("masked", "context"):
        h, w = patch.shape[:2]
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        patch = np.pad(patch, ((top, side - h - top), (left, side - w - left), (0, 0)))
        if side > size:
            patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
        elif side < size:
            patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
    return patch.transpose(2, 0, 1)


def _world(rng, seg_shape, shape, dtype, *, n_cells=8):
    """Random image at (H, W) and blob cells at seg scale, some on the border, one a single seg pixel."""
    h, w = seg_shape
    coarse = rng.integers(0, n_cells + 1, size=(max(1, h // 6), max(1, w // 6)))
    cells = cv2.resize(coarse.astype(np.float64), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.uint16)
    cells[rng.random((h, w)) < 0.03] = 0
    cells[h // 2, w // 2] = 900  # a degenerate cell: one segmentation pixel
    nuclei = np.where(rng.random((h, w)) < 0.5, cells, 0).astype(np.uint16)
    nuclei[nuclei == cells[0, 0]] = 0  # a cell without nucleus, on the border (unless background)
    top = np.iinfo(dtype).max
    image = rng.integers(0, top, size=(*shape, 4), endpoint=True).astype(dtype)
    table = cell_table(cells, nuclei, image_id="img", original_shape=shape, mask_key="k")
    return image, cells, table


CASES = [((26, 39), (104, 156)), ((26, 39), (105, 158)), ((30, 22), (60, 44)), ((41, 29), (41, 29))]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("seg_shape,shape", CASES)
@pytest.mark.parametrize("mode", ["masked", "context", "window_masked", "window_context"])
@pytest.mark.parametrize("size", [8, 24, 64])
def test_crops_equal_the_plain_path(mode, seg_shape, shape, dtype, size):
    rng = np.random.default_rng(size * 1000 + shape[0] * 10 + shape[1])
    image, cells, table = _world(rng, seg_shape, shape, dtype)
    assert table["touches_border"].any() and (table["cell_area_px"] <= 25).any()  # border and one-seg-pixel cells
    before = image.copy(), cells.copy()
    crops = crop_cells(image, cells, table, mode=mode, size=size, margin=0.15, image_id="img")
    assert crops.shape == (len(table), 4, size, size) and crops.dtype == dtype and crops.flags.c_contiguous
    big = _upscale(cells, shape)
    for k, row in enumerate(table.itertuples()):
        np.testing.assert_array_equal(crops[k], _plain_crop(image, big, row, mode, size, 0.15),
                                      err_msg=f"cell {row.cell_id}")
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(cells, before[1])


@pytest.mark.parametrize("mode", sorted(CROP_MODES))
def test_map_at_original_size_gives_the_same_crops(mode):
    rng = np.random.default_rng(11)
    image, cells, table = _world(rng, (26, 39), (104, 156), np.uint16)
    small = crop_cells(image, cells, table, mode=mode, size=32)
    full = crop_cells(image, _upscale(cells, (104, 156)), table, mode=mode, size=32)
    np.testing.assert_array_equal(small, full)


def test_masked_crop_of_a_one_pixel_cell_at_full_resolution():
    image = np.full((9, 7, 4), 200, np.uint8)
    image[4, 3] = (1, 2, 3, 4)
    cells = np.zeros((9, 7), np.uint16)
    cells[4, 3] = 5
    rows = pd.DataFrame({"cell_id": [5], "y0": [4], "x0": [3], "y1": [5], "x1": [4]})
    crops = crop_cells(image, cells, rows, mode="masked", size=3, margin=0.0)
    assert crops.shape == (1, 4, 3, 3)
    np.testing.assert_array_equal(crops[0], np.broadcast_to(np.array([1, 2, 3, 4], np.uint8)[:, None, None], (4, 3, 3)))
    context = crop_cells(image, cells, rows, mode="context", size=1, margin=1.0)  # 3x3 box shrunk to 1 px
    assert context[0, :, 0, 0].tolist() == [np.uint8(round((8 * 200 + v) / 9)) for v in (1, 2, 3, 4)]


def test_window_at_the_corner_is_zero_padded_and_centred_on_the_nucleus():
    image = np.arange(1, 1 + 10 * 12 * 4, dtype=np.uint16).reshape(10, 12, 4)
    cells = np.zeros((10, 12), np.uint16)
    cells[0:3, 0:3] = 1
    rows = {"cell_id": [1], "y0": [0], "x0": [0], "y1": [3], "x1": [3], "centroid_y": [1.0],
            "centroid_x": [1.0], "nucleus_centroid_y": [0.4], "nucleus_centroid_x": [np.nan]}
    win = crop_cells(image, cells, rows, mode="window_context", size=4)[0]
    # nucleus centroid has a NaN axis -> cell centroid (1, 1) -> rows/cols -1..2
    assert (win[:, 0, :] == 0).all() and (win[:, :, 0] == 0).all()
    np.testing.assert_array_equal(win[:, 1:, 1:], image[0:3, 0:3].transpose(2, 0, 1))
    masked = crop_cells(image, cells, rows, mode="window_masked", size=6)[0]
    assert (masked[:, 2:5, 2:5] == image[0:3, 0:3].transpose(2, 0, 1)).all()  # rows/cols -2..3
    assert masked.sum() == image[0:3, 0:3].sum()


def test_sixteen_bit_values_are_kept_not_rescaled():
    image = np.full((16, 16, 4), 60000, np.uint16)
    cells = np.zeros((4, 4), np.uint16)
    cells[1:3, 1:3] = 2
    table = cell_table(cells, cells, image_id="b", original_shape=(16, 16), mask_key="k")
    for mode in ("masked", "window_context"):
        crops = crop_cells(image, cells, table, mode=mode, size=4, margin=0)
        assert crops.dtype == np.uint16 and crops.max() == 60000


# ----------------------------------------------------------------------------- errors
def _good():
    rng = np.random.default_rng(2)
    return _world(rng, (26, 39), (104, 156), np.uint8)


def test_unknown_mode_lists_the_choices():
    image, cells, table = _good()
    with pytest.raises(CropError, match="masked.*window_context") as exc:
        crop_cells(image, cells, table, mode="tight", image_id="img")
    assert "img" in str(exc.value)


def test_cell_absent_from_the_map_is_named():
    image, cells, table = _good()
    rows = table.copy()
    rows.loc[0, "cell_id"] = 12345
    with pytest.raises(CropError, match="cell 12345") as exc:
        crop_cells(image, cells, rows, mode="context")
    assert "'img'" in str(exc.value)  # taken from the rows' ID column


def test_no_rows_is_an_error():
    image, cells, table = _good()
    with pytest.raises(CropError, match="no cell-table rows"):
        crop_cells(image, cells, table.iloc[0:0], image_id="img")


def test_rows_of_another_image_are_refused():
    image, cells, table = _good()
    with pytest.raises(CropError, match="belong to"):
        crop_cells(image, cells, table, image_id="other")


@pytest.mark.parametrize("change,match", [
    (lambda i, c, t: (i[..., 0], c, t), "(H, W, C)"),
    (lambda i, c, t: (i.astype(np.float32), c, t), "uint8 or uint16"),
    (lambda i, c, t: (i, c.T.copy(), t), "axis order"),
    (lambda i, c, t: (i, c.astype(np.float32), t), "integer"),
    (lambda i, c, t: (i[:50], c, t), "scaled copy"),
    (lambda i, c, t: (i, c, t.assign(y1=t.y1 + 1000)), "outside"),
    (lambda i, c, t: (i, c, t.drop(columns="x1")), "no column 'x1'"),
])
def test_bad_shapes_and_rows_raise_crop_errors(change, match):
    image, cells, table = change(*_good())
    with pytest.raises(CropError, match=match) as exc:
        crop_cells(image, cells, table, image_id="img")
    assert "img" in str(exc.value) and isinstance(exc.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(size=2.5), dict(margin=-0.1), dict(margin=float("nan"))])
def test_bad_size_or_margin(kwargs):
    image, cells, table = _good()
    with pytest.raises(CropError):
        crop_cells(image, cells, table, **kwargs)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_box_resize_is_cv2_area_or_linear_of_the_square_at_many_ratios(dtype):
    """A cell filling a square image, no margin: the crop is cv2.resize of the image itself."""
    rng = np.random.default_rng(4)
    top = np.iinfo(dtype).max
    for side, size in [(97, 32), (100, 50), (128, 128), (131, 7), (60, 61), (9, 40), (255, 254), (64, 16)]:
        image = rng.integers(0, top, size=(side, side, 4), endpoint=True).astype(dtype)
        image[:, : side // 3] = top  # saturated and flat areas as well as noise
        cells = np.ones((side, side), np.uint16)
        rows = {"cell_id": [1], "y0": [0], "x0": [0], "y1": [side], "x1": [side]}
        crop = crop_cells(image, cells, rows, mode="context", size=size, margin=0.0)[0]
        flag = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        expected = image if side == size else cv2.resize(image, (size, size), interpolation=flag)
        np.testing.assert_array_equal(crop, expected.transpose(2, 0, 1), err_msg=f"{side} -> {size}")


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_other_channel_counts_crop_like_the_first_channels_of_four(channels):
    rng = np.random.default_rng(12)
    image, cells, table = _world(rng, (26, 39), (104, 156), np.uint16)
    wide = np.concatenate([image, image], axis=2)  # 8 channels to take 1, 3 or 5 from
    for mode in ("masked", "window_masked"):
        crops = crop_cells(np.ascontiguousarray(wide[..., :channels]), cells, table, mode=mode, size=24)
        reference = crop_cells(image, cells, table, mode=mode, size=24)
        np.testing.assert_array_equal(crops[:, :min(channels, 4)], reference[:, :min(channels, 4)])
        assert crops.shape[1] == channels


def test_rows_of_several_images_are_refused_even_without_an_image_id():
    image, cells, table = _good()
    mixed = pd.concat([table, table.assign(ID="other")], ignore_index=True)
    with pytest.raises(CropError, match="belong to"):
        crop_cells(image, cells, mixed)
