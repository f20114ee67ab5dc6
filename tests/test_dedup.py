"""Near-duplicate search: planted copies/rotations/flips/re-encodings found, distinct images not."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls import io
from cellcls.cli import main
from cellcls.dedup import (
    DIHEDRAL,
    dct_signature,
    dihedral,
    find_duplicates,
    group_pairs,
    hamming,
    hash_signatures,
    near_duplicate_pairs,
)


def _cells(rng, size=128):
    """An HPA-like 16-bit RGBY field: cells with nuclei, cytoplasm and a patchy protein stain."""
    h = w = size
    planes = np.zeros((4, h, w), np.float32)
    for _ in range(rng.integers(5, 12)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(6, 14)
        cell = np.zeros((h, w), np.float32)
        cv2.ellipse(cell, (int(cx), int(cy)), (int(2 * r), int(1.5 * r)), rng.uniform(0, 180), 0, 360, 1.0, -1)
        nucleus = np.zeros((h, w), np.float32)
        cv2.circle(nucleus, (int(cx), int(cy)), int(r * 0.8), 1.0, -1)
        speckle = (rng.random((h, w)) < rng.uniform(0.05, 0.4)).astype(np.float32)
        planes[0] += cell * rng.uniform(0.2, 0.5)
        planes[1] += cell * speckle * rng.uniform(0.0, 1.0)
        planes[2] += nucleus * rng.uniform(0.4, 0.9)
        planes[3] += cell * rng.uniform(0.2, 0.5)
    planes = np.stack([cv2.GaussianBlur(p, (0, 0), 1.5) for p in planes], -1)
    planes += rng.normal(0.02, 0.01, planes.shape).astype(np.float32)
    return (np.clip(planes, 0, 1) * 65535).round().astype(np.uint16)


def _to_8_bit(image):
    return np.round(image / 257.0).astype(np.uint8)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Folder 'a': 100 distinct images. Folder 'b': planted duplicates of some of them, plus 2 new ones."""
    root = tmp_path_factory.mktemp("dedup")
    rng = np.random.default_rng(42)
    originals = {f"a{k:03d}": _cells(rng) for k in range(100)}
    for image_id, image in originals.items():
        io.write_image(root / "a", image_id, image)
    planted = {
        "copy_of_a000": originals["a000"],
        "rot90_of_a001": np.rot90(originals["a001"]),
        "rot270_of_a002": np.rot90(originals["a002"], 3),
        "flip_of_a003": originals["a003"][:, ::-1],
        "eight_bit_of_a004": _to_8_bit(originals["a004"]),
        "transposed_eight_bit_of_a005": _to_8_bit(originals["a005"]).transpose(1, 0, 2),
        "new_b0": _cells(rng),
        "new_b1": _cells(rng),
    }
    for image_id, image in planted.items():
        io.write_image(root / "b", image_id, np.ascontiguousarray(image), ext="tif" if "rot270" in image_id else "png")
    return root, originals


def test_no_pair_among_100_distinct_images(library):
    root, _ = library
    assert find_duplicates(root / "a", progress=False) == []


def test_planted_duplicates_are_found_across_folders(library):
    root, _ = library
    rows = find_duplicates([root / "a", root / "b"], progress=False)
    groups: dict[int, set[str]] = {}
    for row in rows:
        groups.setdefault(row.group, set()).add(row.image_id)
    expected = [
        {"a000", "copy_of_a000"}, {"a001", "rot90_of_a001"}, {"a002", "rot270_of_a002"},
        {"a003", "flip_of_a003"}, {"a004", "eight_bit_of_a004"}, {"a005", "transposed_eight_bit_of_a005"},
    ]
    assert sorted(groups.values(), key=sorted) == sorted(expected, key=sorted)
    folders = {row.image_id: row.folder for row in rows}
    assert folders["a000"] == str(root / "a") and folders["copy_of_a000"] == str(root / "b")


@pytest.mark.parametrize("t", range(8))
def test_dihedral_coefficients_equal_those_of_the_transformed_image(t):
    image = _cells(np.random.default_rng(t))[:, :96]  # non-square, sides divisible by 32
    transpose, flip_rows, flip_cols = DIHEDRAL[t]
    moved = image.transpose(1, 0, 2) if transpose else image
    moved = moved[::-1] if flip_rows else moved
    moved = np.ascontiguousarray(moved[:, ::-1] if flip_cols else moved)
    coefficients, _ = dct_signature(image)
    np.testing.assert_allclose(dct_signature(moved)[0], dihedral(coefficients, t), atol=1e-4)


def test_banded_search_equals_brute_force():
    rng = np.random.default_rng(3)
    n, threshold = 400, 6
    base = rng.integers(0, 2**63, size=(n, 1, 2), dtype=np.uint64)
    hashes = np.repeat(base, 8, axis=1)
    for t in range(1, 8):  # other orientations: unrelated bits
        hashes[:, t] = rng.integers(0, 2**63, size=(n, 2), dtype=np.uint64)
    # plant near copies: j = i with d bits flipped, found in orientation 0 or via orientation 3
    for j, (i, d) in enumerate([(0, 0), (1, 3), (2, 6), (3, 7), (4, 2)], start=300):
        flipped = hashes[i, 0].copy()
        for bit in rng.choice(126, size=d, replace=False):
            flipped[bit // 63] ^= np.uint64(1 << int(bit % 63))
        hashes[j, 3 if d == 2 else 0] = flipped
    found = near_duplicate_pairs(hashes, threshold=threshold)
    brute = set()
    for i in range(n):
        d = np.min([hamming(hashes[i, t], hashes[:, 0]) for t in range(8)], axis=0)
        for j in np.flatnonzero(d <= threshold):
            if i != j:
                brute.add((min(i, j), max(i, j)))
    assert {(int(i), int(j)) for i, j, _ in found} == brute
    assert {(0, 300), (1, 301), (2, 302), (4, 304)} <= brute and (3, 303) not in brute


def test_blank_green_channel_still_matches_on_blue():
    rng = np.random.default_rng(5)
    image = _cells(rng)
    image[..., 1] = 0
    other = _cells(rng)
    other[..., 1] = 0
    signatures = [dct_signature(x[..., [1, 2]]) for x in (image, np.rot90(image), other)]
    coefficients = np.stack([s[0] for s in signatures])
    flat = np.stack([s[1] for s in signatures])
    assert flat[:, 0].all() and not flat[:, 1].any()
    pairs = near_duplicate_pairs(hash_signatures(coefficients), flat=flat)
    assert [tuple(p[:2]) for p in pairs] == [(0, 1)]


def test_group_pairs_joins_chains():
    groups = group_pairs(6, np.array([[4, 5, 0], [0, 2, 1], [2, 3, 0]]))
    assert groups.tolist() == [0, -1, 0, 0, 1, 1]


def test_dedup_command(library, tmp_path, capsys):
    root, _ = library
    out = tmp_path / "dups.csv"
    assert main(["dedup", "--images", str(root / "a"), str(root / "b"), "--out", str(out), "-q"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["group", "ID", "folder"] and len(table) == 12
    printed = capsys.readouterr().out
    assert "6 duplicate groups, 12 images" in printed
