"""``cellcls export-masks``: label images at the original size that other tools read back exactly."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile

from cellcls.cli import main
from cellcls.errors import CacheError
from cellcls.masks import MaskCache
from cellcls.masks.export import encode_label_image, export_masks


def _maps(seed: int, shape=(21, 26), top: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, top, shape).astype(np.int64)
    nuclei = np.where(rng.random(shape) < 0.3, cells, 0)
    return cells, nuclei


def _write(cache: MaskCache, image_id: str, cells, nuclei, *, key: str = "key-a", scale: float = 0.25) -> None:
    original = (round(cells.shape[0] / scale), round(cells.shape[1] / scale))
    cache.write(image_id, cells, nuclei, original_shape=original, scale=scale, backend="test", params_hash=key,
                params={"scale": scale})


@pytest.fixture
def cache(tmp_path) -> MaskCache:
    cache = MaskCache(tmp_path / "masks")
    for i, image_id in enumerate(("img-a", "img-b")):
        _write(cache, image_id, *_maps(i))
    return cache


def test_png_round_trip_is_the_cache_upscale_at_the_original_size(cache, tmp_path):
    summary = export_masks(cache.root, tmp_path / "out", nuclei=True, progress=False)
    assert summary.n_images == 2 and summary.n_uint32 == 0
    for image_id in ("img-a", "img-b"):
        entry = cache.read(image_id, upscale=True)
        small = cache.read(image_id)
        for name, expected in (("cells", entry.cells), ("nuclei", entry.nuclei)):
            back = cv2.imread(str(tmp_path / "out" / f"{image_id}_{name}.png"), cv2.IMREAD_UNCHANGED)
            assert back.dtype == np.uint16 and back.shape == entry.original_shape == (84, 104)
            assert np.array_equal(back, expected)
        nearest = cv2.resize(small.cells, (104, 84), interpolation=cv2.INTER_NEAREST)
        assert np.array_equal(cv2.imread(str(tmp_path / "out" / f"{image_id}_cells.png"), cv2.IMREAD_UNCHANGED),
                              nearest)


@pytest.mark.parametrize("compression", ["deflate", "none"])
def test_tiff_round_trip_is_16_bit_when_the_ids_fit(cache, tmp_path, compression):
    export_masks(cache.root, tmp_path / "out", fmt="tiff", compression=compression, progress=False)
    back = tifffile.imread(tmp_path / "out" / "img-a_cells.tif")
    assert back.dtype == np.uint16
    assert np.array_equal(back, cache.read("img-a", upscale=True).cells)
    assert not (tmp_path / "out" / "img-a_nuclei.tif").exists()


def test_ids_above_65535_go_to_32_bit_tiff_and_png_is_refused_before_writing(tmp_path):
    cache = MaskCache(tmp_path / "masks")
    _write(cache, "small", *_maps(0))
    cells, nuclei = _maps(1)
    cells[cells > 0] += 70_000
    nuclei[nuclei > 0] += 70_000
    _write(cache, "wide", cells, nuclei)
    with pytest.raises(CacheError, match=r"wide.*--format tiff"):
        export_masks(cache.root, tmp_path / "png", progress=False)
    assert not (tmp_path / "png").exists()  # checked before anything was written
    summary = export_masks(cache.root, tmp_path / "tif", fmt="tiff", nuclei=True, progress=False)
    assert summary.n_uint32 == 1
    back = tifffile.imread(tmp_path / "tif" / "wide_cells.tif")
    assert back.dtype == np.uint32 and back.max() > 70_000
    assert np.array_equal(back, cache.read("wide", upscale=True).cells)
    assert tifffile.imread(tmp_path / "tif" / "small_cells.tif").dtype == np.uint16


def test_png_encoder_refuses_32_bit_maps():
    with pytest.raises(ValueError, match="16-bit"):
        encode_label_image(np.zeros((4, 4), np.uint32), fmt="png")


def test_a_mixed_cache_and_missing_ids_are_refused(cache, tmp_path, capsys):
    with pytest.raises(CacheError, match="img-zzz"):
        export_masks(cache.root, tmp_path / "out", ids=["img-a", "img-zzz"], progress=False)
    _write(cache, "img-c", *_maps(3), key="key-b", scale=0.5)
    assert main(["export-masks", "--masks", str(cache.root), "--out", str(tmp_path / "out2"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0 and "scale" in err
    assert not (tmp_path / "out2").exists()


def test_command_exports_the_ids_of_a_csv(cache, tmp_path, capsys):
    ids = tmp_path / "ids.csv"
    ids.write_text("ID,Label\nimg-b,0\n")
    assert main(["export-masks", "--masks", str(cache.root), "--out", str(tmp_path / "out"), "--ids", str(ids),
                 "--format", "tiff", "--nuclei", "--no-progress"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img-b_cells.tif", "img-b_nuclei.tif"]
    assert "1 images -> 2 tiff label images" in capsys.readouterr().out
