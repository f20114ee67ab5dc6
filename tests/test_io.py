"""Reading/writing samples: round trips, resizing, headers, and every bad-input error."""
from __future__ import annotations

import logging
import re

import cv2
import numpy as np
import pytest
import tifffile

from cellcls import io
from cellcls.classes import CHANNELS
from cellcls.errors import (
    ChannelMismatchError,
    MissingChannelError,
    UnreadableImageError,
    UnsupportedImageError,
)


def _random_image(rng, shape=(37, 53), dtype=np.uint8):
    top = np.iinfo(dtype).max
    return rng.integers(0, top + 1, size=(*shape, 4), dtype=np.int64).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("ext", ["png", "tif", "tiff"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_lossless_round_trip_keeps_values_and_dtype(tmp_path, rng, ext, dtype):
    image = _random_image(rng, dtype=dtype)
    paths = io.write_image(tmp_path, "s1", image, ext=ext)
    assert [p.name for p in paths.values()] == [f"s1_{c}.{ext}" for c in CHANNELS]
    back = io.read_image(tmp_path, "s1")
    assert back.dtype == dtype
    np.testing.assert_array_equal(back, image)


def test_jpeg_round_trip_is_close_and_8_bit_only(tmp_path, rng):
    smooth = cv2.GaussianBlur(_random_image(rng, (64, 64)), (0, 0), 3)
    io.write_image(tmp_path, "j", smooth, ext="jpg")
    back = io.read_image(tmp_path, "j")
    assert back.dtype == np.uint8 and back.shape == (64, 64, 4)
    assert np.abs(back.astype(int) - smooth).mean() < 3
    with pytest.raises(UnsupportedImageError, match="8 bits"):
        io.write_image(tmp_path, "j16", smooth.astype(np.uint16), ext="jpg")


def test_channels_argument_selects_and_orders(tmp_path, rng):
    image = _random_image(rng)
    io.write_image(tmp_path, "s", image)
    back = io.read_image(tmp_path, "s", channels=("blue", "red"), threads=1)
    np.testing.assert_array_equal(back, image[..., [2, 0]])


def test_ids_with_underscores_and_mixed_formats(tmp_path, rng):
    image = _random_image(rng, dtype=np.uint16)
    io.write_image(tmp_path, "10005_921_B9_1", image, ext="tif")
    np.testing.assert_array_equal(io.read_image(tmp_path, "10005_921_B9_1"), image)
    # one channel in another format is still found
    (tmp_path / "10005_921_B9_1_red.tif").unlink()
    cv2.imwrite(str(tmp_path / "10005_921_B9_1_red.png"), image[..., 0])
    np.testing.assert_array_equal(io.read_image(tmp_path, "10005_921_B9_1"), image)


def test_mixed_bit_depths_are_promoted_exactly(tmp_path, rng):
    image8 = _random_image(rng)
    io.write_image(tmp_path, "m", image8)
    green16 = (image8[..., 1].astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "m_green.png"), green16)
    back = io.read_image(tmp_path, "m")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, image8.astype(np.uint16) * 257)
    np.testing.assert_array_equal(io.to_float01(back), io.to_float01(image8))


# --------------------------------------------------------------------------- errors
def test_missing_channel_names_id_channel_and_every_path(tmp_path, rng):
    io.write_image(tmp_path, "s", _random_image(rng))
    (tmp_path / "s_yellow.png").unlink()
    with pytest.raises(MissingChannelError) as info:
        io.read_image(tmp_path, "s")
    message = str(info.value)
    assert "'s'" in message and "'yellow'" in message
    for ext in io.EXTENSIONS:
        assert str(tmp_path / f"s_yellow.{ext}") in message
    assert isinstance(info.value, FileNotFoundError)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(MissingChannelError, match="does not exist"):
        io.read_image(tmp_path / "nope", "s")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_png_raises_instead_of_zeros(tmp_path, rng, dtype, keep):
    io.write_image(tmp_path, "t", _random_image(rng, (64, 64), dtype))
    path = tmp_path / "t_blue.png"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UnreadableImageError) as info:
        io.read_image(tmp_path, "t")
    assert "'t'" in str(info.value) and str(path) in str(info.value)


def test_truncated_jpeg_raises_instead_of_grey(tmp_path, rng):
    io.write_image(tmp_path, "t", _random_image(rng, (64, 64)), ext="jpg")
    path = tmp_path / "t_green.jpg"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(UnreadableImageError, match="truncated"):
        io.read_image(tmp_path, "t")


def test_truncated_tiff_raises(tmp_path, rng):
    io.write_image(tmp_path, "t", _random_image(rng, (64, 64), np.uint16), ext="tif")
    path = tmp_path / "t_red.tif"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UnreadableImageError, match="t_red.tif"):
        io.read_image(tmp_path, "t")


@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
def test_garbage_file_raises(tmp_path, rng, ext):
    io.write_image(tmp_path, "g", _random_image(rng), ext=ext)
    (tmp_path / f"g_red.{ext}").write_bytes(b"this is not an image at all" * 20)
    with pytest.raises(UnreadableImageError, match=f"g_red.{ext}"):
        io.read_image(tmp_path, "g")


def test_corrupt_png_data_raises(tmp_path, rng):
    io.write_image(tmp_path, "c", _random_image(rng, (64, 64)))
    path = tmp_path / "c_red.png"
    data = bytearray(path.read_bytes())
    data[60:200] = bytes(140)  # inside IDAT: the structure is intact, the data is not
    path.write_bytes(bytes(data))
    with pytest.raises(UnreadableImageError, match="c_red.png"):
        io.read_image(tmp_path, "c")


def test_channel_size_mismatch_names_both_files(tmp_path, rng):
    io.write_image(tmp_path, "m", _random_image(rng, (40, 40)))
    cv2.imwrite(str(tmp_path / "m_blue.png"), np.zeros((40, 41), np.uint8))
    with pytest.raises(ChannelMismatchError) as info:
        io.read_image(tmp_path, "m")
    message = str(info.value)
    assert "m_red.png" in message and "m_blue.png" in message and "40x41" in message
    with pytest.raises(ChannelMismatchError, match="m_blue.png"):
        io.image_shape(tmp_path, "m")


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int16])
def test_unsupported_dtype(tmp_path, rng, dtype):
    io.write_image(tmp_path, "d", _random_image(rng), ext="tif")
    tifffile.imwrite(tmp_path / "d_green.tif", np.ones((37, 53), dtype))
    with pytest.raises(UnsupportedImageError, match=f"d_green.tif.*{np.dtype(dtype).name}"):
        io.read_image(tmp_path, "d")


def test_colour_png_is_unsupported(tmp_path, rng):
    io.write_image(tmp_path, "c", _random_image(rng))
    cv2.imwrite(str(tmp_path / "c_red.png"), _random_image(rng)[..., :3])
    with pytest.raises(UnsupportedImageError, match="3 colour planes"):
        io.read_image(tmp_path, "c")


def test_one_dimensional_and_multipage_tiffs_are_unsupported(tmp_path, rng):
    io.write_image(tmp_path, "o", _random_image(rng), ext="tif")
    tifffile.imwrite(tmp_path / "o_red.tif", np.arange(10, dtype=np.uint8))
    with pytest.raises(UnsupportedImageError, match="o_red.tif"):
        io.read_image(tmp_path, "o")
    tifffile.imwrite(tmp_path / "o_red.tif", np.zeros((3, 37, 53), np.uint8), photometric="minisblack")
    with pytest.raises(UnsupportedImageError, match="o_red.tif"):
        io.read_image(tmp_path, "o")


def test_single_plane_with_singleton_axis_is_accepted(tmp_path, rng):
    image = _random_image(rng, dtype=np.uint16)
    io.write_image(tmp_path, "s", image, ext="tif")
    tifffile.imwrite(tmp_path / "s_red.tif", image[None, ..., 0])
    np.testing.assert_array_equal(io.read_image(tmp_path, "s"), image)


def test_write_rejects_bad_arrays(tmp_path):
    with pytest.raises(UnsupportedImageError, match=r"\(H, W, 4\)"):
        io.write_image(tmp_path, "w", np.zeros((5, 5, 3), np.uint8))
    with pytest.raises(UnsupportedImageError, match="float64"):
        io.write_image(tmp_path, "w", np.zeros((5, 5, 4)))


# --------------------------------------------------------------------------- resizing
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("kwargs", [{"scale": 0.25}, {"scale": 0.3}, {"size": (13, 29)}])
def test_resized_equals_inter_area_of_full_image(tmp_path, rng, dtype, kwargs):
    image = cv2.GaussianBlur(_random_image(rng, (96, 120), dtype), (0, 0), 2)
    io.write_image(tmp_path, "r", image)
    small, original = io.read_image_resized(tmp_path, "r", **kwargs)
    assert original == (96, 120)
    h, w = kwargs.get("size") or io.scaled_shape(original, kwargs["scale"])
    assert small.shape == (h, w, 4) and small.dtype == dtype
    full = io.read_image(tmp_path, "r")
    for c in range(4):
        expected = cv2.resize(full[..., c], (w, h), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(small[..., c], expected)


def test_resized_without_scale_or_size_is_the_full_image(tmp_path, rng):
    image = _random_image(rng)
    io.write_image(tmp_path, "r", image)
    same, original = io.read_image_resized(tmp_path, "r")
    np.testing.assert_array_equal(same, image)
    with pytest.raises(ValueError, match="not both"):
        io.read_image_resized(tmp_path, "r", scale=0.5, size=(4, 4))


def test_scaled_shape_rounds_like_python():
    assert io.scaled_shape((1728, 2048), 0.25) == (432, 512)
    assert io.scaled_shape((10, 7), 0.5) == (5, 4)  # round(3.5) == 4
    assert io.scaled_shape((3, 3), 0.01) == (1, 1)


# --------------------------------------------------------------------------- float scaling
def test_to_float01_scales_each_depth():
    np.testing.assert_allclose(io.to_float01(np.array([0, 51, 255], np.uint8)), [0, 0.2, 1], rtol=1e-7)
    np.testing.assert_allclose(io.to_float01(np.array([0, 65535], np.uint16)), [0, 1])
    out = io.to_float01(np.array([0.0, 0.5, 1.0]))
    assert out.dtype == np.float32
    for bad in (np.array([0.5, 1.5]), np.array([np.nan]), np.array([1, 2], np.int32)):
        with pytest.raises(UnsupportedImageError):
            io.to_float01(bad)


# --------------------------------------------------------------------------- headers and listing
@pytest.mark.parametrize("ext,dtype", [("png", np.uint8), ("png", np.uint16), ("tif", np.uint16), ("jpg", np.uint8)])
def test_image_shape_from_headers(tmp_path, rng, ext, dtype):
    io.write_image(tmp_path, "h", _random_image(rng, (23, 71), dtype), ext=ext)
    assert io.image_shape(tmp_path, "h") == (23, 71)


def test_image_shape_of_garbage_raises(tmp_path, rng):
    io.write_image(tmp_path, "h", _random_image(rng))
    (tmp_path / "h_green.png").write_bytes(b"garbage")
    with pytest.raises(UnreadableImageError, match="h_green.png"):
        io.image_shape(tmp_path, "h")


def test_list_image_ids_keeps_complete_samples_and_warns(tmp_path, rng, caplog):
    for image_id in ("b_2", "a", "c"):
        io.write_image(tmp_path, image_id, _random_image(rng, (8, 8)))
    (tmp_path / "c_red.png").unlink()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a_purple.png").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert io.list_image_ids(tmp_path) == ["a", "b_2"]
    assert "c (has green/blue/yellow)" in caplog.text


@pytest.mark.parametrize("ext", ["png", "jpg", "tif"])
def test_zero_byte_channel_file_is_named_as_empty(tmp_path, rng, ext):
    io.write_image(tmp_path, "z", _random_image(rng, (12, 10)), ext=ext)
    empty = tmp_path / f"z_yellow.{ext}"
    empty.write_bytes(b"")
    message = f"{empty}: empty file (0 bytes)"
    with pytest.raises(UnreadableImageError, match=re.escape(message)) as caught:
        io.read_image(tmp_path, "z")
    assert "signature" not in str(caught.value) and "'z'" in str(caught.value)
    with pytest.raises(UnreadableImageError, match=re.escape(message)):
        io.image_shape(tmp_path, "z")
