"""``cellcls resize``: a resized copy of an image folder that reads like the originals.

What a user relies on: the longer side becomes --size with the aspect kept (never enlarged), values
are the INTER_AREA average of the original in its own dtype (8 or 16 bit), a re-run skips what is
done and redoes what is missing or wrong, a corrupt image costs only itself (logged by ID, exit 3),
and bad options stop the run with exit 1 before anything is written.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellcls.cli import main
from cellcls.classes import CHANNELS
from cellcls.errors import ParameterError
from cellcls.io import read_image, write_image
from train.resize import EXIT_FAILURES, MANIFEST_NAME, is_resized, resize_folder, target_shape


def _make_folder(folder: Path, shapes: dict[str, tuple[int, int]], dtype=np.uint8,
                 seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max
    images = {}
    for image_id, (h, w) in shapes.items():
        image = rng.integers(0, high, size=(h, w, len(CHANNELS)), endpoint=True).astype(dtype)
        write_image(folder, image_id, image)
        images[image_id] = image
    return images


def _area(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(image[..., c], (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
                     for c in range(image.shape[2])], axis=-1)


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.png")}


# --------------------------------------------------------------------------- the size rule
def test_target_shape_keeps_aspect_and_never_enlarges():
    assert target_shape((2048, 2048), 512) == (512, 512)
    assert target_shape((1728, 1728), 1024) == (1024, 1024)
    assert target_shape((1000, 3000), 768) == (256, 768)  # wide: width is the longer side
    assert target_shape((3000, 1000), 768) == (768, 256)  # tall
    assert target_shape((2047, 2048), 512) == (512, 512)  # round(2047 * 0.25) = 512
    assert target_shape((10, 4000), 100) == (1, 100)  # at least one pixel
    assert target_shape((300, 200), 512) == (300, 200)  # already small enough: as it is
    with pytest.raises(ParameterError):
        target_shape((64, 64), 0)


# --------------------------------------------------------------------------- values and dtypes
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_copy_is_area_average_in_the_source_dtype(tmp_path, dtype):
    src, out = tmp_path / "src", tmp_path / "out"
    shapes = {"square": (96, 96), "wide": (48, 96), "tall": (90, 60), "small": (20, 24)}
    originals = _make_folder(src, shapes, dtype=dtype)
    summary = resize_folder(src, out, size=32, workers=0, progress=False)
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (4, 0, 0, 0)
    expected_shapes = {"square": (32, 32), "wide": (16, 32), "tall": (32, 21), "small": (20, 24)}
    for image_id, image in originals.items():
        copy = read_image(out, image_id)
        assert copy.dtype == dtype
        assert copy.shape[:2] == expected_shapes[image_id]
        np.testing.assert_array_equal(copy, _area(image, expected_shapes[image_id]))
    record = json.loads((out / MANIFEST_NAME).read_text())
    assert record["size"] == 32 and record["count"] == 4 and record["failed"] == 0
    assert record["source"] == str(src.resolve())
    assert not list(out.glob(".partial-*"))  # no temporary folders left


def test_worker_processes_write_the_same_files(tmp_path):
    src = tmp_path / "src"
    _make_folder(src, {f"img{i}": (64, 80) for i in range(5)}, dtype=np.uint16, seed=3)
    resize_folder(src, tmp_path / "inline", size=40, workers=0, progress=False)
    summary = resize_folder(src, tmp_path / "pool", size=40, workers=2, progress=False)
    assert summary.workers == 2 and summary.done == 5
    inline = sorted((tmp_path / "inline").glob("*.png"))
    assert len(inline) == 20
    for path in inline:
        assert (tmp_path / "pool" / path.name).read_bytes() == path.read_bytes()


def test_tiff_source_becomes_png(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    image = np.random.default_rng(1).integers(0, 65535, size=(40, 40, 4), endpoint=True).astype(np.uint16)
    write_image(src, "t", image, ext="tif")
    resize_folder(src, out, size=20, workers=0, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.suffix) == sorted(
        [f"t_{c}.png" for c in CHANNELS] + [MANIFEST_NAME])
    np.testing.assert_array_equal(read_image(out, "t"), _area(image, (20, 20)))


# --------------------------------------------------------------------------- resuming
def test_rerun_skips_done_images_and_redoes_missing_or_wrong_ones(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    originals = _make_folder(src, {"a": (64, 64), "b": (64, 64), "c": (64, 64)})
    resize_folder(src, out, size=32, workers=0, progress=False)
    before = _mtimes(out)

    again = resize_folder(src, out, size=32, workers=0, progress=False)
    assert (again.done, again.skipped) == (0, 3)
    assert _mtimes(out) == before  # nothing rewritten

    (out / "b_green.png").unlink()  # a run killed between two channel files
    cv2.imwrite(str(out / "c_red.png"), np.zeros((10, 10), np.uint8))  # a file of the wrong size
    (out / ".partial-a.999").mkdir()  # the temporary folder of an interrupted run
    assert not is_resized(src, out, "b", size=32) and not is_resized(src, out, "c", size=32)
    assert is_resized(src, out, "a", size=32)

    third = resize_folder(src, out, size=32, workers=0, progress=False)
    assert (third.done, third.skipped) == (2, 1)
    for image_id in "bc":
        np.testing.assert_array_equal(read_image(out, image_id), _area(originals[image_id], (32, 32)))
    after = _mtimes(out)
    assert all(after[f"a_{c}.png"] == before[f"a_{c}.png"] for c in CHANNELS)
    assert not (out / ".partial-a.999").exists()


def test_overwrite_redoes_everything(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _make_folder(src, {"a": (64, 64), "b": (64, 64)})
    resize_folder(src, out, size=32, workers=0, progress=False)
    summary = resize_folder(src, out, size=32, workers=0, overwrite=True, progress=False)
    assert (summary.done, summary.skipped) == (2, 0)


def test_another_size_into_the_same_folder_is_refused(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _make_folder(src, {"a": (64, 64)})
    resize_folder(src, out, size=32, workers=0, progress=False)
    with pytest.raises(ParameterError, match="--size 32"):
        resize_folder(src, out, size=16, workers=0, progress=False)
    summary = resize_folder(src, out, size=16, workers=0, overwrite=True, progress=False)
    assert summary.done == 1 and read_image(out, "a").shape == (16, 16, 4)


# --------------------------------------------------------------------------- failures
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_corrupt_image_is_reported_and_the_rest_done(tmp_path, caplog):
    src, out = tmp_path / "src", tmp_path / "out"
    _make_folder(src, {"good1": (64, 64), "broken": (64, 64), "good2": (64, 64)})
    _truncate(src / "broken_yellow.png")
    with caplog.at_level(logging.ERROR):
        summary = resize_folder(src, out, size=32, workers=0, progress=False)
    assert (summary.done, summary.failed, summary.exit_code) == (2, 1, EXIT_FAILURES)
    assert list(summary.failures) == ["broken"] and "truncated" in summary.failures["broken"]
    assert any("broken" in r.getMessage() for r in caplog.records)
    assert not list(out.glob("broken_*"))  # nothing half-written for the failed image
    assert is_resized(src, out, "good1", size=32) and is_resized(src, out, "good2", size=32)
    assert json.loads((out / MANIFEST_NAME).read_text())["failed_ids"] == ["broken"]


def test_cli_exit_codes(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "out"
    _make_folder(src, {"x1": (48, 48), "x2": (48, 48), "x3": (48, 48)})
    ids = tmp_path / "ids.csv"
    ids.write_text("ID,Label\nx1,0\nx3,1|2\n")
    common = ["resize", "--images", str(src), "--out", str(out), "--no-progress", "--num-workers", "0"]

    assert main([*common, "--size", "24", "--ids", str(ids)]) == 0
    assert sorted(p.name.split("_")[0] for p in out.glob("*.png")) == ["x1"] * 4 + ["x3"] * 4
    assert "resized 2 image(s)" in capsys.readouterr().out

    _truncate(src / "x2_red.png")
    assert main([*common, "--size", "24"]) == EXIT_FAILURES  # x1, x3 skipped, x2 failed
    assert "x2" in capsys.readouterr().out

    assert main([*common, "--size", "12"]) == 1  # another size into the same --out
    assert main([*common, "--size", "0"]) == 1
    assert main(["resize", "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"),
                 "--size", "24", "--no-progress"]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        main(["resize", "--images", str(src), "--out", str(out)])  # --size missing
    assert usage.value.code == 2
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").glob("*.png"))
    assert os.listdir(out)  # the first run's output survived the refused ones
