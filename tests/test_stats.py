"""Channel statistics: exact against numpy, JSON round trip, validation, ``cellcls stats``."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from cellcls import io
from cellcls.cli import main
from cellcls.errors import CellclsError, MissingChannelError
from cellcls.stats import channel_stats, image_moments, read_stats, write_stats


def _make_folders(tmp_path):
    """Two folders: 8-bit PNGs of one size, 16-bit TIFFs of another (mixed like train + public HPA)."""
    rng = np.random.default_rng(7)
    images = {}
    for k in range(3):
        img = rng.gamma(2.0, 20.0, size=(48, 64, 4)).clip(0, 255).astype(np.uint8)
        io.write_image(tmp_path / "a", f"a{k}", img)
        images[("a", f"a{k}")] = img
    for k in range(2):
        img = rng.gamma(2.0, 3000.0, size=(40, 40, 4)).clip(0, 65535).astype(np.uint16)
        io.write_image(tmp_path / "b", f"b{k}", img, ext="tif")
        images[("b", f"b{k}")] = img
    return images


def _numpy_stats(arrays):
    # float64 reference: to_float01's float32 would itself be off by ~1e-8
    pixels = np.concatenate([a.reshape(-1, 4) / float(np.iinfo(a.dtype).max) for a in arrays])
    return pixels.mean(axis=0), pixels.std(axis=0), len(pixels)


def test_stats_equal_numpy_over_mixed_depths_and_folders(tmp_path):
    images = _make_folders(tmp_path)
    stats = channel_stats([tmp_path / "a", tmp_path / "b"], progress=False)
    mean, std, n = _numpy_stats(images.values())
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-10)
    assert stats["n_images"] == 5 and stats["n_pixels"] == n and stats["size"] is None
    assert stats["channels"] == ["red", "green", "blue", "yellow"]


def test_stats_with_size_and_ids_use_the_resized_subset(tmp_path):
    images = _make_folders(tmp_path)
    stats = channel_stats([tmp_path / "a", tmp_path / "b"], size=16, ids=["a1", "b0"], progress=False, workers=1)
    resized = [
        np.stack([cv2.resize(images[key][..., c], (16, 16), interpolation=cv2.INTER_AREA) for c in range(4)], -1)
        for key in [("a", "a1"), ("b", "b0")]
    ]
    mean, std, n = _numpy_stats(resized)
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(stats["std"], std, rtol=1e-10)
    assert stats["n_images"] == 2 and n == 512 and stats["size"] == [16, 16]
    with pytest.raises(MissingChannelError, match="nope"):
        channel_stats(tmp_path / "a", ids=["nope"], progress=False)


def test_image_moments_are_exact_for_large_16_bit_values():
    # a float32 running sum of squares would lose these; the exact integer path must not
    image = np.full((300, 300, 1), 65535, np.uint16)
    image[0, 0, 0] = 65534
    n, mean, m2 = image_moments(image)
    x = image.astype(np.float64) / 65535
    assert n == 90000
    np.testing.assert_allclose(mean, x.mean(), rtol=1e-15)
    np.testing.assert_allclose(m2, ((x - x.mean()) ** 2).sum(), rtol=1e-9)


def test_write_read_round_trip_and_validation(tmp_path):
    _make_folders(tmp_path)
    stats = channel_stats(tmp_path / "a", progress=False)
    write_stats(stats, tmp_path / "s.json")
    assert read_stats(tmp_path / "s.json") == stats
    broken = dict(stats)
    del broken["std"]
    (tmp_path / "bad.json").write_text(json.dumps(broken))
    with pytest.raises(CellclsError, match=r"bad\.json.*missing key\(s\) std"):
        read_stats(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({**stats, "mean": [0.1, 0.2]}))
    with pytest.raises(CellclsError, match="short.json.*4 numbers"):
        read_stats(tmp_path / "short.json")
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(CellclsError, match="text.json.*not valid JSON"):
        read_stats(tmp_path / "text.json")
    with pytest.raises(CellclsError, match="does not exist"):
        read_stats(tmp_path / "none.json")


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CellclsError, match="no complete samples"):
        channel_stats(tmp_path / "empty", progress=False)


def test_stats_command(tmp_path, capsys):
    images = _make_folders(tmp_path)
    out = tmp_path / "out" / "stats.json"
    assert main(["stats", "--images", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out), "-q"]) == 0
    stats = read_stats(out)
    mean, _, _ = _numpy_stats(images.values())
    np.testing.assert_allclose(stats["mean"], mean, rtol=1e-12)
    printed = capsys.readouterr().out
    assert "5 images" in printed
    green = next(line for line in printed.splitlines() if line.split()[:1] == ["green"])
    assert float(green.split()[1]) == pytest.approx(mean[1], abs=1e-5)
