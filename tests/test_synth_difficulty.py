"""The synthetic world is hard for weak pipelines: copying image labels to cells scores badly."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellcls.classes import NEGATIVE
from cellcls.metric import evaluate
from cellcls.rle import encode
from cellcls.submission import SubmissionRow
from cellcls.synth import generate_world, make_sample
from cellcls.synth.difficulty import reference_rows, world_reference_scores


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hard_world")
    # scale 0.125 at 256 px = a 2048 px field: cells of ~300-900 px, 10-45 per image
    generate_world(out, n_train=20, n_test=40, size_px=256, scale=0.125, seed=4, progress=False)
    return out


@pytest.mark.slow
def test_broadcasting_image_labels_scores_badly_and_the_oracle_perfectly(world):
    scores = world_reference_scores(world)
    broadcast, prior, oracle = scores["broadcast"], scores["prior"], scores["oracle"]
    assert oracle.map == 1.0, oracle.table()
    assert broadcast.map <= 0.6, broadcast.table()
    assert broadcast.map >= 0.3, "cells must still mostly show their image's classes"
    # the prior baseline ranks cells of classes 0-17 exactly as the broadcast does (all ties)
    both = ~np.isnan(broadcast.per_class_ap[:NEGATIVE])
    assert np.array_equal(broadcast.per_class_ap[:NEGATIVE][both], prior.per_class_ap[:NEGATIVE][both])
    assert broadcast.n_gt[NEGATIVE] > 0, "positive images hold non-expressing (Negative) cells"


def _rows(samples, labels_of_cell) -> list[SubmissionRow]:
    """Rows built here from the truth, independent of cellcls.synth.difficulty."""
    rows = []
    for i, s in enumerate(samples):
        parts = []
        for cell_id, labels in sorted(s.cell_labels.items()):
            mask = encode(s.cells == cell_id)
            parts += [f"{c} 1 {mask}" for c in labels_of_cell(s, labels)]
        h, w = s.cells.shape
        rows.append(SubmissionRow(f"img{i}", w, h, " ".join(parts)))
    return rows


def test_scores_from_samples_match_a_hand_built_broadcast():
    samples = [make_sample(seed, size_px=(192, 192), scale=0.125, density=40) for seed in range(12)]
    truth = _rows(samples, lambda s, labels: labels)
    broadcast = _rows(samples, lambda s, labels: s.image_labels)
    hand_broadcast = evaluate(truth, broadcast).map
    assert evaluate(truth, truth).map == 1.0
    assert hand_broadcast < 0.75, "image labels copied to cells must not be near-perfect"
    refs = reference_rows(truth)
    assert evaluate(truth, refs["broadcast"]).map == pytest.approx(hand_broadcast)
    assert evaluate(truth, refs["oracle"]).map == 1.0
