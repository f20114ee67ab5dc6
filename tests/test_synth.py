"""The synthetic world: truth consistency, determinism, pattern placement, files and CLI."""
from __future__ import annotations

import csv
import hashlib
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from cellcls import rle
from cellcls.classes import CLASSES, NEGATIVE, NUM_CLASSES
from cellcls.cli import main
from cellcls.synth import PATTERNS, SynthSample, generate_world, make_sample, preview_sheet
from cellcls.synth.proteins import CELL_SHARE, ImageShares, assign_cell_labels, draw_image_shares, draw_pattern_set

SCALE = 0.25
NUCLEAR = (0, 2, 3, 4, 5)
CYTOPLASMIC = (6, 7, 8, 10, 12, 14, 15, 16, 17)


# ---------------------------------------------------------------- helpers


def _border_ids(cells: np.ndarray) -> set[int]:
    edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    return set(np.unique(edge[edge > 0]).tolist())


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _bright_pixels(sample: SynthSample, class_id: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per interior cell showing ``class_id``: (bright-green mask, cell mask, nucleus mask).

    "Bright" = above half-way between the background and the cell's (lightly smoothed) peak.
    """
    green = cv2.GaussianBlur(sample.image[..., 1].astype(np.float32), (0, 0), 1.0)
    bg = float(np.median(green[sample.cells == 0]))
    border = _border_ids(sample.cells)
    out = []
    for cell_id, labels in sample.cell_labels.items():
        if class_id not in labels or cell_id in border:
            continue
        cell = sample.cells == cell_id
        thr = bg + 0.5 * (float(green[cell].max()) - bg)
        out.append((cell & (green > thr), cell, sample.nuclei == cell_id))
    return out


def _placement(class_id: int) -> dict[str, float]:
    """Where the bright green of ``class_id`` lies, pooled over 3 images' interior positive cells."""
    bright = in_nuc = on_rim = on_envelope = 0
    nuc_area = 0
    for seed in range(3):
        s = make_sample(seed, size_px=(256, 256), scale=SCALE, labels=(class_id,), bit_depth=16, density=35)
        for br, cell, nuc in _bright_pixels(s, class_id):
            to_edge = cv2.distanceTransform(cell.astype(np.uint8), cv2.DIST_L2, 3)
            inside_nuc = cv2.distanceTransform(nuc.astype(np.uint8), cv2.DIST_L2, 3)
            outside_nuc = cv2.distanceTransform((~nuc).astype(np.uint8), cv2.DIST_L2, 3)
            bright += br.sum()
            in_nuc += (br & nuc).sum()
            on_rim += (br & (to_edge <= 3)).sum()
            on_envelope += (br & (np.maximum(inside_nuc, outside_nuc) <= 3)).sum()
            nuc_area += nuc.sum()
    assert bright > 0, f"class {class_id}: no bright green in any positive interior cell"
    return {
        "nucleus": in_nuc / bright,
        "rim": on_rim / bright,
        "envelope": on_envelope / bright,
        "bright_per_nucleus": bright / nuc_area,
    }


# ---------------------------------------------------------------- make_sample


@pytest.fixture(scope="module")
def samples() -> list[SynthSample]:
    return [make_sample(seed, size_px=(320, 288), scale=SCALE) for seed in range(8)]


def test_sample_arrays_and_truth_are_consistent(samples):
    for s in samples:
        h, w = s.cells.shape
        assert s.image.shape == (h, w, 4) and s.image.dtype == np.uint8
        assert s.cells.dtype == np.uint16 and s.nuclei.dtype == np.uint16 and s.scale == SCALE
        ids = np.unique(s.cells)
        ids = ids[ids > 0].tolist()
        assert ids == list(range(1, len(ids) + 1)), "cell ids must be 1..N"
        assert sorted(s.cell_labels) == ids, "every cell in the map has labels and vice versa"
        # nucleus pixels carry their own cell's id, and every cell has a nucleus
        assert np.array_equal(s.cells[s.nuclei > 0], s.nuclei[s.nuclei > 0])
        assert set(np.unique(s.nuclei[s.nuclei > 0]).tolist()) == set(ids)
        union = set().union(*s.cell_labels.values())
        expected = union - {NEGATIVE} if len(union) > 1 else union
        assert set(s.image_labels) == expected and list(s.image_labels) == sorted(s.image_labels)
        for labels in s.cell_labels.values():
            assert labels and all(0 <= c < NUM_CLASSES for c in labels)
            assert NEGATIVE not in labels or labels == (NEGATIVE,)


def test_cells_are_segmentable_varied_touching_and_cut_by_the_border(samples):
    min_cell, min_nuc = 5500 * SCALE**2, 2500 * SCALE**2
    areas, touching, cut, gaps = [], 0, 0, 0
    for s in samples:
        border = _border_ids(s.cells)
        cell_area = np.bincount(s.cells.ravel())
        nuc_area = np.bincount(s.nuclei.ravel(), minlength=cell_area.size)
        for cell_id in s.cell_labels:
            if cell_id not in border:
                assert cell_area[cell_id] > min_cell, f"interior cell {cell_id} too small to segment"
                assert nuc_area[cell_id] > min_nuc, f"interior nucleus {cell_id} too small to segment"
                areas.append(cell_area[cell_id])
        c = s.cells
        horiz = (c[:, 1:] != c[:, :-1]) & (c[:, 1:] > 0) & (c[:, :-1] > 0)
        vert = (c[1:] != c[:-1]) & (c[1:] > 0) & (c[:-1] > 0)
        touching += bool(horiz.any() or vert.any())
        cut += bool(border)
        gaps += bool((c == 0).mean() > 0.05)
    areas = np.asarray(areas, float)
    assert areas.std() / areas.mean() > 0.15 and areas.max() > 1.8 * areas.min(), "cell sizes should vary"
    # typical cells: ~20,000-60,000 full-resolution px
    assert 15000 * SCALE**2 < np.median(areas) < 70000 * SCALE**2
    assert touching >= 6 and cut >= 6 and gaps >= 6


def test_images_differ_in_density():
    sparse = make_sample(1, size_px=(512, 512), density=10)
    dense = make_sample(1, size_px=(512, 512), density=45)
    assert dense.n_cells > 2 * sparse.n_cells
    assert (dense.cells > 0).mean() > (sparse.cells > 0).mean() + 0.1


def test_same_seed_same_sample_other_seed_differs():
    a = make_sample(7, size_px=(200, 240))
    b = make_sample(7, size_px=(200, 240))
    c = make_sample(8, size_px=(200, 240))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.cells, b.cells) and a.cell_labels == b.cell_labels
    assert not np.array_equal(a.image, c.image)
    g = make_sample(np.random.default_rng(7), size_px=(200, 240))  # a Generator is accepted too
    assert g.image.shape == (200, 240, 4)


def test_sixteen_bit_uses_more_than_eight_bits():
    s = make_sample(3, size_px=(256, 256), bit_depth=16)
    assert s.image.dtype == np.uint16
    for ch in range(4):
        v = s.image[..., ch]
        assert v.max() > 1024, "16-bit output must use the high range"
        assert np.any(v % 256 != 0) and np.unique(v).size > 256, "16-bit output must not be 8-bit shifted"


@pytest.mark.parametrize("bad", [dict(labels=(18, 0)), dict(labels=(19,)), dict(bit_depth=12), dict(size_px=(4, 4))])
def test_bad_arguments_are_refused(bad):
    with pytest.raises(ValueError):
        make_sample(0, **bad)


# ---------------------------------------------------------------- patterns


def test_every_class_has_a_pattern():
    assert sorted(PATTERNS) == list(range(NUM_CLASSES))


@pytest.mark.parametrize("class_id", NUCLEAR)
def test_nuclear_classes_light_up_the_nucleus(class_id):
    p = _placement(class_id)
    assert p["nucleus"] > 0.9, p


@pytest.mark.parametrize("class_id", (2, 3, 5))
def test_nucleoli_fibrillar_centres_and_bodies_are_compact(class_id):
    assert _placement(class_id)["bright_per_nucleus"] < 0.25


def test_nucleoplasm_is_diffuse():
    assert _placement(0)["bright_per_nucleus"] > 0.5


def test_nuclear_membrane_is_a_rim_on_the_nucleus():
    p = _placement(1)
    assert p["envelope"] > 0.9 and p["bright_per_nucleus"] < 0.8, p


@pytest.mark.parametrize("class_id", CYTOPLASMIC)
def test_cytoplasmic_classes_stay_out_of_the_nucleus(class_id):
    assert _placement(class_id)["nucleus"] < 0.15


def test_plasma_membrane_is_on_the_cell_rim():
    assert _placement(13)["rim"] > 0.9


def test_golgi_centrosome_aggresome_are_compact_blobs():
    sizes = {c: _placement(c)["bright_per_nucleus"] for c in (12, 7, 15)}
    assert sizes[12] < 0.1 and sizes[7] < 0.3 and sizes[15] < 0.6
    assert sizes[12] < sizes[7], "centrosome dots are smaller than the golgi"


def test_actin_fibres_run_along_the_long_axis_unlike_intermediate_filaments():
    """Actin's green gradient is anisotropic (straight parallel fibres); intermediate filaments are wavy."""

    def anisotropy(class_id: int) -> float:
        vals = []
        for seed in range(3):
            s = make_sample(seed, size_px=(256, 256), labels=(class_id,), bit_depth=16, density=35)
            g = s.image[..., 1].astype(np.float32)
            gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
            border = _border_ids(s.cells)
            for cell_id, labels in s.cell_labels.items():
                cell = (s.cells == cell_id) & (cv2.distanceTransform((s.cells == cell_id).astype(np.uint8), cv2.DIST_L2, 3) > 3)
                if class_id not in labels or cell_id in border or cell.sum() < 200:
                    continue
                jxx, jyy, jxy = (gx[cell] ** 2).sum(), (gy[cell] ** 2).sum(), (gx[cell] * gy[cell]).sum()
                root = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2)
                vals.append(root / (jxx + jyy))  # coherence: 1 = all gradients parallel
        return float(np.median(vals))

    assert anisotropy(9) > anisotropy(8) + 0.1


def test_mitotic_spindle_only_in_dividing_cells():
    s = make_sample(2, size_px=(384, 384), labels=(11,), density=30)
    spindle = [i for i, lab in s.cell_labels.items() if 11 in lab]
    assert 1 <= len(spindle) <= 2
    assert all(lab == (NEGATIVE,) for i, lab in s.cell_labels.items() if i not in spindle)
    for i in spindle:  # round cell, condensed (bar-shaped) chromosomes
        cell, nuc = s.cells == i, s.nuclei == i
        ys, xs = np.nonzero(cell)
        ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        assert ev[1] / ev[0] < 1.6, "a dividing cell is round"
        ys, xs = np.nonzero(nuc)
        ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs])))
        assert ev[1] / ev[0] > 3, "its DNA is a condensed plate"


def test_negative_has_little_green():
    neg = make_sample(4, size_px=(256, 256), labels=(NEGATIVE,), density=35)
    pos = make_sample(4, size_px=(256, 256), labels=(16,), density=35)
    assert set(neg.cell_labels.values()) == {(NEGATIVE,)}

    def cell_signal(s):
        g = s.image[..., 1].astype(float)
        return g[s.cells > 0].mean() - np.median(g[s.cells == 0])

    assert cell_signal(neg) < 0.25 * cell_signal(pos)


def test_cells_show_different_subsets_and_some_express_nothing():
    dividing = [False] * 4000
    shares = ImageShares({0: 0.7, 16: 0.5}, non_expressing=0.1)
    labels = assign_cell_labels(np.random.default_rng(0), (0, 16), dividing, shares=shares)
    frac = lambda pred: sum(map(pred, labels)) / len(labels)  # noqa: E731
    assert all(set(lab) <= {0, 16} or lab == (NEGATIVE,) for lab in labels)
    assert frac(lambda lab: 0 in lab) == pytest.approx(0.9 * 0.7, abs=0.03)
    assert frac(lambda lab: 16 in lab) == pytest.approx(0.9 * 0.5, abs=0.03)
    # cells of a two-location protein show either, both or neither
    for subset in ((0,), (16,), (0, 16)):
        assert frac(lambda lab: lab == subset) > 0.1
    assert frac(lambda lab: lab == (NEGATIVE,)) == pytest.approx(0.1 + 0.9 * 0.3 * 0.5, abs=0.03)
    # an alternate location is shown by its share of the expressing cells, besides the set
    alt = assign_cell_labels(np.random.default_rng(1), (4,), dividing,
                             shares=ImageShares({4: 0.6}, alternate=0.1), alternate=14)
    assert sum(14 in lab for lab in alt) / len(alt) == pytest.approx(0.1, abs=0.02)


def test_every_class_of_the_set_is_shown_by_some_cell():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n = int(rng.integers(1, 6))
        dividing = [False] * n
        ps = draw_pattern_set(rng)
        labels = assign_cell_labels(rng, ps, dividing, shares=draw_image_shares(rng, ps))
        shown = set().union(*labels)
        able = set(ps) - {11}
        assert able <= shown, (ps, labels)


def test_cell_share_table_is_class_dependent_like_real_hpa():
    assert sorted(CELL_SHARE) == list(range(NEGATIVE))
    assert all(0.0 < lo <= hi <= 1.0 for lo, hi in CELL_SHARE.values())
    mid = {c: sum(r) / 2 for c, r in CELL_SHARE.items()}
    assert CELL_SHARE[11][1] <= 0.1, "spindle: only the few dividing cells"
    assert mid[11] < mid[15] < mid[12] < mid[16], "spindle < aggresome < centrosome < cytosol"
    assert mid[0] >= 0.6 and mid[16] >= 0.6 and mid[15] <= 0.3


def test_minority_patterns_are_shown_by_few_cells_of_an_image():
    def share(class_id: int) -> float:
        shown = total = 0
        for seed in range(6):
            s = make_sample(seed, size_px=(256, 256), scale=0.125, labels=(class_id,), density=40)
            shown += sum(class_id in lab for lab in s.cell_labels.values())
            total += s.n_cells
            assert s.image_labels == (class_id,)
        return shown / total

    assert share(11) < 0.15 and share(15) < 0.4 and share(16) > 0.4
    assert share(15) < share(12) < share(16)


def test_pattern_sets_follow_real_class_frequencies():
    rng = np.random.default_rng(0)
    counts = np.zeros(NUM_CLASSES)
    sizes = []
    for _ in range(3000):
        ps = draw_pattern_set(rng)
        sizes.append(len(ps))
        counts[list(ps)] += 1
        assert NEGATIVE not in ps or ps == (NEGATIVE,)
    real = np.array([c.train_images for c in CLASSES], float)
    assert counts.argmax() == real.argmax() == 0
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    assert np.corrcoef(rank(counts), rank(real))[0, 1] > 0.9
    assert set(sizes) == {1, 2, 3}
    assert counts[NEGATIVE] < counts[16] / 20 and counts[11] < counts[0] / 20


# ---------------------------------------------------------------- world files


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=5, n_test=4, size_px=192, seed=11, progress=False, non_square=0.5)
    return out


def test_world_is_reproducible_byte_for_byte(world, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    generate_world(again, n_train=5, n_test=4, size_px=192, seed=11, progress=False, non_square=0.5)
    generate_world(other, n_train=5, n_test=4, size_px=192, seed=12, progress=False, non_square=0.5)
    a, b, c = _digest_tree(world), _digest_tree(again), _digest_tree(other)
    assert a == b
    assert set(a) != set(c), "another seed gives other IDs"
    assert sorted(a.values()) != sorted(c.values())


def test_world_layout_and_truth_agree(world):
    train = _read_csv(world / "train.csv")
    sub = _read_csv(world / "sample_submission.csv")
    cells = _read_csv(world / "truth" / "cells.csv")
    assert len(train) == 5 and len(sub) == 4
    assert list(train[0]) == ["ID", "Label", "group"]
    assert all(r["PredictionString"] == "0 1 eNoLCAgIMAEABJkBdQ==" for r in sub)
    by_image: dict[str, dict[int, tuple[int, ...]]] = defaultdict(dict)
    for r in cells:
        by_image[r["ID"]][int(r["cell_id"])] = tuple(int(x) for x in r["labels"].split("|"))
    for row in train:
        labels = {int(x) for x in row["Label"].split("|")}
        union = set().union(*by_image[row["ID"]].values())
        assert labels == (union - {NEGATIVE} if len(union) > 1 else union)
        assert row["group"].startswith("HPA")
    for split, ids in (("train", [r["ID"] for r in train]), ("test", [r["ID"] for r in sub])):
        for image_id in ids:
            chans = [cv2.imread(str(world / split / f"{image_id}_{c}.png"), cv2.IMREAD_UNCHANGED) for c in ("red", "green", "blue", "yellow")]
            assert all(ch is not None and ch.dtype == np.uint8 and ch.shape == chans[0].shape for ch in chans)
            lab = cv2.imread(str(world / "truth" / f"{image_id}_cells.png"), cv2.IMREAD_UNCHANGED)
            nuc = cv2.imread(str(world / "truth" / f"{image_id}_nuclei.png"), cv2.IMREAD_UNCHANGED)
            assert lab.dtype == np.uint16 and lab.shape == chans[0].shape and nuc.shape == lab.shape
            ids_in_map = set(np.unique(lab[lab > 0]).tolist())
            assert ids_in_map == set(by_image[image_id]), f"{image_id}: map ids vs truth/cells.csv rows"
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == 11 and meta["n_train"] == 5 and meta["n_test"] == 4 and meta["scale"] == SCALE


@pytest.mark.parametrize("name, split_csv", [("solution.csv", "sample_submission.csv"), ("solution_train.csv", "train.csv")])
def test_solution_decodes_to_the_truth_masks(world, name, split_csv):
    truth = defaultdict(dict)
    for r in _read_csv(world / "truth" / "cells.csv"):
        truth[r["ID"]][int(r["cell_id"])] = tuple(int(x) for x in r["labels"].split("|"))
    rows = _read_csv(world / name)
    assert [r["ID"] for r in rows] == [r["ID"] for r in _read_csv(world / split_csv)]
    for row in rows:
        w, h = int(row["ImageWidth"]), int(row["ImageHeight"])
        lab = cv2.imread(str(world / "truth" / f"{row['ID']}_cells.png"), cv2.IMREAD_UNCHANGED)
        assert lab.shape == (h, w), "ImageWidth/ImageHeight must match the image"
        tokens = row["PredictionString"].split()
        seen: dict[int, set[int]] = defaultdict(set)
        for cls, conf, mask_text in zip(tokens[0::3], tokens[1::3], tokens[2::3]):
            mask = rle.decode(mask_text, (h, w))
            ids = np.unique(lab[mask])
            assert conf == "1" and ids.size == 1 and ids[0] > 0, "each mask is exactly one truth cell"
            assert np.array_equal(mask, lab == ids[0])
            seen[int(ids[0])].add(int(cls))
        assert {k: tuple(sorted(v)) for k, v in seen.items()} == truth[row["ID"]]


def test_world_non_square_and_default_sizes(world, tmp_path):
    shapes = {tuple(int(r[k]) for k in ("ImageHeight", "ImageWidth")) for r in _read_csv(world / "solution_train.csv")}
    shapes |= {tuple(int(r[k]) for k in ("ImageHeight", "ImageWidth")) for r in _read_csv(world / "solution.csv")}
    assert any(h != w for h, w in shapes) and all(max(h, w) == 192 for h, w in shapes)
    out = tmp_path / "sizes"
    generate_world(out, n_train=0, n_test=12, seed=5, scale=0.0625, progress=False)
    sides = {int(r["ImageWidth"]) for r in _read_csv(out / "sample_submission.csv")}
    assert sides <= {108, 128, 192} and 128 in sides


def test_world_groups_share_pattern_sets(tmp_path):
    generate_world(tmp_path, n_train=24, n_test=0, size_px=128, seed=2, progress=False)
    groups = defaultdict(set)
    n_images = defaultdict(int)
    for r in _read_csv(tmp_path / "train.csv"):
        groups[r["group"]] |= {int(x) for x in r["Label"].split("|")} - {NEGATIVE}
        n_images[r["group"]] += 1
    assert len(groups) < 24 and max(n_images.values()) >= 2, "groups hold several images"
    # 1-3 locations plus at most one alternate shown by a few deviating cells
    assert all(len(v) <= 4 for v in groups.values()), "a group's images draw on one small pattern set"


def test_world_sixteen_bit_pngs(tmp_path):
    generate_world(tmp_path, n_train=1, n_test=0, size_px=128, seed=0, bit_depth=16, progress=False)
    (image_id,) = [r["ID"] for r in _read_csv(tmp_path / "train.csv")]
    blue = cv2.imread(str(tmp_path / "train" / f"{image_id}_blue.png"), cv2.IMREAD_UNCHANGED)
    assert blue.dtype == np.uint16 and blue.max() > 255 and np.any(blue % 256 != 0)


# ---------------------------------------------------------------- CLI and preview


def test_cli_writes_world_and_preview(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["synth", "--out", str(out), "--train", "2", "--test", "1", "--size", "128", "--seed", "3", "--no-progress", "--preview"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "train.csv" in printed and "preview.png" in printed
    assert len(_read_csv(out / "train.csv")) == 2 and len(_read_csv(out / "solution.csv")) == 1
    sheet = cv2.imread(str(out / "preview.png"))
    assert sheet is not None and sheet.shape[0] > 600 and sheet.shape[1] > 1000


def test_cli_refuses_nothing_to_do(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path), "--seed", "1"]) == 1
    assert "nothing to do" in capsys.readouterr().err


def test_preview_tiles_show_each_class(tmp_path):
    path = preview_sheet(tmp_path / "p.png", seed=1, tile_px=160)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (4 * 162 - 2, 5 * 162 - 2, 3)
    tiles = [sheet[r * 162 : r * 162 + 160, c * 162 : c * 162 + 160] for r in range(4) for c in range(5)][:NUM_CLASSES]
    body = [t[40:].astype(np.int16) for t in tiles]  # below the written class name
    for class_id, tile in enumerate(body):
        assert tile.std() > 5, f"tile of class {class_id} is blank"
        assert all(np.abs(tile - other).mean() > 3 for other in body[:class_id]), "tiles are distinct images"


def test_preview_shows_negative_without_specific_green(tmp_path):
    """All tiles share one green display range: Negative is not stretched to look stained."""
    path = preview_sheet(tmp_path / "p.png", seed=0, tile_px=256)
    sheet = cv2.imread(str(path)).astype(np.float32)
    tiles = [sheet[r * 258 + 40 : r * 258 + 256, c * 258 : c * 258 + 256] for r in range(4) for c in range(5)]
    # green beyond what the faint marker composite puts there (BGR: green minus red)
    green = [float(np.percentile(t[..., 1] - t[..., 2], 99.9)) for t in tiles[:NUM_CLASSES]]
    positive = np.median(green[:NEGATIVE])
    assert green[NEGATIVE] < 0.4 * positive, (green[NEGATIVE], positive)
