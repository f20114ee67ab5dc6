"""``cellcls demo``: the recipe end to end on a tiny world, on a folder without a solution, and its pseudo labels."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cellcls.classes import NEGATIVE, NUM_CLASSES
from cellcls.cli import main as cellcls_main
from infer.demo import SUMMARY_KEYS
from infer.pseudo import image_label_pseudo

TINY = ["--train", "16", "--test", "4", "--size", "192", "--epochs", "1", "--tta", "none", "--no-progress"]


# ----------------------------------------------------------------------------- pseudo labels (pure)
def _labels(*classes: int) -> np.ndarray:
    row = np.zeros(NUM_CLASSES, dtype=bool)
    row[list(classes)] = True
    return row


def test_pseudo_labels_keep_only_the_image_labels_and_rescale_to_the_best_cell():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.05, 0.9, size=(5, NUM_CLASSES))
    scores[2, 3] = 0.6  # the most likely cell of class 3
    scores[:, 3] = np.minimum(scores[:, 3], 0.6)
    soft = image_label_pseudo(scores, _labels(3, 7))
    others = [c for c in range(NUM_CLASSES) if c not in (3, 7, NEGATIVE)]
    assert np.all(soft[:, others] == 0)
    assert soft[2, 3] == pytest.approx(1.0)
    np.testing.assert_allclose(soft[:, 3], scores[:, 3] / 0.6, rtol=1e-6)
    np.testing.assert_allclose(soft[:, NEGATIVE], 1 - soft[:, [3, 7]].max(axis=1), rtol=1e-6)
    assert scores[2, 3] == 0.6  # input untouched


def test_pseudo_labels_of_a_negative_image_are_all_negative():
    soft = image_label_pseudo(np.full((3, NUM_CLASSES), 0.4), _labels(NEGATIVE))
    assert np.all(soft[:, NEGATIVE] == 1) and np.all(np.delete(soft, NEGATIVE, axis=1) == 0)


def test_data_not_in_kaggle_layout_is_one_error_naming_what_is_missing(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    code = cellcls_main(["demo", "--data", str(tmp_path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert "sample_submission.csv" in err and "train.csv" in err


# ----------------------------------------------------------------------------- end to end (slow)
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    assert cellcls_main(["demo", "--out", str(out), *TINY]) == 0
    return out


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_scores_a_valid_submission(tiny_run, capsys):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert list(summary["stage_s"]) == ["world", "folds", "stats", "segment", "prior", "train", "blend",
                                        "pseudo", "predict", "check", "evaluate"]
    for key in ("map_prior", "map_image", "map_cell", "map_blend", "segment_f1"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["cells_found"] > 0 and summary["cells_true"] > 0
    assert summary["blend"] in summary["blend_choice"]
    assert summary["pseudo"] and Path(summary["pseudo"]).is_file()
    sample = tiny_run / "world" / "sample_submission.csv"
    assert cellcls_main(["check-submission", summary["submission"], "--sample", str(sample)]) == 0
    assert (tiny_run / "runs" / "cell" / "checkpoints" / "last.ckpt").is_file()
    assert (tiny_run / "runs" / "image" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_every_blend_rule_is_reported_on_test_and_agrees_with_the_submissions_predict_wrote(tiny_run):
    # score_blends re-blends the two score tables itself: its "cell" and chosen-blend figures must be
    # those of the submissions `cellcls predict` wrote (two code paths, one answer), and every rule of
    # REPORT_BLENDS (fourth, border4, area7 need the cell table) is there.
    from infer.demo_blend import REPORT_BLENDS
    from infer.blend import BlendSpec

    summary = json.loads((tiny_run / "summary.json").read_text())
    reported = summary["map_blends_test"]
    expected = [str(BlendSpec.parse(s.format(scale="0.25"))) for s in REPORT_BLENDS]
    assert list(reported) == expected
    assert all(0.0 <= v <= 1.0 for v in reported.values())
    assert reported["cell"] == pytest.approx(summary["map_cell"], abs=1e-12)
    assert reported[summary["blend"]] == pytest.approx(summary["map_blend"], abs=1e-12)


@pytest.mark.slow
def test_own_data_without_solution_is_not_scored_but_gets_a_valid_submission(tiny_run, tmp_path):
    data = tmp_path / "kaggle"
    world = tiny_run / "world"
    for name in ("train", "test"):
        shutil.copytree(world / name, data / name)
    for name in ("train.csv", "sample_submission.csv"):
        shutil.copy(world / name, data / name)
    out = tmp_path / "run"
    # Without world.json the images would be taken for full-resolution HPA fields and shrunk by 4.
    argv = ["demo", "--data", str(data), "--out", str(out), "--image-scale", "0.25", "--no-pseudo", *TINY[6:]]
    assert cellcls_main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert all(summary[k] is None for k in ("map_prior", "map_image", "map_cell", "map_blend", "segment_f1"))
    assert summary["blend"] == "mean:w=0.7" and summary["blend_choice"] is None
    assert "world" not in summary["stage_s"] and "evaluate" not in summary["stage_s"]
    assert Path(summary["submission"]) == out / "submission.csv"
    assert cellcls_main(["check-submission", str(out / "submission.csv"),
                         "--sample", str(data / "sample_submission.csv")]) == 0


# ----------------------------------------------------------------------------- what the weak labels cost
@pytest.fixture(scope="module")
def ceiling_script():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "weak_label_ceiling.py"
    spec = importlib.util.spec_from_file_location("weak_label_ceiling", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_truth_cell_labels_score_every_segmented_cell_within_its_images_labels(tiny_run, ceiling_script):
    from cellcls.masks import MaskCache
    from cellcls.scores import SCORE_COLUMNS
    from cellcls.show import match_cells, read_truth

    table, image_labels = ceiling_script.truth_cell_labels(tiny_run)
    reader = MaskCache(tiny_run / "masks" / "train").reader()
    total = 0
    for image_id in image_labels:
        entry = reader.read(image_id, upscale=True)
        total += int(np.count_nonzero(np.unique(entry.cells)))
    assert len(table) == total > 0
    truth = table[list(SCORE_COLUMNS)].to_numpy()
    assert set(np.unique(truth)) <= {0.0, 1.0} and (truth.sum(axis=1) >= 1).all()
    # a cell's truth is a subset of its image's labels (the image label is the union), or Negative
    for row, image_id in zip(truth.astype(bool), table["ID"]):
        shown = row.copy()
        shown[NEGATIVE] = False
        assert not (shown & ~image_labels[image_id]).any(), image_id
    # a matched cell carries exactly its truth cell's labels
    image_id = table["ID"].iloc[0]
    entry = reader.read(image_id, upscale=True)
    truth_map, truth_labels = read_truth(tiny_run / "world" / "truth", image_id)
    cell_id, truth_id = next(iter(match_cells(entry.cells, truth_map, iou_threshold=0.6).items()))
    row = table[(table["ID"] == image_id) & (table["cell_id"] == cell_id)][list(SCORE_COLUMNS)].to_numpy()[0]
    assert np.flatnonzero(row).tolist() == sorted(truth_labels[truth_id])
    quality = ceiling_script.label_quality(table, image_labels)
    assert len(quality) == NUM_CLASSES
    for _name, n, hit, precision in quality:
        assert 0 <= hit <= n and (n == 0 or precision == pytest.approx(hit / n))
    darkness = ceiling_script.train_cell_darkness(tiny_run, table)
    assert darkness.shape == (len(table),) and np.all((darkness >= 0) & (darkness <= 1))
    targets = ceiling_script.target_quality(table, image_labels, darkness)
    assert all(0.0 <= v <= 1.0 for v in targets.values())


@pytest.mark.slow
def test_ceiling_script_trains_on_cell_truth_and_reports_its_test_score(tiny_run, ceiling_script, tmp_path, capsys):
    assert ceiling_script.main(["--demo", str(tiny_run), "--epochs", "1", "--out", str(tmp_path / "c")]) == 0
    printed = capsys.readouterr().out
    assert "trained on cell truth" in printed and "held-out fold-0 cells" in printed
    assert "broadcast + darkness" in printed and "Negative AP of darkness" in printed
    assert (tmp_path / "c" / "truth_run" / "checkpoints" / "last.ckpt").is_file()
    assert len(ceiling_script.val_curve(tmp_path / "c" / "truth_run")) == 1
