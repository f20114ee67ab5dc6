"""``cellcls report`` and :mod:`cellcls.report`: charts, inputs, the disagreement tables, the page, a real browser."""
from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls.classes import NEGATIVE
from cellcls.cli import main
from cellcls.errors import ReportError
from cellcls.labels import LabelTable, write_labels_csv
from cellcls.masks import MaskCache
from cellcls.metric import EvaluationResult
from cellcls.report import (SECTIONS, EvaluationSummary, ap_figure, bar_chart, curve_figure,
                            disagreement_figure, disagreements, line_chart, load_evaluation, load_segmentation,
                            nice_ticks, per_image_f1_figure, read_training_log, segmentation_figure,
                            training_curves, write_report)
from cellcls.report.draw import PALETTE
from cellcls.scores import score_frame, write_scores
from cellcls.show import write_png

BLUE, ORANGE = PALETTE[0], PALETTE[1]


def _has(rgb: np.ndarray, colour) -> int:
    return int(np.all(rgb == np.array(colour, np.uint8), axis=-1).sum())


def _evaluation(map_value: float, seed: int) -> dict:
    ap = np.random.default_rng(seed).uniform(0, 1, 19)
    ap[[11, 18]] = np.nan  # no ground truth
    result = EvaluationResult(map=map_value, per_class_ap=ap, n_gt=np.full(19, 5), n_det=np.full(19, 7),
                              n_tp=np.full(19, 3), n_images=4)
    return result.to_dict()


def _segmentation(f1: float) -> dict:
    return {"tp": 9, "fp": 1, "fn": 2, "precision": 0.9, "recall": 0.82, "f1": f1, "n_images": 3,
            "per_image": {"a": 0.7, "b": 1.0, "c": 0.95}}


def _metrics_csv(path: Path) -> Path:
    """A CSVLogger-style metrics.csv: sparse rows, step losses, one validation row and one epoch row per epoch."""
    rows = []
    for epoch in range(3):
        for k in range(2):
            rows.append({"epoch": epoch, "step": epoch * 10 + k * 5 + 4, "train/loss_step": 1.0 / (epoch + k + 1)})
        rows.append({"epoch": epoch, "step": epoch * 10 + 9, "val/loss": 0.9 - 0.1 * epoch, "val/cell_map": 0.3 + 0.1 * epoch,
                     "val/ap_00": 0.5, "val/focal": 2.0})
        rows.append({"epoch": epoch, "step": epoch * 10 + 9, "train/loss_epoch": 0.8 - 0.1 * epoch})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- charts
def test_nice_ticks_are_round_and_cover_the_range():
    assert nice_ticks(0, 1).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    ticks = nice_ticks(3, 97)
    assert ticks[0] <= 3 and ticks[-1] >= 97 and np.allclose(np.diff(ticks), 20)
    assert nice_ticks(0.5, 0.5).size >= 2  # a flat range still gets an axis


def test_tick_labels_are_short_and_never_in_exponent_form_for_large_values():
    from cellcls.report.draw import tick_text

    assert [tick_text(v) for v in (0, 0.25, 1234, 10_000, 25_000, 1.5e6, 2e9)] == \
        ["0", "0.25", "1234", "10k", "25k", "1.5M", "2G"]
    assert tick_text(-20_000) == "-20k" and tick_text(2e-4) == "2.0e-04"


def test_bar_chart_draws_one_bar_per_value_and_marks_nan():
    img = bar_chart(["a", "b", "c"], {"one": [0.5, 1.0, np.nan], "two": [0.25, np.nan, np.nan]}, width=400)
    assert img.dtype == np.uint8 and img.shape[1] == 400 and img.shape[2] == 3
    taller = bar_chart(["a", "b", "c", "d"], {"one": [0.5] * 4, "two": [0.25] * 4}, width=400)
    assert taller.shape[0] > img.shape[0]  # one group of bars more
    blue, orange = _has(img, BLUE), _has(img, ORANGE)
    assert blue > 0 and orange > 0
    assert blue > 4 * orange  # 1.5 units of blue bar against 0.25 of orange (legend swatches are equal)
    only_nan = bar_chart(["a"], {"one": [np.nan]}, width=400)
    assert _has(only_nan[40:], BLUE) == 0  # below the legend, no bar for a missing value
    with pytest.raises(ValueError):
        bar_chart(["a", "b"], {"one": [0.5]})


def test_line_chart_draws_each_series_and_survives_no_data():
    img = line_chart({"up": ([0, 1, 2], [0.1, 0.5, 0.9]), "flat": ([0, 2], [0.3, 0.3])}, width=400, height=240,
                     y_range=(0, 1))
    assert img.shape == (240, 400, 3)
    assert _has(img, BLUE) > 20 and _has(img, ORANGE) > 20
    empty = line_chart({"none": ([np.nan], [np.nan])}, width=300, height=200)
    assert empty.shape == (200, 300, 3) and _has(empty, BLUE) < 200  # only the legend swatch
    with pytest.raises(ValueError):
        line_chart({"bad": ([0, 1], [0.5])})


def test_figures_write_non_empty_pngs(tmp_path):
    evaluations = {"prior": load_evaluation(_evaluation(0.2, 0)), "cell": load_evaluation(_evaluation(0.6, 1))}
    ap, shown = ap_figure(evaluations, width=800)
    assert ap.shape[1] == 800 and 18 not in shown.tolist() and 11 not in shown.tolist() and len(shown) == 17
    seg = {"classical": _segmentation(0.8), "hpa": _segmentation(0.9)}
    curves = training_curves(read_training_log(_metrics_csv(tmp_path / "run" / "metrics.csv")))
    figures = {"ap": ap, "seg": segmentation_figure(seg), "per_image": per_image_f1_figure(seg),
               "curve": curve_figure("loss per epoch", curves["loss per epoch"], x_label="epoch")}
    for name, rgb in figures.items():
        path = write_png(tmp_path / f"{name}.png", rgb)
        back = cv2.imread(str(path))
        assert path.stat().st_size > 1000 and back.shape == rgb.shape and back.std() > 10, name
    assert per_image_f1_figure({"x": {"precision": 1, "recall": 1, "f1": 1}}) is None


# ----------------------------------------------------------------------------- inputs
def test_load_evaluation_reads_the_evaluate_json_and_refuses_other_files(tmp_path):
    path = tmp_path / "score.json"
    path.write_text(json.dumps(_evaluation(0.42, 0)))
    summary = load_evaluation(path)
    assert isinstance(summary, EvaluationSummary) and summary.map == pytest.approx(0.42)
    assert np.isnan(summary.ap[18]) and np.isfinite(summary.ap[0]) and summary.n_gt[0] == 5 and summary.n_images == 4
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReportError, match="bad.json"):
        load_evaluation(tmp_path / "bad.json")
    with pytest.raises(ReportError, match="per_class_ap"):
        load_evaluation({"map": 0.3})
    with pytest.raises(ReportError, match="f1"):
        load_segmentation({"precision": 1, "recall": 1})


def test_training_curves_group_the_logged_metrics(tmp_path):
    curves = training_curves(read_training_log(_metrics_csv(tmp_path / "metrics.csv")))
    assert set(curves) == {"per step", "loss per epoch", "validation scores per epoch"}
    assert set(curves["per step"]) == {"train/loss_step"} and len(curves["per step"]["train/loss_step"][0]) == 6
    assert set(curves["loss per epoch"]) == {"train/loss_epoch", "val/loss", "val/focal"}
    x, y = curves["validation scores per epoch"]["val/cell_map"]
    assert x.tolist() == [0, 1, 2] and np.allclose(y, [0.3, 0.4, 0.5])
    assert "val/ap_00" not in curves["validation scores per epoch"]  # per-class AP is left out
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ReportError, match="epoch"):
        read_training_log(tmp_path / "other.csv")


# ----------------------------------------------------------------------------- disagreement
def _constructed():
    """Image A is labelled {0}, image B {16}; C has no label (left out)."""
    labels = LabelTable(ids=("A", "B"), targets=np.array([[1 if c == 0 else 0 for c in range(19)],
                                                          [1 if c == 16 else 0 for c in range(19)]]))
    a = np.full((3, 19), 0.05)
    a[:, 0] = [0.9, 0.1, 0.4]
    a[1, NEGATIVE] = 0.8  # cell 2 of A: the image says Nucleoplasm, the model says Negative
    b = np.full((2, 19), 0.05)
    b[:, 16] = [0.7, 0.2]
    b[0, 0] = 0.95  # cell 1 of B: no Nucleoplasm in the image label, the model is sure of it
    frames = [score_frame("A", [1, 2, 3], a, mask_key="k", source="t"),
              score_frame("B", [1, 2], b, mask_key="k", source="t"),
              score_frame("C", [1], np.full((1, 19), 0.99), mask_key="k", source="t")]
    return pd.concat(frames, ignore_index=True), labels


def test_disagreements_find_the_cells_where_labels_and_model_part():
    scores, labels = _constructed()
    found = disagreements(scores, labels, top_n=2, threshold=0.5)
    assert found.n_cells == 5 and found.n_images == 2  # image C has no label
    missed0 = found.missed[found.missed["class_id"] == 0]
    assert list(zip(missed0["ID"], missed0["cell_id"])) == [("A", 2), ("A", 3)]  # lowest P(Nucleoplasm) first
    assert missed0["called_negative"].tolist() == [True, False]
    assert missed0.iloc[0]["best_class"] == NEGATIVE and missed0.iloc[0]["image_labels"] == (0,)
    extra0 = found.extra[found.extra["class_id"] == 0]
    assert (extra0.iloc[0]["ID"], extra0.iloc[0]["cell_id"]) == ("B", 1)
    assert extra0.iloc[0]["p_class"] == pytest.approx(0.95)
    s = found.summary.set_index("class_id")
    assert (s.loc[0, "pos_cells"], s.loc[0, "pos_low"], s.loc[0, "pos_called_negative"]) == (3, 2, 1)
    assert (s.loc[0, "neg_cells"], s.loc[0, "neg_high"]) == (2, 1)
    assert (s.loc[16, "pos_cells"], s.loc[16, "pos_low"], s.loc[16, "neg_high"]) == (2, 1, 0)
    assert s.loc[NEGATIVE, "neg_high"] == 1 and s.loc[NEGATIVE, "pos_called_negative"] == 0
    assert len(found.missed) == 2 + 2 and len(found.extra) == 19 * 2  # capped at top_n per class
    figure_, shown = disagreement_figure(found)
    assert set(shown.tolist()) == {0, 16, NEGATIVE} and figure_.shape[1] == 900


# ----------------------------------------------------------------------------- the page
class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        for key, value in attrs:
            if key in ("src", "href"):
                self.links.append(value)
            if key == "id":
                self.ids.add(value)


def _check_page(out: Path) -> _Links:
    text = (out / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    assert "http://" not in text and "https://" not in text and "script" not in parser.tags
    for link in parser.links:
        if link.startswith("#"):
            assert link[1:] in parser.ids, link
        else:
            assert "/" not in link and ":" not in link and (out / link).is_file(), link
    return parser


def test_an_empty_report_says_every_section_is_not_available(tmp_path):
    report = write_report(tmp_path / "r")
    assert [s.key for s in report.sections] == list(SECTIONS)
    assert all(s.status == "not available" for s in report.sections) and report.files == ()
    parser = _check_page(tmp_path / "r")
    assert "img" not in parser.tags
    assert (tmp_path / "r" / "index.html").read_text().count("Not available") == len(SECTIONS)


def test_sections_appear_with_their_inputs_and_a_bad_input_fails_only_its_section(tmp_path):
    (tmp_path / "broken.json").write_text("[]")
    scores, labels = _constructed()
    report = write_report(tmp_path / "r", evaluations={"prior": _evaluation(0.2, 0)},
                          segmentation=tmp_path / "broken.json", scores=scores, labels=labels)
    status = {s.key: s.status for s in report.sections}
    assert status == {"scores": "ok", "overlays": "not available", "segmentation": "failed",
                      "training": "not available", "disagreement": "ok"}
    assert report.failed == ("segmentation",)
    assert sorted(p.name for p in report.files) == ["ap_per_class.png", "disagreement.png"]
    _check_page(tmp_path / "r")
    text = (tmp_path / "r" / "index.html").read_text()
    assert "Could not be made" in text and "broken.json" in text


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny synthetic world: test images, their mask cache, scores, evaluations, a log; and its report."""
    root = tmp_path_factory.mktemp("report")
    assert main(["synth", "--out", str(root / "world"), "--train", "2", "--test", "2", "--size", "128", "--seed", "4",
                 "--no-progress", "-q"]) == 0
    assert main(["segment", "--images", str(root / "world" / "test"), "--out", str(root / "masks"),
                 "--backend", "classical", "--scale", "1", "--num-workers", "0", "--no-progress", "-q"]) == 0
    reader = MaskCache(root / "masks").reader()
    frames, ids = [], reader.ids()
    rng = np.random.default_rng(0)
    for image_id in ids:
        entry = reader.read(image_id)
        cells = np.unique(entry.cells)[1:]
        frames.append(score_frame(image_id, cells, rng.uniform(0, 1, (len(cells), 19)), mask_key=entry.mask_key,
                                  source="test"))
    write_scores(pd.concat(frames, ignore_index=True), root / "scores.parquet")
    targets = np.zeros((len(ids), 19), np.uint8)
    targets[:, 16] = 1
    targets[0, 0] = 1
    write_labels_csv(LabelTable(ids=tuple(ids), targets=targets), root / "labels.csv")
    for name, value in (("prior", 0.2), ("cell", 0.6)):
        (root / f"{name}.json").write_text(json.dumps(_evaluation(value, int(value * 10))))
    (root / "seg.json").write_text(json.dumps(_segmentation(0.85)))
    _metrics_csv(root / "run" / "logs" / "version_0" / "metrics.csv")
    return root


def _cli_args(world: Path, out: Path) -> list[str]:
    return ["report", "--out", str(out), "--evaluation", f"prior={world / 'prior.json'}",
            "--evaluation", f"cell={world / 'cell.json'}", "--segmentation", str(world / "seg.json"),
            "--train-log", str(world / "run" / "logs" / "version_0" / "metrics.csv"),
            "--scores", str(world / "scores.parquet"), "--labels", str(world / "labels.csv"),
            "--images", str(world / "world" / "test"), "--masks", str(world / "masks"),
            "--truth", str(world / "world" / "truth"), "--overlay-ids", "2", "--overlay-size", "256", "-q"]


def test_the_command_fills_every_section_with_links_that_resolve(world, capsys):
    out = world / "report"
    assert main(_cli_args(world, out)) == 0
    printed = capsys.readouterr().out
    assert "index.html" in printed and "failed" not in printed
    parser = _check_page(out)
    pngs = [link for link in parser.links if link.endswith(".png")]
    assert {"ap_per_class.png", "overlay_00.png", "overlay_01.png", "segmentation.png", "disagreement.png"} <= set(pngs)
    assert sum(link.startswith("training_") for link in pngs) == 3  # per step, loss per epoch, scores per epoch
    text = (out / "index.html").read_text()
    assert "Not available" not in text and "<h3>run</h3>" in text  # the run is named by its folder
    for title in SECTIONS.values():
        assert f"<h2>{title}</h2>" in text


def test_the_command_exits_1_on_an_unreadable_input_and_still_writes_the_page(world, capsys):
    out = world / "report_bad"
    assert main(["report", "--out", str(out), "--evaluation", f"x={world / 'missing.json'}", "-q"]) == 1
    assert "scores" in capsys.readouterr().out and (out / "index.html").is_file()
    assert main(["report", "--out", str(out), "--evaluation", "=a.json"]) == 1
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["report", "--out", str(out), "--images", str(world / "world" / "test")]) == 1
    assert "--masks" in capsys.readouterr().err


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (apt-get install chromium) to render "
                    "the report in a real browser")
def test_the_report_renders_in_headless_chromium(world, tmp_path):
    out = world / "report_browser"
    assert main(_cli_args(world, out)) == 0
    shot = tmp_path / "shot.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,2000", "--hide-scrollbars", (out / "index.html").resolve().as_uri()],
                   check=True, timeout=120, capture_output=True)
    rgb = cv2.imread(str(shot))[..., ::-1]
    assert rgb.shape == (2000, 1280, 3)
    assert rgb.std() > 20  # not a blank page
    assert _has(rgb, BLUE) > 500 and _has(rgb, ORANGE) > 500  # the AP bars' PNG was loaded and drawn at 1:1
