"""infer.blend: blend rules and modifiers on hand-computed examples, and choosing a blend on validation cells."""
from __future__ import annotations

import numpy as np
import pytest

from cellcls import rle
from cellcls.errors import ParameterError, RegistryError
from cellcls.metric import evaluate
from cellcls.submission_format import SubmissionRow
from infer.blend import BLEND_MODIFIERS, BLEND_RULES, BlendSpec, blend, border_factor, nucleus_edge_pixels
from infer.blend_choice import blend_grid, choose_blend, per_cell_map

NEG = 18


def _scores(rows: list[dict[int, float]]) -> np.ndarray:
    out = np.zeros((len(rows), 19), dtype=np.float32)
    for i, row in enumerate(rows):
        for c, v in row.items():
            out[i, c] = v
    return out


def _image(values: dict[int, float]) -> np.ndarray:
    return _scores([values])[0]


def _random(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 19), dtype=np.float32), rng.random(19, dtype=np.float32)


def test_registered_rules_and_modifiers():
    assert {"cell", "mean", "fourth", "product12"} <= set(BLEND_RULES.names())
    assert {"area7", "border4", "dark"} <= set(BLEND_MODIFIERS.names())


def test_cell_rule_is_the_identity_and_mean_with_w1_is_cell():
    cell, image = _random(6)
    np.testing.assert_array_equal(blend(cell, image, spec="cell"), cell)
    np.testing.assert_array_equal(blend(cell, image, spec="mean:w=1"), cell)
    np.testing.assert_allclose(blend(cell, image, spec="mean:w=0"), np.tile(image, (6, 1)), atol=1e-7)


def test_mean_rule_hand_computed_and_default_weight():
    cell = _scores([{0: 0.9, 5: 0.2}])
    image = _image({0: 0.5, 5: 1.0})
    out = blend(cell, image, spec="mean")  # w = 0.7
    assert out[0, 0] == pytest.approx(0.7 * 0.9 + 0.3 * 0.5)
    assert out[0, 5] == pytest.approx(0.7 * 0.2 + 0.3 * 1.0)
    assert out[0, 1] == 0.0
    assert blend(cell, image, spec="mean:w=0.5")[0, 0] == pytest.approx(0.7)


def test_fourth_rule_uses_the_other_cells_and_sets_negative():
    cell = _scores([{0: 0.9}, {0: 0.3}, {0: 0.0, 3: 0.5}])
    out = blend(cell, _image({0: 1.0}), spec="fourth")
    assert out[0, 0] == pytest.approx(0.7 * 0.9 + 0.3 * (0.3 + 0.0) / 2)  # 0.675
    assert out[1, 0] == pytest.approx(0.7 * 0.3 + 0.3 * (0.9 + 0.0) / 2)  # 0.345
    assert out[2, 0] == pytest.approx(0.3 * (0.9 + 0.3) / 2)               # 0.18
    assert out[2, 3] == pytest.approx(0.7 * 0.5)                            # others have 0 there
    np.testing.assert_allclose(out[:, NEG], 1 - out[:, :NEG].max(axis=1), atol=1e-6)
    assert out[0, NEG] == pytest.approx(0.325)
    kept = blend(cell, _image({}), spec="fourth:negative=blend")
    np.testing.assert_allclose(kept[:, NEG], 0.0)  # the blend of zero Negative scores
    np.testing.assert_allclose(kept[:, :NEG], out[:, :NEG], atol=1e-7)


def test_fourth_rule_one_cell_keeps_its_own_scores():
    cell = _scores([{0: 0.4, 7: 0.6, NEG: 0.9}])
    out = blend(cell, _image({0: 1.0}), spec="fourth")
    np.testing.assert_allclose(out[0, :NEG], cell[0, :NEG])
    assert out[0, NEG] == pytest.approx(0.4)  # 1 - 0.6
    np.testing.assert_array_equal(blend(cell, _image({}), spec="fourth:negative=blend"), cell)


def test_fourth_rule_interior_others_skip_border_cells():
    cell = _scores([{0: 0.9}, {0: 0.3}, {0: 0.0}])
    rows = {"touches_border": np.array([False, True, False])}
    out = blend(cell, _image({}), rows, spec="fourth:others=interior")
    assert out[0, 0] == pytest.approx(0.7 * 0.9 + 0.3 * 0.0)      # cell 1 is not an "other"
    assert out[1, 0] == pytest.approx(0.7 * 0.3 + 0.3 * 0.45)     # but it is blended itself
    assert out[2, 0] == pytest.approx(0.3 * 0.9)
    with pytest.raises(ParameterError, match="touches_border"):
        blend(cell, _image({}), spec="fourth:others=interior")


def test_product12_rule_hand_computed():
    cell = _scores([{0: 0.8, 4: 0.5, NEG: 0.1}, {0: 0.2, NEG: 0.6}])
    image = _image({0: 0.5, 4: 1.0, NEG: 0.3})
    out = blend(cell, image, spec="product12")
    assert out[0, NEG] == pytest.approx(0.3) and out[1, NEG] == pytest.approx(0.6)   # max(cell, image)
    assert out[0, 0] == pytest.approx(0.8 * 0.5 * (1 - 0.3))
    assert out[0, 4] == pytest.approx(0.5 * 1.0 * (1 - 0.3))
    assert out[1, 0] == pytest.approx(0.2 * 0.5 * (1 - 0.6))


def test_area7_thresholds_at_full_resolution_and_scaled():
    cell = np.ones((6, 19), dtype=np.float32)
    rows = {"cell_area_px": np.array([31_999, 32_000, 16_000, 79_999, 80_000, 40_000]),
            "touches_border": np.array([False, False, False, True, True, True])}
    factor = blend(cell, np.ones(19), rows, spec="cell+area7:image_scale=1")[:, 0]
    assert factor[0] < 1 and factor[1] == 1 and factor[2] == pytest.approx(0.5)
    assert factor[3] < 1 and factor[4] == 1 and factor[5] == pytest.approx(0.5)
    quarter = {"cell_area_px": np.array([1_999, 2_000, 4_999, 5_000, 1_000]),
               "touches_border": np.array([False, False, True, True, False])}
    factor = blend(cell[:5], np.ones(19), quarter, spec="cell+area7:image_scale=0.25")[:, 0]
    assert factor[0] < 1 and factor[1] == 1 and factor[2] < 1 and factor[3] == 1
    assert factor[4] == pytest.approx(0.5)


def test_area7_needs_an_explicit_image_scale():
    with pytest.raises(ParameterError, match="image_scale"):
        BlendSpec.parse("mean+area7")


def test_border_factor_pieces():
    r = np.array([0.31, 0.3, 0.1, 0.02, 0.01, 0.0, -0.5])
    f = border_factor(r)
    assert f[0] == 1.0
    assert f[1] == pytest.approx(0.999 ** 0.1)
    assert f[2] == pytest.approx(0.333 ** 0.1)
    assert f[3] == pytest.approx(0.0666 ** 0.1)
    np.testing.assert_array_equal(f[4:], 0.001)


def test_border4_modifier_multiplies_both_axes():
    cell = np.full((3, 19), 0.5, dtype=np.float32)
    rows = {"y0": np.array([0, 0, 10]), "x0": np.array([0, 0, 10]), "y1": np.array([50, 50, 60]),
            "x1": np.array([100, 100, 110]),
            "nucleus_edge_ud_px": np.array([90, 90, 0]), "nucleus_edge_lr_px": np.array([0, 50, 0])}
    out = blend(cell, np.ones(19), rows, spec="cell+border4")
    assert out[0, 0] == pytest.approx(0.5 * (3.33 * 0.1) ** 0.1)                       # ud ratio 0.1
    assert out[1, 7] == pytest.approx(0.5 * (3.33 * 0.1) ** 0.1 * 0.001)  # lr: nucleus spans the edge, r = 0
    assert out[2, 3] == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="nucleus_edge_pixels"):
        blend(cell, np.ones(19), {k: v for k, v in rows.items() if not k.startswith("nucleus")}, spec="cell+border4")


def test_dark_modifier_moves_a_dark_cells_classes_to_negative():
    cell = _scores([{0: 0.8, 16: 0.4, NEG: 0.2}, {0: 0.8, 16: 0.4, NEG: 0.2}, {0: 0.8, NEG: 0.6}])
    rows = {"darkness": np.array([0.0, 0.5, 1.0])}
    out = blend(cell, np.ones(19), rows, spec="cell+dark")
    np.testing.assert_allclose(out[0, [0, 16, NEG]], [0.8, 0.4, 0.1])   # bright: Negative halves
    np.testing.assert_allclose(out[1, [0, 16, NEG]], [0.4, 0.2, 0.35])
    np.testing.assert_allclose(out[2, [0, NEG]], [0.0, 0.8])
    mixed = blend(cell, _image({0: 0.2}), rows, spec="mean:w=0.5+dark")
    np.testing.assert_allclose(mixed[1, 0], 0.5 * (0.5 * 0.8 + 0.5 * 0.2), rtol=1e-6)
    with pytest.raises(ParameterError, match="entry_cell_darkness"):
        blend(cell, np.ones(19), {}, spec="cell+dark")
    with pytest.raises(ParameterError, match="darkness"):
        blend(cell, np.ones(19), {"darkness": np.array([0.0, 1.5, 0.0])}, spec="cell+dark")


def test_modifier_columns_are_added_only_for_the_modifiers_a_spec_uses():
    import pandas as pd

    from infer.blend import add_modifier_columns

    class Entry:
        image_id = "img"
        original_shape = (8, 8)
        cells = np.kron(np.array([[1, 2], [0, 0]], np.uint16), np.ones((4, 4), np.uint16))
        nuclei = cells
    rows = pd.DataFrame({"cell_id": [1, 2], "y0": [0, 0], "x0": [0, 4], "y1": [4, 4], "x1": [4, 8]})
    image = np.zeros((8, 8, 4), np.uint8)
    image[:4, 4:, 1] = 200  # cell 2 stained, cell 1 dark
    plain = add_modifier_columns(rows, Entry, [BlendSpec.parse("mean:w=0.7")])
    assert list(plain.columns) == list(rows.columns)
    both = add_modifier_columns(rows, Entry, [BlendSpec.parse("cell+border4"), BlendSpec.parse("cell+dark")], image=image)
    edges = nucleus_edge_pixels(Entry.nuclei, rows, original_shape=(8, 8))
    for key, values in edges.items():
        np.testing.assert_array_equal(both[key], values)
    np.testing.assert_allclose(both["darkness"], [1.0, 0.0])
    with pytest.raises(ParameterError, match="img"):
        add_modifier_columns(rows, Entry, [BlendSpec.parse("cell+dark")])
    assert BlendSpec.parse("mean:w=0.7+dark").uses("dark") and not BlendSpec.parse("cell").uses("dark")


def test_nucleus_edge_pixels_counts_original_pixels_at_any_scale():
    nuclei = np.zeros((5, 5), dtype=np.uint16)
    nuclei[0, 1:4] = 1          # cell 1: nucleus on the top row, 3 seg pixels wide
    nuclei[2:5, 4] = 2          # cell 2: nucleus on the right column, 3 seg pixels tall
    rows = {"cell_id": np.array([1, 2]), "y0": np.array([0, 4]), "x0": np.array([0, 6]),
            "y1": np.array([6, 10]), "x1": np.array([10, 10])}
    got = nucleus_edge_pixels(nuclei, rows, original_shape=(10, 10))
    np.testing.assert_array_equal(got["nucleus_edge_ud_px"], [6, 2])  # 3 x 2 original columns; cell 2's top row
    np.testing.assert_array_equal(got["nucleus_edge_lr_px"], [0, 6])
    full = np.repeat(np.repeat(nuclei, 2, axis=0), 2, axis=1)
    same = nucleus_edge_pixels(full, rows, original_shape=(10, 10))
    for key in got:
        np.testing.assert_array_equal(got[key], same[key])


def test_every_rule_and_modifier_stays_in_unit_interval_as_float32():
    cell, image = _random(9, seed=3)
    rng = np.random.default_rng(1)
    rows = {"cell_area_px": rng.integers(100, 90_000, 9), "touches_border": rng.random(9) < 0.5,
            "y0": np.zeros(9, int), "x0": np.zeros(9, int), "y1": np.full(9, 40), "x1": np.full(9, 30),
            "nucleus_edge_ud_px": rng.integers(0, 30, 9), "nucleus_edge_lr_px": rng.integers(0, 40, 9)}
    for spec in blend_grid(image_scale=1.0, border=True):
        out = blend(cell, image, rows, spec=spec)
        assert out.dtype == np.float32 and out.shape == (9, 19), spec
        assert np.all((out >= 0) & (out <= 1)), spec
    before = cell.copy()
    blend(cell, image, rows, spec="fourth+area7:image_scale=1")
    np.testing.assert_array_equal(cell, before)


def test_inputs_outside_unit_interval_are_refused():
    cell, image = _random(2)
    cell[1, 4] = 1.5
    with pytest.raises(ParameterError, match=r"cell_scores\[1, 4\]"):
        blend(cell, image)
    with pytest.raises(ParameterError, match="image_scores"):
        blend(cell[:1], np.full(19, np.nan))


def test_spec_text_round_trip_and_errors():
    spec = BlendSpec.parse("fourth:w=0.6,negative=blend+area7:image_scale=0.25+border4")
    assert str(spec) == "fourth:w=0.6,negative=blend+area7:image_scale=0.25+border4"
    assert BlendSpec.parse(str(spec)) == spec
    assert dict(spec.options) == {"w": 0.6, "negative": "blend"}
    with pytest.raises(RegistryError, match="product12"):
        BlendSpec.parse("median")
    with pytest.raises(ParameterError, match="takes options"):
        BlendSpec.parse("mean:weight=0.5")
    with pytest.raises(ParameterError, match="w must be in"):
        blend(*_random(1), spec="mean:w=2")


# ----------------------------------------------------------------------------- choosing
def _validation_world():
    """Two images with classes 0 and 16 in their truth: A has class 0 in 16 of 20 cells, B in 4 of 20.

    The cell scores carry a weak signal under noise; the image scores know the fractions.
    """
    rng = np.random.default_rng(0)
    truth = np.zeros((40, 19), dtype=bool)
    truth[:16, 0] = truth[20:24, 0] = True
    truth[:, 16] = ~truth[:, 0]
    cell = np.clip(0.4 + 0.1 * truth + rng.normal(0, 0.15, (40, 19)), 0, 1).astype(np.float32)
    cells = {"ID": np.array(["A"] * 20 + ["B"] * 20)}
    return cell, truth, cells


def test_choose_blend_prefers_the_image_score_when_it_carries_information():
    cell, truth, cells = _validation_world()
    informative = {"A": _image({0: 0.9, 16: 0.2}), "B": _image({0: 0.2, 16: 0.9})}
    choice = choose_blend(["cell", "mean:w=0.5"], cell, informative, truth, cells)
    assert str(choice.best) == "mean:w=0.5"
    assert dict(choice.scores)["mean:w=0.5"] > dict(choice.scores)["cell"]
    assert "mean:w=0.5" in choice.table()


def test_choose_blend_comes_out_as_cell_only_when_the_image_adds_nothing():
    cell, truth, cells = _validation_world()
    same = np.tile(_image({0: 0.5, 16: 0.5}), (40, 1))  # row-aligned form, one image score per image
    choice = choose_blend(["cell", "mean:w=0.5", "mean:w=0.8"], cell, same, truth, cells)
    assert str(choice.best) == "cell"
    assert len({round(v, 12) for _, v in choice.scores}) == 1  # equal rankings, equal scores: the first wins


def test_per_cell_map_equals_the_competition_metric_when_masks_are_the_true_cells():
    rng = np.random.default_rng(5)
    solution, submission, all_scores, all_truth, all_ids = [], [], [], [], []
    for image_id, n_cells in (("img0", 4), ("img1", 3), ("img2", 5)):
        labels = np.zeros((12, 12), dtype=np.uint16)
        for k in range(n_cells):
            labels[(k // 3) * 4:(k // 3) * 4 + 3, (k % 3) * 4:(k % 3) * 4 + 3] = k + 1
        masks = rle.encode_label_map(labels)
        truth = rng.random((n_cells, 19)) < 0.3
        truth[:, NEG] = False
        scores = np.round(rng.random((n_cells, 19)), 4)
        gt = [f"{c} 1 {masks[i + 1]}" for i in range(n_cells) for c in np.flatnonzero(truth[i])]
        det = [f"{c} {scores[i, c]:.4f} {masks[i + 1]}" for i in range(n_cells) for c in range(19)]
        solution.append(SubmissionRow(image_id, 12, 12, " ".join(gt)))
        submission.append(SubmissionRow(image_id, 12, 12, " ".join(det)))
        all_scores.append(scores)
        all_truth.append(truth)
        all_ids += [image_id] * n_cells
    scores, truth = np.concatenate(all_scores), np.concatenate(all_truth)
    expected = evaluate(solution, submission)
    got, per_class = per_cell_map(scores, truth, np.array(all_ids))
    assert got == pytest.approx(expected.map, abs=1e-12)
    np.testing.assert_allclose(per_class, expected.per_class_ap, atol=1e-12)
