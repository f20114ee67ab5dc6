"""Image-level F1 and AP used in training/validation."""
from __future__ import annotations

import numpy as np
import pytest

from cellcls.image_metrics import average_precision, f1_scores, mean_average_precision


def test_f1_hand_computed():
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.6, 0.1], [0.4, 0.8, 0.0], [0.7, 0.2, 0.2], [0.1, 0.1, 0.3]])
    out = f1_scores(targets, probs, 0.5)
    # class 0: TP 1 (row 0), FP 1 (row 2), FN 1 (row 1) -> 2/4 ; class 1: TP 1, FP 1, FN 1 -> 0.5
    # class 2: no positive, no prediction -> NaN (not scored)
    np.testing.assert_allclose(out["per_class_f1"], [0.5, 0.5, np.nan])
    assert out["macro_f1"] == 0.5
    assert out["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 2))
    assert out["tp"].tolist() == [1, 1, 0] and out["fp"].tolist() == [1, 1, 0] and out["fn"].tolist() == [1, 1, 0]


def test_f1_per_class_thresholds_and_inclusive_threshold():
    targets = np.array([[1, 1], [0, 0]])
    probs = np.array([[0.3, 0.3], [0.2, 0.2]])
    out = f1_scores(targets, probs, np.array([0.3, 0.31]))
    np.testing.assert_allclose(out["per_class_f1"], [1.0, 0.0])  # 0.3 >= 0.3 counts as positive
    assert out["macro_f1"] == 0.5


def test_f1_false_positive_on_a_class_without_positives_scores_zero():
    out = f1_scores(np.array([[0], [0]]), np.array([[0.9], [0.1]]), 0.5)
    assert out["per_class_f1"][0] == 0.0 and out["macro_f1"] == 0.0


def test_average_precision_hand_computed_and_nan_without_positives():
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.3], [0.8, 0.2], [0.7, 0.1]])
    ap = average_precision(targets, probs)
    # ranking TP, FP, TP: P = 1, 1/2, 2/3 ; R = 1/2, 1/2, 1 -> 0.5 + 0.5 * 2/3
    assert ap[0] == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(ap[1])
    assert mean_average_precision(targets, probs) == pytest.approx(0.5 + 1 / 3)
    assert np.isnan(mean_average_precision(np.zeros((2, 2)), np.ones((2, 2)) * 0.5))


def test_ties_are_one_threshold_independent_of_order():
    probs = np.array([[0.5], [0.5]])
    assert average_precision(np.array([[0], [1]]), probs)[0] == 0.5
    assert average_precision(np.array([[1], [0]]), probs)[0] == 0.5


def test_average_precision_equals_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = rng.random((200, 19)) < 0.2
    targets[:, 5] = False
    probs = np.round(rng.random((200, 19)), 2)  # rounded: many ties
    ap = average_precision(targets, probs)
    for c in range(19):
        if c == 5:
            assert np.isnan(ap[c])
        else:
            assert ap[c] == pytest.approx(sklearn_metrics.average_precision_score(targets[:, c], probs[:, c]), abs=1e-12)
    f1 = f1_scores(targets, probs, 0.5)
    pred = probs >= 0.5
    assert f1["micro_f1"] == pytest.approx(sklearn_metrics.f1_score(targets, pred, average="micro"))
    assert (f1["fp"][5] > 0) and not np.isnan(f1["per_class_f1"]).any()
    assert f1["macro_f1"] == pytest.approx(sklearn_metrics.f1_score(targets, pred, average="macro", zero_division=0))


@pytest.mark.parametrize("targets, probs", [
    (np.zeros((3, 2)), np.zeros((3, 3))),
    (np.zeros(3), np.zeros(3)),
    (np.full((2, 2), 2), np.zeros((2, 2))),
    (np.zeros((2, 2)), np.array([[np.nan, 0], [0, 0]])),
])
def test_bad_inputs_raise(targets, probs):
    with pytest.raises(ValueError):
        average_precision(targets, probs)
    with pytest.raises(ValueError):
        f1_scores(targets, probs, 0.5)


def test_inputs_not_mutated():
    targets = np.array([[1, 0], [0, 1]])
    probs = np.array([[0.2, 0.9], [0.4, 0.1]])
    t0, p0 = targets.copy(), probs.copy()
    average_precision(targets, probs)
    f1_scores(targets, probs, 0.5)
    np.testing.assert_array_equal(targets, t0)
    np.testing.assert_array_equal(probs, p0)
