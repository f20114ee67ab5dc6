"""``cellcls show`` and :mod:`cellcls.show`: colours, outlines, labels, truth marks, the command."""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from cellcls import rle
from cellcls.cli import main
from cellcls.errors import ScoreTableError
from cellcls.masks import MaskCache
from cellcls.scores import score_frame, write_scores
from cellcls.show import (
    SHORT_NAMES,
    CellCall,
    calls_from_scores,
    cell_borders,
    cells_from_submission,
    composite,
    match_cells,
    quantize,
    render_overlay,
    render_sheet,
    stretch,
)

WHITE, RED, ORANGE = (255, 255, 255), (255, 40, 40), (255, 165, 0)


def _image(shape=(8, 8), dtype=np.uint8) -> np.ndarray:
    return np.zeros((*shape, 4), dtype)


# ----------------------------------------------------------------------------- pixels
def test_green_only_pixel_is_green_and_yellow_adds_to_red_and_green():
    image = _image()
    image[1, 1, 1] = 200  # protein only
    image[2, 2, 3] = 200  # ER only
    image[3, 3, 0] = 200  # microtubules only
    image[4, 4, 2] = 200  # nucleus only
    rgb = composite(image, weights=(1, 1, 1, 1))
    assert tuple(rgb[1, 1]) == (0, 255, 0)
    assert tuple(rgb[2, 2]) == (255, 255, 0)
    assert tuple(rgb[3, 3]) == (255, 0, 0)
    assert tuple(rgb[4, 4]) == (0, 0, 255)
    assert tuple(rgb[0, 0]) == (0, 0, 0)
    default = composite(image)  # reference channels dimmed, yellow still equal parts red and green
    assert tuple(default[1, 1]) == (0, 255, 0)
    assert default[2, 2, 0] == default[2, 2, 1] > 0 and default[2, 2, 2] == 0


def test_stretch_maps_the_percentiles_to_black_and_full_for_8_and_16_bit():
    plane = np.arange(100, dtype=np.uint8).reshape(10, 10)
    out = stretch(plane, percentiles=(10, 90))
    low, high = np.percentile(np.arange(100), (10, 90))
    assert out.dtype == np.float32
    assert out.flat[5] == 0.0 and out.flat[95] == 1.0
    assert out.flat[50] == pytest.approx((50 - low) / (high - low), abs=1e-6)
    image8 = np.random.default_rng(0).integers(0, 256, (16, 16, 4)).astype(np.uint8)
    image16 = image8.astype(np.uint16) * 256 + 3  # 16-bit with an offset: same picture
    assert np.array_equal(composite(image8), composite(image16))


def test_a_nearly_empty_channel_is_stretched_to_its_maximum_and_a_constant_one_is_black():
    plane = np.zeros((10, 10), np.uint16)
    plane[3, 4] = 7  # 1 pixel of 100: the 99.5th percentile is still 0
    assert stretch(plane)[3, 4] == 1.0
    assert not stretch(np.full((4, 4), 9, np.uint8)).any()


def test_quantize_keeps_black_and_full_and_leaves_few_levels():
    rgb = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = quantize(rgb, 32)
    assert len(np.unique(out)) == 32 and out.min() == 0 and out.max() == 255
    assert np.array_equal(quantize(rgb, 256), rgb)


# ----------------------------------------------------------------------------- outlines and labels
def test_outlines_lie_on_the_cell_borders_only():
    cells = np.zeros((20, 20), np.uint16)
    cells[5:15, 5:10], cells[5:15, 10:15] = 1, 2  # two touching cells
    ring = cell_borders(cells)
    expected = np.zeros_like(ring)
    for y0, y1, x0, x1 in ((5, 15, 5, 10), (5, 15, 10, 15)):
        box = np.zeros_like(ring)
        box[y0:y1, x0:x1] = True
        inner = np.zeros_like(ring)
        inner[y0 + 1:y1 - 1, x0 + 1:x1 - 1] = True
        expected |= box & ~inner
    assert np.array_equal(ring, expected)
    rgb = render_overlay(_image((20, 20)), cells=cells, size=20).image  # black image: only outlines show
    assert np.array_equal(np.all(rgb == WHITE, axis=-1), expected)


def test_each_cell_gets_its_top_k_classes_drawn_inside_it():
    cells = np.zeros((200, 200), np.uint16)
    cells[10:90, 10:190], cells[110:190, 10:190] = 1, 2
    calls = [CellCall(1, ((16, 0.9), (0, 0.4), (2, 0.1))), CellCall(2, ((14, 0.75),))]
    rendered = render_overlay(_image((200, 200)), cells=cells, calls=calls, size=200, top_k=2)
    texts = {label.cell_id: label.lines for label in rendered.labels}
    assert texts == {1: ("Cytosol 0.90", "Nucleopl 0.40"), 2: ("Mito 0.75",)}
    for label in rendered.labels:
        x, y = label.center
        assert cells[y, x] == label.cell_id
        near = rendered.image[y - 8:y + 8, x - 40:x + 40]
        assert (near > 0).sum() > 50  # text pixels on the black image
    assert len(SHORT_NAMES) == 19 and max(len(n) for n in SHORT_NAMES) <= 8


def test_match_cells_needs_iou_of_at_least_the_threshold():
    truth = np.zeros((1, 20), np.uint16)
    truth[0, :10] = 1
    exact = np.zeros_like(truth)
    exact[0, :6] = 5  # IoU 6/10 = 0.6: a match (inclusive, as the metric)
    assert match_cells(exact, truth) == {5: 1}
    short = np.zeros_like(truth)
    short[0, :5] = 5  # IoU 0.5
    assert match_cells(short, truth) == {}


def _truth_case():
    # cells 200 px wide: their labels fit inside them, clear of the outlines
    truth = np.zeros((480, 480), np.uint16)
    truth[20:220, 20:220], truth[20:220, 260:460], truth[260:460, 20:220] = 1, 2, 3
    cells = np.zeros_like(truth)
    cells[20:220, 20:220] = 1      # = truth 1, predicted right
    cells[20:220, 260:460] = 2     # = truth 2, predicted wrong
    cells[260:460, 160:360] = 3    # overlaps truth 3 by 60 of 200 columns: no true cell; truth 3 missed
    calls = [CellCall(1, ((16, 0.9),)), CellCall(2, ((0, 0.8),)), CellCall(3, ((13, 0.7),))]
    labels = {1: (16,), 2: (2, 5), 3: (14,)}
    return truth, cells, calls, labels


def test_wrong_cells_are_outlined_red_with_their_true_labels():
    truth, cells, calls, labels = _truth_case()
    rendered = render_overlay(_image(truth.shape), cells=cells, calls=calls, truth_cells=truth, truth_labels=labels,
                              size=480, top_k=1)
    assert rendered.wrong == {2, 3} and rendered.missed == {3}
    red = np.all(rendered.image == RED, axis=-1)
    border = cell_borders(cells)
    assert red[border & (cells == 2)].all() and red[border & (cells == 3)].mean() > 0.9
    assert not red[border & (cells == 1)].any()
    assert np.all(rendered.image == ORANGE, axis=-1)[cell_borders(truth) & (truth == 3) & (cells == 0)].any()
    by_kind = {(label.kind, label.cell_id): label.lines for label in rendered.labels}
    assert by_kind[("prediction", 1)] == ("Cytosol 0.90",)
    assert by_kind[("wrong", 2)] == ("Nucleopl 0.80", "true: Nucleoli|NucBody")
    assert by_kind[("wrong", 3)] == ("PlasMemb 0.70", "no true cell")
    assert by_kind[("missed", 3)] == ("missed: Mito",)


def test_labels_of_neighbouring_cells_do_not_overlap():
    cells = np.zeros((60, 200), np.uint16)
    for i in range(8):  # 8 narrow cells side by side: their labels would sit on top of each other
        cells[10:50, 5 + 24 * i:25 + 24 * i] = i + 1
    calls = [CellCall(i + 1, ((16, 0.9), (0, 0.5))) for i in range(8)]
    rendered = render_overlay(_image(cells.shape), cells=cells, calls=calls, size=400)
    centers = [label.center for label in rendered.labels]
    assert len(set(centers)) == 8
    boxes_apart = [abs(a[0] - b[0]) > 60 or abs(a[1] - b[1]) > 20 for i, a in enumerate(centers)
                   for b in centers[i + 1:]]
    assert all(boxes_apart)


def test_the_sheet_holds_the_composite_and_four_channel_panels_under_a_header():
    image = _image((480, 480))
    image[:240, :240, 1] = 255                           # protein: top-left quarter only
    image[..., 2] = np.arange(480, dtype=np.uint8)[None, :] // 2  # nucleus: a left-to-right ramp
    sheet = render_sheet(image, title="demo", size=240).image
    assert sheet.shape[1] == 480 and sheet.shape[0] > 240  # composite 240 + 2 x 2 panels of 120
    top = sheet.shape[0] - 240
    composite_part, protein, nucleus = sheet[top:, :240], sheet[top:top + 120, 360:], sheet[top + 120:, 240:360]
    assert composite_part[60, 60, 1] == 255 and composite_part[180, 180, 1] == 0
    assert protein[45, 30].tolist() == [255, 255, 255] and protein[100, 100].tolist() == [0, 0, 0]
    assert np.all(nucleus[..., 0] == nucleus[..., 2]) and nucleus[60, 110, 0] > nucleus[60, 10, 0]


# ----------------------------------------------------------------------------- loaders
def test_scores_made_on_other_masks_are_refused():
    frame = score_frame("img", [1, 2], np.full((2, 19), 0.5), mask_key="key-a", source="t")
    with pytest.raises(ScoreTableError, match="key-b"):
        calls_from_scores(frame, image_id="img", mask_key="key-b", top_k=2)
    calls = calls_from_scores(frame, image_id="img", mask_key="key-a", top_k=3)
    assert [len(c.classes) for c in calls] == [3, 3]


def test_submission_masks_become_cells_with_their_classes_by_confidence(tmp_path):
    a, b = np.zeros((30, 40), bool), np.zeros((30, 40), bool)
    a[2:10, 3:20], b[15:28, 10:35] = True, True
    ma, mb = rle.encode(a), rle.encode(b)
    sub = tmp_path / "sub.csv"
    sub.write_text("ID,ImageWidth,ImageHeight,PredictionString\n"
                   f"other,40,30,0 1 {ma}\nimg,40,30,16 0.2 {ma} 0 0.9 {ma} 5 0.5 {mb}\n")
    labels, calls = cells_from_submission(sub, "img", top_k=2)
    assert np.array_equal(labels == 1, a) and np.array_equal(labels == 2, b)
    assert calls == [CellCall(1, ((0, 0.9), (16, 0.2))), CellCall(2, ((5, 0.5),))]


# ----------------------------------------------------------------------------- the command
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("show")
    assert main(["synth", "--out", str(root / "world"), "--train", "2", "--test", "2", "--size", "128", "--seed", "4",
                 "--no-progress", "-q"]) == 0
    assert main(["segment", "--images", str(root / "world" / "test"), "--out", str(root / "masks"),
                 "--backend", "classical", "--scale", "1", "--num-workers", "0", "--no-progress", "-q"]) == 0
    reader = MaskCache(root / "masks").reader()
    frames = []
    for image_id in reader.ids():
        entry = reader.read(image_id)
        ids = np.unique(entry.cells)[1:]
        scores = np.full((len(ids), 19), 0.05)
        scores[:, 16] = 0.9
        frames.append(score_frame(image_id, ids, scores, mask_key=entry.mask_key, source="test"))
    write_scores(pd.concat(frames, ignore_index=True), root / "scores.parquet")
    return root


def _args(world, image_id, *extra):
    return ["show", "--images", str(world / "world" / "test"), "--id", image_id, *extra]


def test_show_writes_a_readable_sheet_from_scores_and_truth(world, capsys):
    image_id = MaskCache(world / "masks").reader().ids()[0]
    out = world / "pics" / "sheet.png"
    assert main(_args(world, image_id, "--masks", str(world / "masks"), "--scores", str(world / "scores.parquet"),
                      "--truth", str(world / "world" / "truth"), "--out", str(out), "--size", "256")) == 0
    sheet = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert sheet.shape[1] == 512 and sheet.shape[0] > 256
    assert (np.all(sheet == WHITE[::-1], axis=-1)).sum() > 100  # outlines (BGR on disk)
    assert "labels drawn" in capsys.readouterr().out


def test_show_of_the_solution_as_a_submission_marks_nothing_wrong(world, capsys):
    image_id = MaskCache(world / "masks").reader().ids()[0]
    assert main(_args(world, image_id, "--submission", str(world / "world" / "solution.csv"),
                      "--truth", str(world / "world" / "truth"), "--out", str(world / "sol.png"))) == 0
    assert "0 wrong, 0 missed" in capsys.readouterr().out


def test_show_refuses_an_unknown_id(world, capsys):
    assert main(_args(world, "no-such-id", "--masks", str(world / "masks"), "--out", str(world / "x.png"))) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no-such-id" in err
    assert not (world / "x.png").exists()


def test_show_refuses_scores_made_on_other_masks(world, capsys):
    reader = MaskCache(world / "masks").reader()
    image_id = reader.ids()[0]
    entry = reader.read(image_id)
    ids = np.unique(entry.cells)[1:]
    stale = world / "stale.csv"
    write_scores(score_frame(image_id, ids, np.full((len(ids), 19), 0.5), mask_key="other-masks", source="t"), stale)
    assert main(_args(world, image_id, "--masks", str(world / "masks"), "--scores", str(stale),
                      "--out", str(world / "y.png"))) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "other-masks" in err and entry.mask_key in err


def test_show_scores_need_masks(world, capsys):
    image_id = MaskCache(world / "masks").reader().ids()[0]
    assert main(_args(world, image_id, "--scores", str(world / "scores.parquet"), "--out", str(world / "z.png"))) == 1
    assert "--scores needs --masks" in capsys.readouterr().err
