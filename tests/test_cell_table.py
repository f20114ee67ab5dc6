"""The cell table: exact original-pixel measures without upscaling, files that round-trip, the command."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls.errors import CellTableError
from cellcls.masks.table import (
    CELL_TABLE_COLUMNS,
    CELL_TABLE_DTYPES,
    cell_table,
    empty_cell_table,
    read_cell_table,
    write_cell_table,
)


# ----------------------------------------------------------------------------- reference
def _upscale(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """cv2 INTER_NEAREST, through float64 so that any uint32 id survives on any OpenCV."""
    big = cv2.resize(labels.astype(np.float64), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return big.astype(labels.dtype)


def _plain_table(cells, nuclei, shape, image_id="img", mask_key="k") -> pd.DataFrame:
    """Upscale both maps to the original size, then measure each cell with np.nonzero."""
    big, big_nuc = _upscale(cells, shape), _upscale(nuclei, shape)
    rows = []
    for k in np.unique(big[big > 0]).tolist():
        ys, xs = np.nonzero(big == k)
        ny, nx = np.nonzero(big_nuc == k)
        rows.append({
            "ID": image_id, "cell_id": k,
            "y0": ys.min(), "x0": xs.min(), "y1": ys.max() + 1, "x1": xs.max() + 1,
            "centroid_y": ys.mean(), "centroid_x": xs.mean(),
            "nucleus_centroid_y": ny.mean() if ny.size else np.nan,
            "nucleus_centroid_x": nx.mean() if nx.size else np.nan,
            "cell_area_px": ys.size, "nucleus_area_px": ny.size,
            "touches_border": bool(ys.min() == 0 or xs.min() == 0 or ys.max() == shape[0] - 1
                                   or xs.max() == shape[1] - 1),
            "mask_key": mask_key,
        })
    if not rows:
        return empty_cell_table()
    return pd.DataFrame(rows, columns=list(CELL_TABLE_COLUMNS)).astype(CELL_TABLE_DTYPES)


def _random_maps(rng, seg_shape, *, n_cells=12, dtype=np.uint16, ids=None):
    """Blobby cells (coarse random grid, nearest-upscaled, speckled) with nuclei inside most of them."""
    h, w = seg_shape
    coarse = rng.integers(0, n_cells + 1, size=(max(1, h // 5), max(1, w // 5)))
    cells = cv2.resize(coarse.astype(np.float64), (w, h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    speckle = rng.random((h, w)) < 0.05
    cells[speckle] = rng.integers(0, n_cells + 1, size=int(speckle.sum()))
    if ids is not None:  # relabel 1..n_cells onto the given (gappy / huge) ids
        lut = np.concatenate(([0], np.asarray(ids, dtype=np.int64)))
        cells = lut[np.minimum(cells, len(ids))]
    cells = cells.astype(dtype)
    nuclei = np.where(rng.random((h, w)) < 0.4, cells, 0).astype(dtype)
    present = np.unique(cells[cells > 0])
    if present.size:  # one cell without any nucleus
        nuclei[nuclei == present[0]] = 0
    return cells, nuclei


def _assert_same(ours: pd.DataFrame, plain: pd.DataFrame) -> None:
    assert list(ours.columns) == list(CELL_TABLE_COLUMNS)
    assert dict(ours.dtypes.astype(str)) == dict(plain.dtypes.astype(str))
    pd.testing.assert_frame_equal(ours.reset_index(drop=True), plain.reset_index(drop=True), check_exact=True)


# ----------------------------------------------------------------------------- exactness
CASES = [
    # (seg shape, original shape)
    ((37, 53), (148, 212)),      # exactly 1/4, non-square
    ((37, 53), (150, 211)),      # about 1/4 with rounding (uneven blocks of 4 and 5 pixels)
    ((40, 29), (80, 58)),        # 1/2
    ((45, 31), (91, 61)),        # about 1/2
    ((33, 47), (33, 47)),        # scale 1: the map is already at the original size
    ((108, 108), (432, 432)),    # 1728 at 1/4
    ((50, 41), (23, 19)),        # a map larger than the image: shrinking skips rows, small cells vanish
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
@pytest.mark.parametrize("seg_shape,shape", CASES)
def test_table_equals_measuring_the_upscaled_map(seg_shape, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    cells, nuclei = _random_maps(rng, seg_shape, dtype=dtype)
    before = cells.copy(), nuclei.copy()
    ours = cell_table(cells, nuclei, image_id="img", original_shape=shape, mask_key="k")
    _assert_same(ours, _plain_table(cells, nuclei, shape))
    assert ours["touches_border"].any() and (ours["nucleus_area_px"] == 0).sum() >= 1
    np.testing.assert_array_equal(cells, before[0])  # inputs untouched
    np.testing.assert_array_equal(nuclei, before[1])


def test_cells_with_missing_ids_keep_their_ids():
    rng = np.random.default_rng(5)
    cells, nuclei = _random_maps(rng, (41, 30), n_cells=5, ids=[2, 3, 9, 40, 1000])
    ours = cell_table(cells, nuclei, image_id="gappy", original_shape=(164, 120), mask_key="k")
    assert ours["cell_id"].tolist() == sorted(np.unique(cells[cells > 0]).tolist())
    _assert_same(ours, _plain_table(cells, nuclei, (164, 120), image_id="gappy"))


def test_huge_sparse_uint32_ids():
    rng = np.random.default_rng(6)
    ids = [70_000, 123_456_789, 4_000_000_000]
    cells, nuclei = _random_maps(rng, (20, 26), n_cells=3, dtype=np.uint32, ids=ids)
    ours = cell_table(cells, nuclei, image_id="big", original_shape=(80, 104), mask_key="k")
    assert set(ours["cell_id"]) <= set(ids) and len(ours) == len(np.unique(cells[cells > 0]))
    _assert_same(ours, _plain_table(cells, nuclei, (80, 104), image_id="big"))


def test_map_that_fills_the_frame_without_background():
    cells = np.array([[1, 1, 2], [3, 3, 2]], dtype=np.uint16)
    ours = cell_table(cells, cells, image_id="full", original_shape=(8, 12), mask_key="k")
    _assert_same(ours, _plain_table(cells, cells, (8, 12), image_id="full"))
    assert ours["touches_border"].all()
    assert ours["cell_area_px"].sum() == 8 * 12


def test_one_pixel_cell_at_quarter_scale_is_a_4x4_block():
    cells = np.zeros((10, 12), dtype=np.uint16)
    cells[3, 5] = 7
    row = cell_table(cells, cells, image_id="dot", original_shape=(40, 48), mask_key="k").iloc[0]
    assert (row.y0, row.x0, row.y1, row.x1) == (12, 20, 16, 24)
    assert row.cell_area_px == 16 and row.nucleus_area_px == 16
    assert (row.centroid_y, row.centroid_x) == (13.5, 21.5)
    assert not row.touches_border


def test_empty_map_gives_an_empty_table_with_the_dtypes():
    empty = np.zeros((16, 20), dtype=np.uint16)
    table = cell_table(empty, empty, image_id="none", original_shape=(64, 80), mask_key="k")
    assert len(table) == 0 and list(table.columns) == list(CELL_TABLE_COLUMNS)
    assert dict(table.dtypes.astype(str)) == dict(empty_cell_table().dtypes.astype(str))


def test_nuclei_without_a_cell_are_ignored():
    cells = np.zeros((8, 8), dtype=np.uint16)
    cells[1:4, 1:4] = 1
    nuclei = np.zeros_like(cells)
    nuclei[2, 2] = 1
    nuclei[6, 6] = 5  # no cell 5
    table = cell_table(cells, nuclei, image_id="x", original_shape=(16, 16), mask_key="k")
    assert table["cell_id"].tolist() == [1] and table["nucleus_area_px"].tolist() == [4]


_Z = np.zeros((4, 4), np.uint16)


@pytest.mark.parametrize("cells,nuclei,shape,key,match", [
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.float32), (16, 16), "k", "integer"),
    (np.zeros((4, 4, 1), np.uint16), _Z, (16, 16), "k", "2-D"),
    (_Z, np.zeros((4, 5), np.uint16), (16, 16), "k", "differ in shape"),
    (_Z, _Z, (16, 40), "k", "scaled copy"),
    (np.full((4, 4), -1, np.int32), np.zeros((4, 4), np.int32), (16, 16), "k", "negative"),
    (_Z, _Z, (16, 16), "", "mask_key"),
])
def test_bad_input_raises_a_typed_error_naming_the_image(cells, nuclei, shape, key, match):
    with pytest.raises(CellTableError, match=match) as exc:
        cell_table(cells, nuclei, image_id="img-7", original_shape=shape, mask_key=key)
    assert "img-7" in str(exc.value)
    assert isinstance(exc.value, ValueError)


def test_swapped_axes_of_a_non_square_map_are_refused():
    cells = np.zeros((53, 37), np.uint16)  # transposed (37, 53) map
    with pytest.raises(CellTableError, match="axis order"):
        cell_table(cells, cells, image_id="t", original_shape=(148, 212), mask_key="k")


# ----------------------------------------------------------------------------- files
def _awkward_table() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    cells, nuclei = _random_maps(rng, (30, 22), dtype=np.uint32)
    a = cell_table(cells, nuclei, image_id="00123", original_shape=(121, 89), mask_key="hash:abc|1")
    b = cell_table(cells, nuclei, image_id="NA", original_shape=(30, 22), mask_key="nan")
    return pd.concat([a, b], ignore_index=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_files_round_trip_values_and_dtypes(tmp_path, suffix):
    table = _awkward_table()
    assert table["nucleus_centroid_y"].isna().any()
    assert (table["centroid_y"] % 1 != 0).any()  # non-trivial floats must survive the text format
    path = write_cell_table(table, tmp_path / "sub" / f"cells{suffix}")
    back = read_cell_table(path)
    pd.testing.assert_frame_equal(back, table, check_exact=True)
    assert back["ID"].tolist()[0] == "00123" and "NA" in back["ID"].tolist()


def test_empty_table_round_trips(tmp_path):
    for suffix in (".parquet", ".csv"):
        back = read_cell_table(write_cell_table(empty_cell_table(), tmp_path / f"e{suffix}"))
        pd.testing.assert_frame_equal(back, empty_cell_table())


def test_files_with_wrong_suffix_or_columns_are_refused(tmp_path):
    with pytest.raises(CellTableError, match=".parquet or .csv"):
        write_cell_table(empty_cell_table(), tmp_path / "cells.json")
    bad = tmp_path / "other.csv"
    pd.DataFrame({"ID": ["a"], "cell_id": [1]}).to_csv(bad, index=False)
    with pytest.raises(CellTableError, match="missing columns") as exc:
        read_cell_table(bad)
    assert "other.csv" in str(exc.value)
    with pytest.raises(FileNotFoundError):
        read_cell_table(tmp_path / "absent.parquet")


def test_centroid_is_the_exact_mean_not_a_rounded_one():
    cells = np.zeros((3, 3), np.uint16)
    cells[0, 0] = cells[0, 1] = cells[1, 0] = 1
    row = cell_table(cells, cells, image_id="c", original_shape=(3, 3), mask_key="k").iloc[0]
    assert (row.centroid_y, row.centroid_x) == (1 / 3, 1 / 3)


# ----------------------------------------------------------------------------- whole cache and command
def _cache(tmp_path, rng):
    from cellcls.masks import MaskCache

    cache = MaskCache(tmp_path / "masks")
    maps = {}
    for image_id, seg_shape, shape in [("b-img", (30, 40), (120, 160)), ("a-img", (25, 25), (100, 100)),
                                       ("c-empty", (20, 20), (80, 80))]:
        cells, nuclei = _random_maps(rng, seg_shape)
        if image_id == "c-empty":
            cells[:] = 0
            nuclei[:] = 0
        cache.write(image_id, cells, nuclei, original_shape=shape, scale=0.25, backend="test",
                    params_hash="key1", params={"scale": 0.25})
        maps[image_id] = (cells, nuclei, shape)
    cache.write_manifest()
    return cache, maps


def test_cache_table_is_the_per_image_tables_with_their_mask_keys(tmp_path):
    from cellcls.masks.table import cache_cell_table

    cache, maps = _cache(tmp_path, np.random.default_rng(8))
    table = cache_cell_table(cache.root, progress=False)
    assert table["ID"].unique().tolist() == ["a-img", "b-img"]  # sorted; the empty image has no rows
    for image_id in ("a-img", "b-img"):
        cells, nuclei, shape = maps[image_id]
        key = cache.read(image_id).mask_key
        expected = _plain_table(cells, nuclei, shape, image_id=image_id, mask_key=key)
        _assert_same(table[table["ID"] == image_id], expected)
    assert table["mask_key"].nunique() == 2  # same parameters, different maps
    sub = cache_cell_table(cache, ids=["b-img"], progress=False)
    assert set(sub["ID"]) == {"b-img"}


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_cell_table_command_writes_a_table_that_reads_back(tmp_path, suffix, capsys):
    from cellcls import cli
    from cellcls.masks.table import cache_cell_table

    cache, _ = _cache(tmp_path, np.random.default_rng(9))
    out = tmp_path / "out" / f"cells{suffix}"
    assert cli.main(["cell-table", "--masks", str(cache.root), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    table = read_cell_table(out)
    assert f"{len(table)} cells from 2 images with cells (1 without)" in printed
    pd.testing.assert_frame_equal(table, cache_cell_table(cache, progress=False))

    ids = tmp_path / "ids.csv"
    pd.DataFrame({"ID": ["c-empty", "a-img"], "Label": ["0", "1|2"]}).to_csv(ids, index=False)
    assert cli.main(["cell-table", "--masks", str(cache.root), "--ids", str(ids), "--out", str(out),
                     "--no-progress"]) == 0
    assert set(read_cell_table(out)["ID"]) == {"a-img"}
    assert "(1 without)" in capsys.readouterr().out


def test_cell_table_command_on_a_missing_cache_or_id_says_so(tmp_path, capsys):
    from cellcls import cli

    assert cli.main(["cell-table", "--masks", str(tmp_path / "nowhere"), "--out", str(tmp_path / "c.csv"),
                     "--no-progress"]) == 1
    assert "error:" in capsys.readouterr().err
    cache, _ = _cache(tmp_path, np.random.default_rng(10))
    ids = tmp_path / "ids.csv"
    pd.DataFrame({"ID": ["zz-not-cached"]}).to_csv(ids, index=False)
    assert cli.main(["cell-table", "--masks", str(cache.root), "--ids", str(ids), "--out",
                     str(tmp_path / "c.csv"), "--no-progress"]) == 1
    assert "zz-not-cached" in capsys.readouterr().err
