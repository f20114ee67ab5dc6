"""The pipeline a user runs, end to end through the CLI, on a tiny synthetic world."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cellcls.cli import main
from cellcls.labels import read_train_csv
from cellcls.submission import NO_PREDICTION, read_submission

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    assert main(["synth", "--out", str(out / "world"), "--train", "8", "--test", "4", "--size", "320",
                 "--seed", "3", "--no-progress"]) == 0
    masks = out / "masks"
    assert main(["segment", "--images", str(out / "world" / "test"), "--out", str(masks), "--scale", "1",
                 "--backend", "classical", "--no-progress", "--num-workers", "0"]) == 0
    return out


def test_segmentation_scores_well_against_truth(world, capsys):
    assert main(["segment-score", "--masks", str(world / "masks"), "--truth", str(world / "world" / "truth"),
                 "--json", str(world / "seg.json"), "--no-progress"]) == 0
    result = json.loads((world / "seg.json").read_text())
    assert result["n_images"] == 4
    assert result["f1"] >= 0.85
    assert "F1" in capsys.readouterr().out


def test_prior_submission_is_valid_and_scored(world, capsys):
    world_dir = world / "world"
    sub = world / "submission.csv"
    assert main(["prior-submission", "--masks", str(world / "masks"), "--sample",
                 str(world_dir / "sample_submission.csv"), "--labels", str(world_dir / "train.csv"),
                 "--out", str(sub), "--no-progress"]) == 0
    assert main(["check-submission", str(sub), "--sample", str(world_dir / "sample_submission.csv")]) == 0
    rows = list(read_submission(sub))
    prior = read_train_csv(world_dir / "train.csv").targets.mean(axis=0)
    triplets = rows[0].prediction_string.split()
    assert len(triplets) % 3 == 0 and len(triplets) // 3 % 19 == 0  # all 19 classes for every cell
    confidences = np.array([float(c) for c in triplets[1::3][:19]])
    np.testing.assert_allclose(confidences, prior, atol=1e-6)
    assert main(["evaluate", "--solution", str(world_dir / "solution.csv"), "--submission", str(sub),
                 "--json", str(world / "score.json")]) == 0
    score = json.loads((world / "score.json").read_text())
    assert 0.0 < score["map"] < 1.0


def test_images_missing_from_the_cache_get_the_placeholder(world, tmp_path):
    world_dir = world / "world"
    sample = (world_dir / "sample_submission.csv").read_text().splitlines()
    extra = sample + ["not_segmented,512,512,0 1 eNoLCAgIMAEABJkBdQ=="]
    (tmp_path / "sample.csv").write_text("\n".join(extra) + "\n")
    sub = tmp_path / "sub.csv"
    assert main(["prior-submission", "--masks", str(world / "masks"), "--sample", str(tmp_path / "sample.csv"),
                 "--labels", str(world_dir / "train.csv"), "--out", str(sub), "--no-progress"]) == 0
    last = list(read_submission(sub))[-1]
    assert last.id == "not_segmented" and last.prediction_string == NO_PREDICTION
