"""The competition mask codec: exact format, strict decoding, label maps in run space."""
from __future__ import annotations

import base64
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from cellcls import rle
from cellcls.errors import MaskCodecError

# pycocotools 2.0.11 decode() warns under numpy 2; its own business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SHAPES = st.tuples(st.integers(1, 13), st.integers(1, 13))


def reference_encode(mask: np.ndarray) -> str:
    """HPA_FACTS §2, done literally."""
    h, w = mask.shape
    fortran = np.asfortranarray(mask.reshape(h, w, 1).astype(np.uint8))
    counts = coco_mask.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode()


def reference_decode(text: str, shape) -> np.ndarray:
    counts = zlib.decompress(base64.b64decode(text))
    return coco_mask.decode({"size": list(shape), "counts": counts}).astype(bool)


def b64z(raw: bytes) -> str:
    return base64.b64encode(zlib.compress(raw, 9)).decode()


@settings(max_examples=150, deadline=None)
@given(arrays(bool, SHAPES))
def test_round_trip_matches_reference_chain(mask):
    text = rle.encode(mask)
    assert text == reference_encode(mask)
    decoded = rle.decode(text, mask.shape)
    assert decoded.dtype == bool and decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, mask)
    np.testing.assert_array_equal(reference_decode(text, mask.shape), mask)
    assert rle.area(text) == int(mask.sum())
    assert int(rle.decode_counts(text).sum()) == mask.size


@settings(max_examples=150, deadline=None)
@given(arrays(bool, SHAPES))
def test_bbox_is_half_open_extent(mask):
    text = rle.encode(mask)
    if not mask.any():
        assert rle.bbox(text, mask.shape) == (0, 0, 0, 0)
        return
    ys, xs = np.nonzero(mask)
    assert rle.bbox(text, mask.shape) == (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5), (64, 17)])
def test_special_masks(shape):
    empty = np.zeros(shape, bool)
    full = np.ones(shape, bool)
    single = empty.copy()
    single[shape[0] // 2, shape[1] - 1] = True
    for mask in (empty, full, single):
        text = rle.encode(mask)
        assert text == reference_encode(mask)
        np.testing.assert_array_equal(rle.decode(text, shape), mask)
    assert rle.area(rle.encode(full)) == full.size
    assert rle.bbox(rle.encode(full), shape) == (0, 0, *shape)


def test_integer_masks_mean_nonzero():
    labels = np.array([[0, 3], [1, 0]], dtype=np.int32)
    np.testing.assert_array_equal(rle.decode(rle.encode(labels), (2, 2)), labels != 0)


@pytest.mark.parametrize("shape", [(2048, 2048), (1728, 1728), (3072, 3072), (5, 7), (1, 1)])
def test_sample_placeholder_is_empty_at_any_size(shape):
    mask = rle.decode(rle.EMPTY_MASK_FULL_FRAME, shape)
    assert mask.shape == shape and not mask.any()
    assert rle.area(rle.EMPTY_MASK_FULL_FRAME) == 0
    assert rle.bbox(rle.EMPTY_MASK_FULL_FRAME, shape) == (0, 0, 0, 0)
    assert rle.to_coco(rle.EMPTY_MASK_FULL_FRAME, shape)["size"] == list(shape)
    assert coco_mask.area(rle.to_coco(rle.EMPTY_MASK_FULL_FRAME, shape)) == 0


def test_wrong_size_raises():
    text = rle.encode(np.eye(4, dtype=bool))
    for shape in [(4, 5), (5, 4), (2, 8), (3, 3)]:
        if shape == (2, 8):  # same pixel count, other layout: the string cannot tell
            continue
        with pytest.raises(MaskCodecError, match="another size"):
            rle.decode(text, shape)
        with pytest.raises(MaskCodecError):
            rle.bbox(text, shape)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("abc$", "base64"),
        (rle.encode(np.eye(9, dtype=bool))[:-3], "base64"),
        (base64.b64encode(b"not zlib at all").decode(), "zlib"),
        (base64.b64encode(zlib.compress(b"0123456789" * 20)[:-6]).decode(), "truncated"),
        (base64.b64encode(zlib.compress(b"05") + b"xx").decode(), "after its zlib"),
        (b64z(b""), "no RLE"),
        (b64z(b"0 1"), "alphabet"),
        (b64z(b"3P"), "middle of a number"),
        (b64z(b"3" + b"P" * 20 + b"1"), "too long"),
        (b64z(b"5@"), "negative"),
    ],
)
def test_malformed_strings_raise(text, match):
    with pytest.raises(MaskCodecError, match=match):
        rle.decode(text, (3, 3))


@pytest.mark.parametrize("shape", [(0, 3), (3, -1), ("a", 2), (3,)])
def test_bad_shape_raises(shape):
    with pytest.raises(MaskCodecError, match="size"):
        rle.decode(rle.encode(np.ones((3, 3), bool)), shape)


def test_encode_rejects_non_2d():
    for bad in (np.zeros(5, bool), np.zeros((2, 2, 2), bool), np.zeros((0, 4), bool)):
        with pytest.raises(MaskCodecError):
            rle.encode(bad)


def test_non_string_raises():
    with pytest.raises(MaskCodecError):
        rle.decode(None, (2, 2))  # type: ignore[arg-type]


def test_coco_round_trip():
    mask = np.zeros((6, 4), bool)
    mask[1:5, 1:3] = True
    text = rle.encode(mask)
    coco = rle.to_coco(text, mask.shape)
    np.testing.assert_array_equal(coco_mask.decode(coco).astype(bool), mask)
    assert rle.from_coco(coco) == text
    runs = rle.decode_counts(text)
    assert rle.from_coco({"size": [6, 4], "counts": runs.tolist()}) == text
    assert rle.area(coco) == 8
    with pytest.raises(MaskCodecError):
        rle.from_coco({"size": [6, 5], "counts": runs.tolist()})


@pytest.mark.parametrize("n_src", [1, 3, 7, 100, 432, 512, 768])
def test_nearest_index_equals_cv2(n_src):
    for n_dst in (1, 2, 5, 13, 99, 1728, 2048, 3072):
        ramp = np.tile(np.arange(n_src, dtype=np.uint16), (2, 1))
        resized = cv2.resize(ramp, (n_dst, 2), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resized.reshape(2, n_dst)[0], rle.nearest_source_index(n_src, n_dst))
        resized_t = cv2.resize(np.ascontiguousarray(ramp.T), (2, n_dst), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(resized_t.reshape(n_dst, 2)[:, 0], rle.nearest_source_index(n_src, n_dst))


def per_cell_reference(labels: np.ndarray, out_shape) -> dict[int, str]:
    big = cv2.resize(labels.astype(np.uint16), (out_shape[1], out_shape[0]), interpolation=cv2.INTER_NEAREST)
    big = big.reshape(out_shape)
    return {int(k): reference_encode(big == k) for k in np.unique(big) if k}


@settings(max_examples=120, deadline=None)
@given(arrays(np.uint16, SHAPES, elements=st.integers(0, 4)), st.integers(1, 40), st.integers(1, 40))
def test_encode_label_map_equals_upscaled_per_cell_encode(labels, out_h, out_w):
    got = rle.encode_label_map(labels, out_shape=(out_h, out_w))
    assert got == per_cell_reference(labels, (out_h, out_w))
    assert list(got) == sorted(got)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int32, np.int64, np.uint8])
def test_encode_label_map_realistic_and_dtypes(dtype):
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:80]
    seeds = rng.uniform(0, 80, (12, 2))
    dist = np.hypot(yy[..., None] - seeds[:, 0], xx[..., None] - seeds[:, 1])
    labels = (np.argmin(dist, axis=-1) + 1) * (dist.min(axis=-1) < 14)
    labels = labels.astype(dtype)
    for out_shape in [(384, 320), (96, 80), (432, 433), (50, 60)]:
        got = rle.encode_label_map(labels, out_shape=out_shape)
        assert got == per_cell_reference(labels, out_shape)
    assert rle.encode_label_map(labels) == per_cell_reference(labels, labels.shape)


def test_encode_label_map_edge_cases():
    assert rle.encode_label_map(np.zeros((4, 4), np.uint16), out_shape=(16, 16)) == {}
    full = np.full((2, 3), 7, np.uint16)
    assert rle.encode_label_map(full, out_shape=(4, 6)) == {7: rle.encode(np.ones((4, 6), bool))}
    with pytest.raises(MaskCodecError, match="integers"):
        rle.encode_label_map(np.zeros((4, 4), np.float32))
    with pytest.raises(MaskCodecError, match="negative"):
        rle.encode_label_map(np.array([[0, -1]], np.int32))
    with pytest.raises(MaskCodecError, match="2-D"):
        rle.encode_label_map(np.zeros((2, 2, 2), np.uint16))
    labels = np.array([[1, 2]], np.uint16)
    before = labels.copy()
    rle.encode_label_map(labels, out_shape=(3, 3))
    np.testing.assert_array_equal(labels, before)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_batch_parse_equals_one_by_one(data):
    shape = data.draw(SHAPES)
    masks = data.draw(st.lists(arrays(bool, shape), min_size=1, max_size=6))
    texts = [rle.encode(m) for m in masks] + [rle.EMPTY_MASK_FULL_FRAME]
    rles, areas = rle.to_coco_many(texts, shape)
    assert areas.tolist() == [int(m.sum()) for m in masks] + [0]
    assert rle.areas(texts).tolist() == areas.tolist()
    for text, coco in zip(texts, rles):
        assert coco == rle.to_coco(text, shape)
        np.testing.assert_array_equal(coco_mask.decode(coco).astype(bool), rle.decode(text, shape))


def test_batch_parse_rejects_any_bad_member():
    good = rle.encode(np.eye(5, dtype=bool))
    for bad in (rle.encode(np.eye(6, dtype=bool)), b64z(b"3P"), "abc$"):
        with pytest.raises(MaskCodecError):
            rle.to_coco_many([good, bad, good], (5, 5))
    assert rle.to_coco_many([], (5, 5))[0] == []
