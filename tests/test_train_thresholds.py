"""Rate-matching thresholds, validation measures, schedules and the 2019 losses as the module uses them."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from train.metrics import f1_scores, per_class_ap, prior_macro_f1
from train.schedules import BESTFITTING2019_STEPS, make_schedule
from train.thresholds import positive_rate, rate_matching_thresholds


def test_thresholds_make_the_predicted_rate_equal_the_target_rate():
    rng = np.random.default_rng(0)
    probs = rng.random((200, 19))
    rates = rng.uniform(0.0, 0.6, size=19)
    t = rate_matching_thresholds(probs, rates)
    predicted = (probs >= t).sum(axis=0)
    np.testing.assert_array_equal(predicted, np.rint(rates * 200).astype(int))


def test_threshold_edge_rates_and_midpoint():
    probs = np.array([[0.9, 0.9], [0.8, 0.8], [0.3, 0.3], [0.1, 0.1]])
    t = rate_matching_thresholds(probs, np.array([0.0, 1.0]))
    assert t[0] > 0.9 and not (probs[:, 0] >= t[0]).any()
    assert (probs[:, 1] >= t[1]).all()
    assert rate_matching_thresholds(probs, np.array([0.5, 0.25]))[0] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="rates must have shape"):
        rate_matching_thresholds(probs, np.array([0.5]))


def test_positive_rate_of_hard_and_soft_labels():
    np.testing.assert_allclose(positive_rate(np.array([[1, 0], [0, 0], [1, 0.5]])), [2 / 3, 1 / 6])


def test_f1_and_prior():
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    perfect = f1_scores(targets.astype(float), targets)
    assert perfect == {"macro_f1": 1.0, "micro_f1": 1.0}
    half = f1_scores(np.array([[1, 1], [0, 0], [0, 1], [0, 0.]]), targets)
    # class 0: tp 1, fn 1 -> 2/3; class 1: tp 1, fp 1 -> 2/3; micro: tp 2, fp 1, fn 1 -> 2/3
    assert half["macro_f1"] == pytest.approx(2 / 3) and half["micro_f1"] == pytest.approx(2 / 3)
    # always-positive guess: rate 0.5 -> 2/3, rate 0.25 -> 0.4
    assert prior_macro_f1(targets) == pytest.approx((2 / 3 + 0.4) / 2)


def test_per_class_ap():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3]])
    targets = np.array([[1, 0], [0, 0], [1, 0]])
    ap = per_class_ap(probs, targets)
    assert ap[0] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert math.isnan(ap[1])


def test_bestfitting2019_schedule_is_the_2019_steps():
    lr = 30e-5
    factor = make_schedule("bestfitting2019", lr=lr, max_epochs=45)
    got = [lr * factor(e) for e in (0, 24.9, 25, 30.5, 36, 41, 44.9, 60)]
    want = [30e-5, 30e-5, 15e-5, 7.5e-5, 3e-5, 1e-5, 1e-5, 1e-5]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert [e for e, _ in BESTFITTING2019_STEPS] == [25, 5, 5, 5, 5]


def test_cosine_schedule_warms_up_and_decays_to_the_floor():
    factor = make_schedule("cosine", lr=1e-3, max_epochs=10, warmup_epochs=1, min_lr=1e-5)
    assert factor(0) < 0.01 and factor(1) == pytest.approx(1.0)
    assert factor(5.5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert factor(10) == pytest.approx(0.01)


def _focal_2019(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """The 2019 winner's focal loss, written out: summed over classes, mean over the batch."""
    p = torch.sigmoid(logits)
    pt = torch.where(targets > 0.5, p, 1 - p)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return ((1 - pt) ** gamma * bce).sum(dim=1).mean()


def test_module_losses_are_the_2019_definitions():
    from cellcls.losses import hard_log_loss, symmetric_lovasz_hinge
    from train.module import CellClassifier

    module = CellClassifier("resnet10t", loss="bestfitting2019")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 19, generator=g) * 3
    targets = (torch.rand(16, 19, generator=g) < 0.3).float()
    focal = _focal_2019(logits, targets)
    assert float(module.focal(logits, targets)) == pytest.approx(float(focal), rel=1e-5)  # validation measure
    total = 0.5 * focal + 0.5 * symmetric_lovasz_hinge(logits, targets) + 0.5 * hard_log_loss(logits, targets)
    assert float(module.criterion(logits, targets)) == pytest.approx(float(total), rel=1e-5)
