"""Tests of cellcls.masks (the mask cache): identity of a cache, round trips, upscaling, todo() states, crash safety, concurrent writers."""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls.errors import CacheError
from cellcls.masks import CACHE_VERSION, MANIFEST_COLUMNS, MaskCache, upscale_labels

KEY = "w:sha256-abc|p:1234"
OTHER_KEY = "w:sha256-abc|p:9999"
BACKEND = "hpacellseg"


def label_maps(height: int, width: int, *, seed: int, first_id: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) int32 maps: a grid of rectangular cells on background, ids from first_id, nuclei inside."""
    rng = np.random.default_rng(seed)
    cells = np.zeros((height, width), np.int32)
    nuclei = np.zeros_like(cells)
    step = 24
    next_id = first_id
    for top in range(0, height - step + 1, step):
        for left in range(0, width - step + 1, step):
            if rng.random() < 0.25:  # leave some tiles empty so ids and background vary
                continue
            h, w = rng.integers(12, step - 1, size=2)
            cells[top:top + h, left:left + w] = next_id
            nuclei[top + 3:top + h - 3, left + 3:left + w - 3] = next_id
            next_id += 1 + int(rng.integers(0, 3))  # gaps in the ids
    return cells, nuclei


def write_entry(cache: MaskCache, image_id: str, *, seed: int = 0, key: str = KEY, shape=(64, 48), scale=0.25,
                params=None):
    cells, nuclei = label_maps(*shape, seed=seed)
    original = (round(shape[0] / scale), round(shape[1] / scale))
    cache.write(image_id, cells, nuclei, original_shape=original, scale=scale, backend=BACKEND, params_hash=key,
                params=params)
    return cells, nuclei


def visible_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# --------------------------------------------------------------------- round trips
def test_round_trip_uint16_keeps_maps_metadata_and_inputs(tmp_path):
    cache = MaskCache(tmp_path / "masks")
    cells, nuclei = label_maps(432, 384, seed=1)
    cells_before, nuclei_before = cells.copy(), nuclei.copy()
    cache.write("img-a", cells, nuclei, original_shape=(1728, 1536), scale=0.25, backend=BACKEND, params_hash=KEY)

    np.testing.assert_array_equal(cells, cells_before)
    np.testing.assert_array_equal(nuclei, nuclei_before)
    entry = cache.read("img-a")
    assert entry.cells.dtype == np.uint16 and entry.nuclei.dtype == np.uint16
    np.testing.assert_array_equal(entry.cells, cells)
    np.testing.assert_array_equal(entry.nuclei, nuclei)
    assert entry.original_shape == (1728, 1536) and entry.seg_shape == (432, 384)
    assert entry.scale == 0.25 and entry.backend == BACKEND and entry.params_hash == KEY
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", entry.mask_key)
    assert entry.n_cells == len(np.unique(cells)) - 1  # distinct ids, not the max id (ids have gaps)
    assert entry.n_cells < cells.max()
    assert not entry.upscaled
    assert cache.status("img-a", KEY) == "ok"
    assert cache.ids() == ["img-a"]


def test_round_trip_uint32_with_more_than_65535_ids(tmp_path):
    cache = MaskCache(tmp_path)
    height, width = 300, 256
    cells = np.arange(1, height * width + 1, dtype=np.uint32).reshape(height, width)  # 76800 cells
    nuclei = np.where(np.indices(cells.shape).sum(0) % 2 == 0, cells, 0).astype(np.uint32)
    cache.write("big", cells, nuclei, original_shape=(1200, 1024), scale=0.25, backend=BACKEND, params_hash=KEY)

    entry = cache.read("big")
    assert entry.cells.dtype == np.uint32
    np.testing.assert_array_equal(entry.cells, cells)
    np.testing.assert_array_equal(entry.nuclei, nuclei)
    assert entry.n_cells == height * width
    assert cache.manifest().loc[0, "dtype"] == "uint32"


def test_int64_input_with_small_ids_is_stored_as_uint16(tmp_path):
    cache = MaskCache(tmp_path)
    cells, nuclei = label_maps(64, 64, seed=2, first_id=65000)
    assert cells.max() <= 65535
    cache.write("x", cells.astype(np.int64), nuclei.astype(np.int64), original_shape=(256, 256), scale=0.25,
                backend=BACKEND, params_hash=KEY)
    entry = cache.read("x")
    assert entry.cells.dtype == np.uint16
    np.testing.assert_array_equal(entry.cells, cells)


# --------------------------------------------------------------------- upscaling
@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_upscale_equals_cv2_nearest_on_non_square_map(tmp_path, dtype):
    cache = MaskCache(tmp_path)
    cells, nuclei = label_maps(432, 384, seed=3, first_id=1 if dtype == np.uint16 else 70_000)
    cache.write("img", cells, nuclei, original_shape=(1728, 1536), scale=0.25, backend=BACKEND, params_hash=KEY)

    entry = cache.read("img", upscale=True)
    assert entry.upscaled and entry.cells.shape == (1728, 1536) and entry.cells.dtype == dtype
    # int32 holds every id used here and is resizable by every cv2 version.
    expected_cells = cv2.resize(cells, (1536, 1728), interpolation=cv2.INTER_NEAREST)
    expected_nuclei = cv2.resize(nuclei, (1536, 1728), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(entry.cells, expected_cells)
    np.testing.assert_array_equal(entry.nuclei, expected_nuclei)


@pytest.mark.parametrize("src, dst", [((433, 385), (1733, 1541)), ((37, 100), (211, 999)), ((8, 8), (8, 8))])
def test_upscale_labels_matches_cv2_for_uneven_ratios(src, dst):
    rng = np.random.default_rng(4)
    labels16 = rng.integers(0, 65535, size=src).astype(np.uint16)
    expected = cv2.resize(labels16, dst[::-1], interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(upscale_labels(labels16, dst), expected)
    labels32 = labels16.astype(np.uint32) + 100_000  # goes through the index-map path
    np.testing.assert_array_equal(upscale_labels(labels32, dst), expected.astype(np.uint32) + 100_000)


# --------------------------------------------------------------------- status / todo
def test_todo_covers_missing_stale_failed_and_overwrite(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "ok1", seed=1)
    write_entry(cache, "ok2", seed=2)
    write_entry(cache, "old", seed=3, key=OTHER_KEY)
    cache.write_failure("bad", "CUDA out of memory", params_hash=KEY, backend=BACKEND)

    assert cache.status("never", KEY) == "missing"
    assert cache.status("old", KEY) == "stale"
    assert cache.status("old", OTHER_KEY) == "ok"
    assert cache.status("bad", KEY) == "failed"
    ids = ["never", "ok1", "old", "bad", "ok2", "never"]
    assert cache.todo(ids, KEY) == ["never", "old", "bad"]
    assert cache.todo(ids, KEY, overwrite=True) == ["never", "ok1", "old", "bad", "ok2"]
    assert cache.todo(ids, OTHER_KEY) == ["never", "ok1", "bad", "ok2"]


def test_entry_of_another_cache_version_is_stale(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img")
    sidecar = cache.sidecar_path("img")
    meta = json.loads(sidecar.read_text())
    meta["cache_version"] = CACHE_VERSION + 1
    sidecar.write_text(json.dumps(meta))
    assert cache.status("img", KEY) == "stale"
    assert cache.todo(["img"], KEY) == ["img"]
    with pytest.raises(CacheError, match="cache version"):
        cache.read("img")
    assert cache.ok_ids() == []
    with pytest.raises(CacheError, match=f"cache format version {CACHE_VERSION + 1}.*cellcls segment --out"):
        cache.reader()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage_same_size(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not an npz file")


def _delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage", [_truncate, _garbage_same_size, _garbage, _delete])
def test_damaged_data_file_is_corrupt_and_redone(tmp_path, damage):
    cache = MaskCache(tmp_path)
    write_entry(cache, "good", seed=1)
    write_entry(cache, "hurt", seed=2)
    damage(cache.data_path("hurt"))

    assert cache.status("hurt", KEY) == "corrupt"
    assert cache.todo(["good", "hurt"], KEY) == ["hurt"]
    with pytest.raises(CacheError) as info:
        cache.read("hurt")
    assert "hurt" in str(info.value) and "hurt.npz" in str(info.value)

    cells, nuclei = write_entry(cache, "hurt", seed=5)
    assert cache.status("hurt", KEY) == "ok"
    np.testing.assert_array_equal(cache.read("hurt").cells, cells)


def test_unreadable_sidecar_is_corrupt_and_listed(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img")
    cache.sidecar_path("img").write_bytes(b"\x00{not json")
    assert cache.status("img", KEY) == "corrupt"
    assert cache.todo(["img"], KEY) == ["img"]
    row = cache.manifest().iloc[0]
    assert row["ID"] == "img" and row["status"] == "corrupt" and "img.json" in row["error"]


def test_data_file_without_sidecar_is_missing(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img")
    cache.sidecar_path("img").unlink()
    assert cache.status("img", KEY) == "missing"
    assert cache.ids() == []


# --------------------------------------------------------------------- reader errors
def test_read_errors_name_id_file_and_the_build_command(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    with pytest.raises(CacheError) as info:
        cache.read("nope")
    message = str(info.value)
    assert "nope" in message and "nope.json" in message
    assert "cellcls segment" in message and f"--out {tmp_path / 'cache'}" in message

    write_entry(cache, "img", key=OTHER_KEY)
    assert cache.read("img").params_hash == OTHER_KEY  # no key requested: any key is fine
    with pytest.raises(CacheError, match="stale"):
        cache.read("img", params_hash=KEY)


def test_write_failure_replaces_maps_and_read_reports_the_error(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img")
    cache.write_failure("img", "UnreadableImageError: img_red.png is truncated", params_hash=KEY, backend=BACKEND)
    assert not cache.data_path("img").exists()
    assert cache.status("img", KEY) == "failed"
    with pytest.raises(CacheError, match="img_red.png is truncated"):
        cache.read("img")
    row = cache.manifest().iloc[0]
    assert row["status"] == "failed" and row["error"].startswith("UnreadableImageError")
    assert pd.isna(row["n_cells"]) and pd.isna(row["original_height"])


@pytest.mark.parametrize(
    "cells, nuclei, original, match",
    [
        (np.zeros((8, 8), np.float32), np.zeros((8, 8), np.float32), (32, 32), "integer dtype"),
        (np.zeros((8, 8), bool), np.zeros((8, 8), bool), (32, 32), "integer dtype"),
        (np.full((8, 8), -1, np.int32), np.zeros((8, 8), np.int32), (32, 32), "0.."),
        (np.zeros((8, 8), np.uint16), np.zeros((8, 9), np.uint16), (32, 32), "differ in shape"),
        (np.zeros((8, 6), np.uint16), np.zeros((8, 6), np.uint16), (24, 32), "axis order"),  # transposed map
        (np.zeros((8, 8, 3), np.uint16), np.zeros((8, 8, 3), np.uint16), (32, 32), "2-D"),
    ],
)
def test_write_rejects_bad_maps_and_writes_nothing(tmp_path, cells, nuclei, original, match):
    cache = MaskCache(tmp_path)
    with pytest.raises(CacheError, match=match):
        cache.write("img", cells, nuclei, original_shape=original, scale=0.25, backend=BACKEND, params_hash=KEY)
    assert visible_files(tmp_path) == []


@pytest.mark.parametrize("image_id", ["../escape", "a/b", ".hidden", "", "x" * 201])
def test_ids_that_cannot_name_a_file_are_refused(tmp_path, image_id):
    with pytest.raises(CacheError, match="image ID"):
        MaskCache(tmp_path).status(image_id, KEY)


@pytest.mark.parametrize("params_hash", ["", None, "   "])
def test_an_empty_key_is_refused(tmp_path, params_hash):
    cache = MaskCache(tmp_path)
    with pytest.raises(CacheError, match="params_hash"):
        cache.todo(["img"], params_hash)
    with pytest.raises(CacheError, match="params_hash"):
        write_entry(cache, "img", key=params_hash)


# --------------------------------------------------------------------- crash safety
def _failing_replace(monkeypatch, *, fail_on_call: int) -> None:
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            raise OSError("simulated crash before rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("fail_on_call", [1, 2], ids=["data-rename", "sidecar-rename"])
def test_crash_during_write_leaves_no_visible_entry(tmp_path, monkeypatch, fail_on_call):
    cache = MaskCache(tmp_path)
    write_entry(cache, "done", seed=1)
    before = visible_files(tmp_path)

    _failing_replace(monkeypatch, fail_on_call=fail_on_call)
    with pytest.raises(OSError, match="simulated crash"):
        write_entry(cache, "new", seed=2)
    monkeypatch.undo()

    assert cache.status("new", KEY) == "missing"
    assert cache.ids() == ["done"]
    assert not any(name.endswith(".tmp") for name in visible_files(tmp_path))  # temp file cleaned up
    if fail_on_call == 1:
        assert visible_files(tmp_path) == before
    assert cache.todo(["done", "new"], KEY) == ["new"]

    cells, _ = write_entry(cache, "new", seed=2)  # a later run redoes it without tripping on leftovers
    np.testing.assert_array_equal(cache.read("new").cells, cells)
    assert list(cache.manifest()["ID"]) == ["done", "new"]


def test_crash_while_overwriting_an_entry_makes_it_corrupt_not_mixed(tmp_path, monkeypatch):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img", seed=1, key=OTHER_KEY)
    _failing_replace(monkeypatch, fail_on_call=2)  # new data renamed, old sidecar kept
    with pytest.raises(OSError):
        write_entry(cache, "img", seed=2, key=KEY)
    monkeypatch.undo()
    assert cache.status("img", OTHER_KEY) == "corrupt"  # old sidecar no longer describes the data
    assert cache.todo(["img"], KEY) == ["img"]


def test_temp_files_of_killed_writers_are_ignored_then_cleaned(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "img")
    old_temp = tmp_path / ".img2.npz.k1ll3d.tmp"
    old_temp.write_bytes(b"half an npz")
    recent_temp = tmp_path / ".img3.json.w0rk1n.tmp"  # may belong to a writer still running
    recent_temp.write_bytes(b"{")
    two_hours_ago = time.time() - 7200
    os.utime(old_temp, (two_hours_ago, two_hours_ago))

    assert cache.ids() == ["img"]
    assert cache.todo(["img", "img2", "img3"], KEY) == ["img2", "img3"]
    cache.write_manifest()
    assert not old_temp.exists() and recent_temp.exists()
    assert list(cache.manifest()["ID"]) == ["img"]


# --------------------------------------------------------------------- manifest
def test_manifest_columns_rows_and_csv(tmp_path):
    cache = MaskCache(tmp_path)
    assert list(cache.manifest().columns) == list(MANIFEST_COLUMNS) and cache.manifest().empty
    write_entry(cache, "b", seed=1, shape=(64, 48), scale=0.25)
    write_entry(cache, "a", seed=2, shape=(50, 50), scale=0.5)
    cache.write_failure("c", "boom, with a comma\nand a newline", params_hash=KEY, backend="classical")

    from_sidecars = cache.manifest()
    assert list(from_sidecars.columns) == list(MANIFEST_COLUMNS)
    assert list(from_sidecars["ID"]) == ["a", "b", "c"]
    a = from_sidecars.iloc[0]
    assert (a["original_height"], a["original_width"], a["seg_height"], a["seg_width"]) == (100, 100, 50, 50)
    assert a["scale"] == 0.5 and a["status"] == "ok" and a["params_hash"] == KEY and a["backend"] == BACKEND
    assert a["n_cells"] == len(np.unique(label_maps(50, 50, seed=2)[0])) - 1
    assert a["cache_version"] == CACHE_VERSION and a["cellcls_version"] and a["written_at"]
    assert pd.isna(a["error"])

    path = cache.write_manifest()
    assert path == tmp_path / "manifest.csv"
    from_csv = pd.read_csv(path)
    assert list(from_csv.columns) == list(MANIFEST_COLUMNS) and len(from_csv) == 3
    pd.testing.assert_frame_equal(cache.manifest(), from_sidecars)  # now served from the csv
    assert from_csv.loc[2, "error"] == "boom, with a comma\nand a newline"


def test_ok_ids_lists_only_successful_entries(tmp_path):
    cache = MaskCache(tmp_path)
    assert cache.ok_ids() == []
    write_entry(cache, "b", seed=1)
    write_entry(cache, "a", seed=2)
    cache.write_failure("c", "unreadable PNG", params_hash=KEY, backend="classical")
    (tmp_path / "d.json").write_text("{ not json")  # an unreadable sidecar
    assert cache.ok_ids() == ["a", "b"]
    assert cache.ids() == ["a", "b", "c", "d"]


def test_manifest_sees_entries_written_after_the_csv(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "a", seed=1)
    cache.write_manifest()
    time.sleep(0.01)
    write_entry(cache, "a", seed=1, key=OTHER_KEY)  # same IDs as the csv, newer sidecar
    assert cache.manifest().loc[0, "params_hash"] == OTHER_KEY
    write_entry(cache, "b", seed=2)
    assert list(cache.manifest()["ID"]) == ["a", "b"]
    (tmp_path / "manifest.csv").unlink()
    assert list(cache.manifest()["ID"]) == ["a", "b"]


def _write_share(root: str, ids: list[str]) -> None:
    cache = MaskCache(root)
    for image_id in ids:
        write_entry(cache, image_id, seed=int(image_id.split("-")[1]))
    cache.write_manifest()  # both ranks rebuild it: neither may clobber the other's entries


def test_two_writer_processes_fill_one_cache(tmp_path):
    ids = [f"img-{i}" for i in range(24)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    workers = [context.Process(target=_write_share, args=(str(tmp_path), ids[rank::2])) for rank in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    cache = MaskCache(tmp_path)
    cache.write_manifest()
    frame = cache.manifest()
    assert sorted(frame["ID"]) == sorted(ids) and (frame["status"] == "ok").all()
    assert cache.todo(ids, KEY) == []
    for image_id in ids[:: 5]:
        expected, _ = label_maps(64, 48, seed=int(image_id.split("-")[1]))
        np.testing.assert_array_equal(cache.read(image_id).cells, expected)


# --------------------------------------------------------------------- one identity per cache
SCALE_1 = "p" * 63 + "1"  # two real-looking 64-hex keys (only their parameters differ)
SCALE_HALF = "p" * 63 + "2"
PARAMS_1 = {"backend": "classical", "scale": 1.0, "image_scale": 0.25, "label_params": "ab" * 32}
PARAMS_HALF = {**PARAMS_1, "scale": 0.5, "label_params": "cd" * 32}  # scaled labelling: another digest


def mixed_cache(root: Path) -> MaskCache:
    """3 entries at scale 1 and 2 at scale 0.5 (as `segment --scale 1` then `--scale 0.5 --ids ...` leave)."""
    cache = MaskCache(root)
    for i in range(3):
        write_entry(cache, f"one-{i}", seed=i, key=SCALE_1, scale=1.0, params=PARAMS_1)
    for i in range(2):
        write_entry(cache, f"half-{i}", seed=10 + i, key=SCALE_HALF, scale=0.5, params=PARAMS_HALF)
    return cache


def test_a_mixed_scale_cache_is_refused_naming_both_parameter_sets(tmp_path):
    cache = mixed_cache(tmp_path / "masks")
    for open_it in (cache.reader, cache.ok_ids):
        with pytest.raises(CacheError) as info:
            open_it()
        message = str(info.value)
        assert "\n" not in message
        assert "3 entries with backend classical, scale 1, image_scale 0.25" in message
        assert "2 entries with backend classical, scale 0.5, image_scale 0.25" in message
        assert "differ in scale." in message and "label_params" not in message  # the readable difference
        assert f"cellcls segment --out {tmp_path / 'masks'} --overwrite" in message
        assert "one folder per parameter set" in message


def test_sets_that_differ_only_in_a_digest_name_it(tmp_path):
    cache = MaskCache(tmp_path)
    for i, weights in enumerate(["a" * 64, "b" * 64]):
        write_entry(cache, f"img-{i}", key=f"key-{i}",
                    params={"backend": "hpa", "scale": 0.25, "weights_sha256": {"cell": weights, "nuclei": "n" * 8}})
    with pytest.raises(CacheError, match=r"weights_sha256.cell aaaaaaaaaaaa\.\.\. .*"
                                         r"weights_sha256.cell bbbbbbbbbbbb\.\.\. .*differ in weights_sha256.cell\. "):
        cache.reader()


def test_a_homogeneous_cache_reads_fine(tmp_path):
    cache = MaskCache(tmp_path)
    expected = {i: write_entry(cache, i, seed=n, key=SCALE_1, scale=1.0, params=PARAMS_1)[0]
                for n, i in enumerate(["b", "a", "c"])}
    cache.write_failure("d", "unreadable PNG", params_hash=SCALE_1, backend="classical", params=PARAMS_1)
    reader = cache.reader()
    assert reader.ids() == ["a", "b", "c"] == cache.ok_ids() and len(reader) == 3 and "d" not in reader
    assert reader.params_hash == SCALE_1 and reader.params == PARAMS_1 and reader.scale == 1.0
    assert "scale 1, image_scale 0.25" in reader.describe()
    for image_id, cells in expected.items():
        np.testing.assert_array_equal(reader.read(image_id).cells, cells)
    assert cache.reader(params_hash=SCALE_1).ids() == reader.ids()


def test_an_expected_key_reads_only_its_entries_and_refuses_others(tmp_path):
    cache = mixed_cache(tmp_path)
    half = cache.reader(params_hash=SCALE_HALF)
    assert half.ids() == ["half-0", "half-1"] == cache.ok_ids(params_hash=SCALE_HALF)
    assert half.read("half-1").scale == 0.5
    with pytest.raises(CacheError, match="one-0.*stale.*params_hash"):
        half.read("one-0")
    with pytest.raises(CacheError) as info:
        cache.reader(params_hash="q" * 64)
    message = str(info.value)
    assert "no entry made with the expected parameters" in message and "qqqqqqqqqqqq" in message
    assert "3 with backend classical, scale 1" in message and "2 with backend classical, scale 0.5" in message


def test_a_reader_refuses_an_entry_rewritten_under_another_key_after_opening(tmp_path):
    cache = MaskCache(tmp_path)
    write_entry(cache, "a", seed=1, key=SCALE_1, params=PARAMS_1)
    reader = cache.reader()
    write_entry(cache, "a", seed=1, key=SCALE_HALF, params=PARAMS_HALF)
    with pytest.raises(CacheError, match="stale"):
        reader.read("a")


def test_mask_key_is_stable_and_follows_data_and_parameters(tmp_path):
    cache = MaskCache(tmp_path / "one")
    write_entry(cache, "img", seed=1)
    key = cache.read("img").mask_key
    assert cache.read("img").mask_key == key == cache.read("img", upscale=True).mask_key == cache.reader().read("img").mask_key
    assert cache.manifest().loc[0, "mask_key"] == key
    cache.write_manifest()
    assert cache.manifest().loc[0, "mask_key"] == key  # also from manifest.csv

    time.sleep(0.01)
    write_entry(cache, "img", seed=1)  # the same maps written again, later: same identity
    assert cache.read("img").mask_key == key
    other = MaskCache(tmp_path / "two")
    write_entry(other, "img", seed=1, shape=(64, 48))
    assert other.read("img").mask_key == key  # another folder, same maps and key

    write_entry(cache, "img", seed=2)
    changed_data = cache.read("img").mask_key
    write_entry(cache, "img", seed=1, key=OTHER_KEY)  # OTHER_KEY shares KEY's first 12 characters
    changed_params = cache.read("img").mask_key
    assert len({key, changed_data, changed_params}) == 3
    assert changed_data.split("-")[0] == key.split("-")[0] and changed_params.split("-")[1] == key.split("-")[1]


_OPENED: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_record_opens)  # audit hooks cannot be removed; it records only inside the test below


def test_reading_an_entry_opens_its_data_file_once(tmp_path):
    global _OPENED
    cache = MaskCache(tmp_path)
    cells, _ = write_entry(cache, "img", seed=1)
    data = str(cache.data_path("img"))
    for upscale in (False, True):
        _OPENED = []
        try:
            entry = cache.read("img", upscale=upscale)
        finally:
            opened, _OPENED = _OPENED, None
        assert opened.count(data) == 1, opened
    np.testing.assert_array_equal(entry.cells, cv2.resize(cells, (192, 256), interpolation=cv2.INTER_NEAREST))


def test_writers_record_readable_params_and_refuse_non_json_ones(tmp_path):
    cache = MaskCache(tmp_path)
    params = {"backend": "hpa", "scale": 0.25, "weights_sha256": {"cell": "c" * 64}}
    write_entry(cache, "img", params=params)
    params["scale"] = 9.0  # the cache kept its own copy
    sidecar = json.loads(cache.sidecar_path("img").read_text())
    assert sidecar["params"] == {"backend": "hpa", "scale": 0.25, "weights_sha256": {"cell": "c" * 64}}
    assert sidecar["mask_key"] == cache.read("img").mask_key
    with pytest.raises(CacheError, match="JSON"):
        write_entry(cache, "bad", params={"scale": np.float32(0.25)})
    with pytest.raises(CacheError, match="JSON"):
        cache.write_failure("bad", "boom", params_hash=KEY, backend=BACKEND, params={"x": object()})
    assert cache.ids() == ["img"]


@pytest.mark.parametrize("make, match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "holds no entries"),
    (lambda root: MaskCache(root).write_failure("a", "boom", params_hash=KEY, backend=BACKEND),
     r"no usable entry \(1 failed"),
])
def test_a_missing_or_empty_cache_folder_is_named(tmp_path, make, match):
    root = tmp_path / "masks"
    make(root)
    with pytest.raises(CacheError, match=match) as info:
        MaskCache(root).reader()
    assert str(root) in str(info.value) and "cellcls segment" in str(info.value)


def test_commands_refuse_a_missing_or_mixed_cache_with_one_line(tmp_path, capsys):
    from cellcls.cli import main

    mixed = mixed_cache(tmp_path / "mixed")
    sample = tmp_path / "sample.csv"
    sample.write_text("ID,ImageWidth,ImageHeight,PredictionString\none-0,48,64,0 1 eNoLCAgIMAEABJkBdQ==\n")
    labels = tmp_path / "train.csv"
    labels.write_text("ID,Label\nx,0|1\ny,2\n")
    code = main(["prior-submission", "--masks", str(mixed.root), "--sample", str(sample), "--labels", str(labels),
                 "--out", str(tmp_path / "sub.csv"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.count("\n") == 0 and "mixes 2 parameter sets" in err and "scale 0.5" in err
    assert not (tmp_path / "sub.csv").exists()

    missing = tmp_path / "nonexistent"
    assert main(["segment-score", "--masks", str(missing), "--truth", str(tmp_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"mask cache folder {missing} does not exist" in err


# --------------------------------------------------------------------- the segment stage's key and warning
def test_hpa_key_holds_the_preprocessing_version_and_classical_its_method_version(monkeypatch):
    from torch import nn

    import segment.classical
    import segment.predict
    from segment.backends import ClassicalBackend, HpaBackend

    hpa = HpaBackend.from_networks(nn.Identity(), nn.Identity(), weights_id="w", scale=0.25)
    classical = ClassicalBackend(scale=1.0, image_scale=0.25)
    before = hpa.params_hash(), classical.params_hash()
    assert hpa.key_params()["preprocess_version"] == segment.predict.PREPROCESS_VERSION
    monkeypatch.setattr(segment.predict, "PREPROCESS_VERSION", segment.predict.PREPROCESS_VERSION + 1)
    monkeypatch.setattr(segment.classical, "_BACKEND_VERSION", "classical/999")
    assert hpa.params_hash() != before[0] and classical.params_hash() != before[1]
    json.dumps(hpa.key_params()), json.dumps(classical.key_params())  # recorded as JSON in the sidecars


def test_a_run_that_would_mix_the_folder_warns_and_a_full_rerun_does_not(tmp_path, caplog):
    from cellcls.synth import generate_world
    from segment.backends import ClassicalBackend
    from segment.pipeline import run_segmentation

    generate_world(tmp_path / "world", n_train=3, n_test=0, size_px=128, seed=2, progress=False)
    images, out = tmp_path / "world" / "train", tmp_path / "masks"
    ids = sorted(p.name[: -len("_red.png")] for p in images.glob("*_red.png"))
    one, half = ClassicalBackend(scale=1.0, image_scale=0.25), ClassicalBackend(scale=0.5, image_scale=0.25)
    run_segmentation(images, out, one, num_workers=0, progress=False)
    assert MaskCache(out).reader().params == one.key_params()

    caplog.set_level("WARNING", logger="segment.pipeline")
    run_segmentation(images, out, half, ids=ids[:1], num_workers=0, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "holds 2 entries made with backend classical, scale 1" in warnings[0]
    assert "this run (backend classical, scale 0.5" in warnings[0] and "will refuse it" in warnings[0]
    with pytest.raises(CacheError, match="mixes 2 parameter sets"):
        MaskCache(out).reader()

    caplog.clear()
    run_segmentation(images, out, half, num_workers=0, progress=False)  # every image at scale 0.5 now
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    reader = MaskCache(out).reader()
    assert reader.ids() == ids and reader.scale == 0.5 and reader.params_hash == half.params_hash()
