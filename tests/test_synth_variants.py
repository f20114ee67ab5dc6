"""Drawing the synthetic world differently: cell shapes, the alt renderer, class mixes, Negative shares."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.measure import regionprops

from cellcls.classes import NEGATIVE, NUM_CLASSES
from cellcls.cli import build_parser, main
from cellcls.errors import ParameterError
from cellcls.synth import generate_world, make_sample
from cellcls.synth.patterns_alt import ALT_PATTERNS
from cellcls.synth.proteins import draw_pattern_set
from cellcls.synth.shapes import CELL_SHAPES
from cellcls.synth.variants import CLASS_MIXES, RENDERERS, VARIANTS, mix_weights, resolve_variant

SCALE = 0.25
ALT = resolve_variant(renderer="alt")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _border_ids(cells: np.ndarray) -> set[int]:
    edge = np.concatenate([cells[0], cells[-1], cells[:, 0], cells[:, -1]])
    return set(np.unique(edge[edge > 0]).tolist())


# ---------------------------------------------------------------- the default stays the default


def test_default_sample_is_todays_bytes():
    """Pinned from the code before the variants existed: the default path draws exactly as before."""
    s = make_sample(0, size_px=(160, 192))
    digest = hashlib.sha256(s.image.tobytes() + s.cells.tobytes() + s.nuclei.tobytes() + repr(s.cell_labels).encode()).hexdigest()
    assert digest == "6861e95bcf8f49710fd230ac15fe5655df3748a97da5647bb8d6e8aa85a7dd8d"


def test_options_change_the_world_only_when_given(tmp_path):
    kw = dict(n_train=3, n_test=2, size_px=128, seed=4, progress=False)
    generate_world(tmp_path / "plain", **kw)
    generate_world(tmp_path / "explicit", variant="default", cell_shape="default", renderer="default",
                   class_mix="real", negative_share=(0.0, 0.3), shared_groups=0.3, **kw)
    plain = _tree(tmp_path / "plain")
    assert plain == _tree(tmp_path / "explicit")
    meta = json.loads((tmp_path / "plain" / "world.json").read_text())
    assert "variant" not in meta and "shared_groups" not in meta


# ---------------------------------------------------------------- cell shapes


def _shape_stats(root: Path, cell_shape: str) -> dict[str, float]:
    generate_world(root, n_train=6, n_test=0, size_px=224, seed=1, progress=False, cell_shape=cell_shape)
    ratio, solidity = [], []
    for row in _read_csv(root / "train.csv"):
        cells = cv2.imread(str(root / "truth" / f"{row['ID']}_cells.png"), cv2.IMREAD_UNCHANGED)
        nuclei = cv2.imread(str(root / "truth" / f"{row['ID']}_nuclei.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cells[nuclei > 0], nuclei[nuclei > 0]), "nuclei lie inside their own cells"
        border = _border_ids(cells)
        nuc_area = np.bincount(nuclei.ravel(), minlength=int(cells.max()) + 1)
        for r in regionprops(cells):
            if r.label in border:
                continue
            assert r.area >= 5500 * SCALE**2 and nuc_area[r.label] >= 2500 * SCALE**2, "size cut-offs hold"
            ratio.append(r.axis_major_length / max(r.axis_minor_length, 1e-6))
            solidity.append(r.solidity)
    assert len(ratio) >= 10, f"{cell_shape}: too few interior cells to measure"
    return {"ratio": float(np.mean(ratio)), "solidity": float(np.mean(solidity))}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, dict[str, float]]:
    return {name: _shape_stats(tmp_path_factory.mktemp(name), name) for name in ("default", "round", "elongated", "irregular")}


def test_elongated_cells_have_a_high_aspect_ratio(shapes):
    assert shapes["elongated"]["ratio"] > shapes["default"]["ratio"] + 0.8, shapes


def test_irregular_cells_are_less_solid_and_round_cells_more(shapes):
    assert shapes["irregular"]["solidity"] < shapes["default"]["solidity"] - 0.05, shapes
    assert shapes["round"]["solidity"] > shapes["default"]["solidity"], shapes
    assert shapes["round"]["ratio"] < shapes["default"]["ratio"] - 0.08 and shapes["round"]["ratio"] < 1.2, shapes


# ---------------------------------------------------------------- the alt renderer


def test_alt_renderer_changes_only_the_green_channel():
    for seed in range(2):
        a, b = make_sample(seed, size_px=(192, 192)), make_sample(seed, size_px=(192, 192), variant=ALT)
        assert np.array_equal(a.cells, b.cells) and np.array_equal(a.nuclei, b.nuclei)
        assert a.cell_labels == b.cell_labels and a.image_labels == b.image_labels
        for ch in (0, 2, 3):
            assert np.array_equal(a.image[..., ch], b.image[..., ch]), f"channel {ch} must not change"
        assert not np.array_equal(a.image[..., 1], b.image[..., 1])


def _bandpass(green: np.ndarray) -> np.ndarray:
    g = green.astype(np.float32)
    return cv2.GaussianBlur(g, (0, 0), 1.0) - cv2.GaussianBlur(g, (0, 0), 4.0)


def test_alt_renderer_gives_each_class_a_new_look():
    """Fine texture of the same cells under both renderers: correlated only where geometry pins it."""
    assert sorted(ALT_PATTERNS) == list(range(NUM_CLASSES)) and RENDERERS.get("alt") is ALT_PATTERNS
    corr = []
    for c in range(NEGATIVE):
        vals = []
        for seed in range(2):
            a = make_sample(seed, size_px=(192, 192), labels=(c,), density=35)
            b = make_sample(seed, size_px=(192, 192), labels=(c,), density=35, variant=ALT)
            shown = np.isin(a.cells, [i for i, lab in a.cell_labels.items() if c in lab])
            vals.append(np.corrcoef(_bandpass(a.image[..., 1])[shown], _bandpass(b.image[..., 1])[shown])[0, 1])
        corr.append(float(np.mean(vals)))
    assert np.mean(corr) < 0.65, np.round(corr, 2)
    assert sum(v < 0.8 for v in corr) >= 14, np.round(corr, 2)


def _placement(class_id: int) -> dict[str, float]:
    """Where the bright green (above half the cell's peak) of interior positive cells lies, alt renderer."""
    bright = in_nuc = on_rim = on_envelope = 0
    for seed in range(3):
        s = make_sample(seed, size_px=(256, 256), scale=SCALE, labels=(class_id,), bit_depth=16, density=35, variant=ALT)
        green = cv2.GaussianBlur(s.image[..., 1].astype(np.float32), (0, 0), 1.0)
        bg = float(np.median(green[s.cells == 0]))
        border = _border_ids(s.cells)
        for cell_id, labels in s.cell_labels.items():
            if class_id not in labels or cell_id in border:
                continue
            cell, nuc = s.cells == cell_id, s.nuclei == cell_id
            br = cell & (green > bg + 0.5 * (float(green[cell].max()) - bg))
            to_edge = cv2.distanceTransform(cell.astype(np.uint8), cv2.DIST_L2, 3)
            envelope = np.maximum(cv2.distanceTransform(nuc.astype(np.uint8), cv2.DIST_L2, 3),
                                  cv2.distanceTransform((~nuc).astype(np.uint8), cv2.DIST_L2, 3))
            bright += br.sum()
            in_nuc += (br & nuc).sum()
            on_rim += (br & (to_edge <= 3)).sum()
            on_envelope += (br & (envelope <= 3)).sum()
    assert bright > 0, f"class {class_id}: no bright green"
    return {"nucleus": in_nuc / bright, "rim": on_rim / bright, "envelope": on_envelope / bright}


@pytest.mark.parametrize("class_id", (0, 2, 3, 4, 5))
def test_alt_nuclear_classes_stay_in_the_nucleus(class_id):
    assert _placement(class_id)["nucleus"] > 0.9


@pytest.mark.parametrize("class_id", (6, 7, 8, 10, 12, 14, 15, 16, 17))
def test_alt_cytoplasmic_classes_stay_out_of_the_nucleus(class_id):
    assert _placement(class_id)["nucleus"] < 0.15


def test_alt_rims_stay_on_the_nuclear_envelope_and_the_cell_edge():
    assert _placement(1)["envelope"] > 0.8
    assert _placement(13)["rim"] > 0.8


def _cell_green(s, cell_ids, q: float | None = None) -> float:
    """Mean (or percentile ``q``) green of the given cells above the background (median of no-cell pixels)."""
    g = s.image[..., 1].astype(float)
    inside = g[np.isin(s.cells, list(cell_ids))]
    return float((inside.mean() if q is None else np.percentile(inside, q)) - np.median(g[s.cells == 0]))


def test_alt_spindle_lights_only_dividing_cells_and_negative_stays_dark():
    for seed in (3, 5):  # (a dim protein's spindle barely clears the haze, in both renderers)
        s = make_sample(seed, size_px=(384, 384), labels=(11,), density=30, bit_depth=16, variant=ALT)
        spindle = [i for i, lab in s.cell_labels.items() if 11 in lab]
        others = [i for i in s.cell_labels if i not in spindle]
        assert spindle and others
        assert min(_cell_green(s, [i], 99) for i in spindle) > 2 * max(_cell_green(s, [i], 99) for i in others)
    neg = make_sample(4, size_px=(256, 256), labels=(NEGATIVE,), density=35, variant=ALT)
    pos = make_sample(4, size_px=(256, 256), labels=(16,), density=35, variant=ALT)
    assert _cell_green(neg, neg.cell_labels) < 0.25 * _cell_green(pos, pos.cell_labels)


# ---------------------------------------------------------------- class mix and Negative share


def _class_counts(mix: str, n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(0)
    counts = np.zeros(NUM_CLASSES)
    for _ in range(n):
        counts[list(draw_pattern_set(rng, weights=mix_weights(mix)))] += 1
    return counts


def test_flat_mix_is_even_and_rare_mix_favours_rare_classes():
    real, flat, rare = (_class_counts(m)[:NEGATIVE] for m in ("real", "flat", "rare"))

    def evenness(c):  # normalised entropy: 1 = all classes equally often
        p = c / c.sum()
        return float(-(p * np.log(p + 1e-12)).sum() / np.log(len(p)))

    assert evenness(flat) > evenness(real) + 0.05
    assert flat.min() / flat.max() > 0.7 and real.min() / real.max() < 0.1
    assert rare[11] > rare[0] and real[11] < real[0] / 10, "spindle (78 train images) vs nucleoplasm (8797)"


def _negative_cell_share(root: Path) -> float:
    rows = _read_csv(root / "truth" / "cells.csv")
    return sum(r["labels"] == str(NEGATIVE) for r in rows) / len(rows)


def test_negative_share_range_raises_the_share_of_negative_cells(tmp_path):
    kw = dict(n_train=8, n_test=0, size_px=192, seed=3, progress=False)
    generate_world(tmp_path / "d", **kw)
    generate_world(tmp_path / "n", negative_share=(0.6, 0.9), **kw)
    base, raised = _negative_cell_share(tmp_path / "d"), _negative_cell_share(tmp_path / "n")
    assert raised > 0.45 and raised > base + 0.25, (base, raised)


# ---------------------------------------------------------------- world.json, determinism, CLI


def test_world_json_records_every_option_and_the_preset(tmp_path):
    kw = dict(n_train=2, n_test=1, size_px=128, seed=0, progress=False)
    generate_world(tmp_path / "a", cell_shape="round", renderer="alt", class_mix="rare", negative_share=(0.2, 0.4), **kw)
    meta = json.loads((tmp_path / "a" / "world.json").read_text())
    assert meta["variant"] == {"cell_shape": "round", "renderer": "alt", "class_mix": "rare", "negative_share": [0.2, 0.4]}
    generate_world(tmp_path / "b", variant="shifted", cell_shape="elongated", **kw)
    meta = json.loads((tmp_path / "b" / "world.json").read_text())
    assert meta["variant"] == {"cell_shape": "elongated", "renderer": "alt", "class_mix": "flat", "negative_share": [0.1, 0.5]}


def test_same_seed_and_options_give_the_same_bytes(tmp_path):
    kw = dict(n_train=3, n_test=2, size_px=128, seed=7, progress=False, variant="shifted")
    generate_world(tmp_path / "a", **kw)
    generate_world(tmp_path / "b", **kw)
    generate_world(tmp_path / "c", **{**kw, "cell_shape": "round"})
    a, b, c = _tree(tmp_path / "a"), _tree(tmp_path / "b"), _tree(tmp_path / "c")
    assert a == b
    assert a != c


def test_shifted_preset_changes_all_four_axes():
    shifted = VARIANTS.get("shifted")
    default = VARIANTS.get("default")
    assert all(getattr(shifted, f) != getattr(default, f) for f in ("cell_shape", "renderer", "class_mix", "negative_share"))
    assert shifted.cell_shape in ("irregular", "elongated") and shifted.negative_share == (0.1, 0.5)


def test_cli_variant_world_and_choices_match_the_registries(tmp_path):
    out = tmp_path / "w"
    assert main(["synth", "--out", str(out), "--train", "2", "--test", "1", "--size", "128", "--no-progress",
                 "--variant", "shifted", "--class-mix", "rare"]) == 0
    meta = json.loads((out / "world.json").read_text())
    assert meta["variant"]["class_mix"] == "rare" and meta["variant"]["renderer"] == "alt"
    sub = build_parser()._subparsers._group_actions[0].choices["synth"]  # noqa: SLF001
    choices = {a.dest: a.choices for a in sub._actions if a.choices}  # noqa: SLF001
    assert set(choices["cell_shape"]) == set(CELL_SHAPES.names())
    assert set(choices["renderer"]) == set(RENDERERS.names())
    assert set(choices["class_mix"]) == set(CLASS_MIXES.names())
    assert set(choices["variant"]) == set(VARIANTS.names())


# ---------------------------------------------------------------- test groups shared with train


def _test_groups_in_train(root: Path) -> list[bool]:
    """For each test image of truth/images.csv: does its group (protein) also have a train image?"""
    rows = _read_csv(root / "truth" / "images.csv")
    train_groups = {r["group"] for r in rows if r["split"] == "train"}
    return [r["group"] in train_groups for r in rows if r["split"] == "test"]


def test_shared_groups_sets_how_many_test_groups_occur_in_train(tmp_path):
    kw = dict(n_train=12, n_test=12, size_px=64, seed=3, progress=False)
    generate_world(tmp_path / "all", shared_groups=1.0, **kw)
    generate_world(tmp_path / "none", shared_groups=0.0, **kw)
    generate_world(tmp_path / "plain", **kw)
    every, never, plain = (_test_groups_in_train(tmp_path / n) for n in ("all", "none", "plain"))
    assert len(every) == len(never) == 12
    assert all(every), "F = 1: every test image is one more image of a train protein"
    assert not any(never), "F = 0: every test protein is unseen in train"
    assert 0 < sum(plain) < 12, "the default (0.3) mixes both"
    assert json.loads((tmp_path / "all" / "world.json").read_text())["shared_groups"] == 1.0
    assert json.loads((tmp_path / "none" / "world.json").read_text())["shared_groups"] == 0.0


@pytest.mark.parametrize("value", ("1.5", "-0.1", "nan"))
def test_bad_shared_groups_is_one_error_line(tmp_path, capsys, value):
    code = main(["synth", "--out", str(tmp_path / "x"), "--train", "1", "--size", "64", "--shared-groups", value])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "--shared-groups" in err[0], err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="shared_groups"):
        generate_world(tmp_path / "y", n_train=1, n_test=1, size_px=64, shared_groups=2.0, progress=False)


@pytest.mark.parametrize("values", (["0.5", "0.2"], ["-0.1", "0.2"], ["0.1", "1.5"], ["nan", "0.5"]))
def test_bad_negative_share_is_one_error_line(tmp_path, capsys, values):
    code = main(["synth", "--out", str(tmp_path / "x"), "--train", "1", "--size", "64", "--negative-share", *values])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error:") and "--negative-share" in err[0], err
    assert not (tmp_path / "x").exists(), "nothing is written before the options are checked"


def test_bad_names_are_refused(tmp_path, capsys):
    with pytest.raises(ParameterError, match="--renderer"):
        generate_world(tmp_path, n_train=1, n_test=0, size_px=64, renderer="fancy", progress=False)
    with pytest.raises(ParameterError, match="--cell-shape"):
        resolve_variant(cell_shape="blob")
    with pytest.raises(ParameterError, match="--variant"):
        resolve_variant("weird")
    # the CLI's choices are argparse usage errors (exit 2, the option named), as everywhere in cellcls
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "y"), "--train", "1", "--cell-shape", "blob"])
    assert exc.value.code == 2 and "--cell-shape" in capsys.readouterr().err


def test_help_explains_each_option(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("--cell-shape", "axis ratio 2.8-4.5", "solidity", "--renderer", "only the green channel changes",
                   "--class-mix", "counts ** 0.75", "equally likely", "--negative-share", "0 <= LO <= HI <= 1",
                   "non-expressing", "--variant", "shifted", "world.json", "--shared-groups",
                   "every test group occurs in train"):
        assert needle in text, needle
