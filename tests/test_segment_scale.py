"""One notion of scale in ``cellcls segment``, and the loud warning when the scales do not fit the images.

What a user relies on: with no scale flag the networks see 1/4 of HPA's resolution whatever the
images' pixel size (the synthetic world is segmented as it is, Kaggle-size images are resized by
0.25); an explicit --scale is used as given and shares cache entries with auto at the same value;
a run whose cells do not look like HPA's at its resolution ends with a WARNING naming the likely
cause, and a good run does not.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cellcls.cli import main
from cellcls.masks import MaskCache
from segment.pipeline import resolve_image_scale
from segment.scales import (
    HPA_MIN_CELL_AREA_PX,
    CellSizes,
    ScaleChoice,
    check_cell_sizes,
    describe_resolution,
    resolve_scale,
)

N_TEST = 4


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A synthetic world of 4 quarter-size 256² test images (world.json: scale 0.25), made with the CLI."""
    out = tmp_path_factory.mktemp("scale") / "world"
    assert main(["synth", "--out", str(out), "--test", str(N_TEST), "--size", "256", "--seed", "0",
                 "--no-progress", "-q"]) == 0
    return out


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
    """No HPA weights anywhere, so --backend auto (the default) takes the classical backend."""
    import segment.weights

    monkeypatch.delenv("CELLCLS_SEG_WEIGHTS", raising=False)
    monkeypatch.setattr(segment.weights, "DEFAULT_WEIGHTS_DIR", tmp_path / "default_weights")


def segment(images: Path, out: Path, *extra: str) -> int:
    return main(["segment", "--images", str(images), "--out", str(out), "--no-progress", "--num-workers", "0",
                 *extra])


def cell_f1(masks: Path, truth: Path) -> float:
    report = masks.parent / f"{masks.name}_score.json"
    assert main(["segment-score", "--masks", str(masks), "--truth", str(truth), "--json", str(report),
                 "--no-progress", "-q"]) == 0
    return json.loads(report.read_text())["f1"]


# ----------------------------------------------------------------------------- the command


def test_no_scale_flag_segments_the_synthetic_world_as_it_is(world, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    masks = tmp_path / "m"
    assert segment(world / "test", masks) == 0
    printed = capsys.readouterr().out
    manifest = MaskCache(masks).manifest()
    assert (manifest["scale"] == 1.0).all() and (manifest["seg_height"] == 256).all()
    assert cell_f1(masks, world / "truth") >= 0.9
    assert "segmenting at 1/4 of HPA's resolution (--scale auto = 1 x image scale 0.25" in caplog.text
    assert "WARNING" not in printed and not [r for r in caplog.records if r.levelname == "WARNING"]
    assert "median cell area" in printed  # the summary says what the cells look like

    # An explicit --scale 1 is the same parameters: the same cache entries, nothing redone.
    assert segment(world / "test", masks, "--scale", "1") == 0
    assert f"segmented 0 image(s), skipped {N_TEST} already cached" in capsys.readouterr().out


def test_explicit_wrong_scale_is_honoured_and_warned_about(world, tmp_path, capsys, caplog):
    masks = tmp_path / "m"
    assert segment(world / "test", masks, "--scale", "0.25") == 0  # 1/16 of HPA's resolution
    printed = capsys.readouterr().out
    manifest = MaskCache(masks).manifest()
    assert (manifest["scale"] == 0.25).all() and (manifest["seg_height"] == 64).all()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    for text in (warnings[0], printed.split("WARNING: ", 1)[1]):
        assert "1/16 of HPA's resolution" in text
        assert "--scale 0.25" in text and "drop --scale" in text and "--scale 1" in text


def test_images_without_world_json_are_taken_as_hpa_size(world, tmp_path, capsys, caplog):
    # Quarter-size images copied away from their world.json: auto takes them for Kaggle-size images,
    # resizes them by 0.25 and finds no cells; the warning says to give --image-scale.
    images = tmp_path / "copied" / "test"
    shutil.copytree(world / "test", images)
    masks = tmp_path / "m"
    assert segment(images, masks) == 0
    assert (MaskCache(masks).manifest()["scale"] == 0.25).all()
    printed = capsys.readouterr().out
    assert f"WARNING: no cells found in {N_TEST} of {N_TEST} image(s)" in printed
    assert "--image-scale" in printed and "no world.json" in printed
    assert any(r.levelname == "WARNING" and "no cells found" in r.getMessage() for r in caplog.records)
    # Saying what the pixels are fixes it.
    assert segment(images, tmp_path / "fixed", "--image-scale", "0.25") == 0
    assert "WARNING" not in capsys.readouterr().out
    assert cell_f1(tmp_path / "fixed", world / "truth") >= 0.9


def test_help_says_the_default_resolution(capsys):
    with pytest.raises(SystemExit):
        main(["segment", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "1/4 of HPA's full resolution" in text and "rarely needed" in text and "default: auto" in text


# ----------------------------------------------------------------------------- resolve_scale


@pytest.mark.parametrize(("image_scale", "expected"), [(1.0, 0.25), (0.25, 1.0), (0.5, 0.5), (0.125, 2.0)])
def test_auto_brings_the_images_to_a_quarter_of_hpa(image_scale, expected):
    choice = resolve_scale("auto", image_scale=image_scale, image_scale_from="test")
    assert choice.scale == expected and choice.effective_scale == 0.25 and choice.scale_from == "auto"


def test_auto_for_a_folder_without_world_json_is_a_quarter(tmp_path):
    image_scale, source = resolve_image_scale(tmp_path, "auto")
    assert resolve_scale("auto", image_scale=image_scale, image_scale_from=source).scale == 0.25


def test_explicit_scale_is_used_as_given():
    choice = resolve_scale(0.5, image_scale=0.25, image_scale_from="world.json")
    assert (choice.scale, choice.image_scale, choice.scale_from) == (0.5, 0.25, "--scale")
    assert "1/8 of HPA's resolution" in choice.sentence()
    with pytest.raises(ValueError, match="--scale"):
        resolve_scale(0.0, image_scale=1.0, image_scale_from="x")


def test_describe_resolution():
    assert describe_resolution(0.25) == "1/4 of HPA's resolution"
    assert describe_resolution(1 / 16) == "1/16 of HPA's resolution"
    assert describe_resolution(1.0) == "HPA's full resolution"
    assert describe_resolution(2.0) == "2x HPA's resolution"


# ----------------------------------------------------------------------------- check_cell_sizes


def _choice(scale: float, image_scale: float = 1.0, scale_from: str = "--scale") -> ScaleChoice:
    return ScaleChoice(scale, image_scale, scale_from, "default (no world.json: real HPA pixel size)")


QUARTER = _choice(0.25, scale_from="auto")
CUT_AT_QUARTER = HPA_MIN_CELL_AREA_PX / 16  # 343.75 px: label_cell's cell cut-off at 1/4


def test_plausible_cells_raise_no_warning():
    assert check_cell_sizes(CellSizes((12, 9, 14, 3), (1800.0, 2100.0, 1500.0, 900.0)), QUARTER) == []
    assert check_cell_sizes(CellSizes((), ()), QUARTER) == []


def test_most_images_empty_warns():
    half = CellSizes((0, 0, 5, 7), (2000.0, 2000.0))
    assert check_cell_sizes(half, QUARTER) == []  # half is not most
    most = CellSizes((0, 0, 0, 7), (2000.0,))
    (warning,) = check_cell_sizes(most, QUARTER)
    assert warning.startswith("no cells found in 3 of 4 image(s) segmented at 1/4 of HPA's resolution")
    assert "--image-scale" in warning and "no world.json" in warning


def test_cells_near_the_cut_off_warn_that_they_are_smaller_than_the_scales_say():
    limit = 2 * CUT_AT_QUARTER  # a median within 2x of the cut-off that drops everything smaller
    assert check_cell_sizes(CellSizes((5,) * 4, (limit + 1,) * 4), QUARTER) == []
    (warning,) = check_cell_sizes(CellSizes((5,) * 4, (limit - 1,) * 4), QUARTER)
    assert f"median cell area {limit - 1:.0f} px" in warning and "HPA cells are >= 344 px" in warning
    assert "smaller than the scales say" in warning and "--scale auto with image scale 1" in warning


def test_cells_too_few_pixels_for_the_networks_warn_to_drop_the_scale():
    sixteenth = _choice(0.25, 0.25)  # --scale 0.25 on quarter-size images
    # Consistent with the 1/16 cut-offs (21 px), but below HPA's smallest cell at 1/4 (344 px).
    (warning,) = check_cell_sizes(CellSizes((10,) * 4, (59.0,) * 4), sixteenth)
    assert "1/16 of HPA's resolution" in warning and "below 344 px" in warning
    assert "--scale 0.25" in warning and "drop --scale" in warning and "here --scale 1" in warning
    assert check_cell_sizes(CellSizes((10,) * 4, (CUT_AT_QUARTER + 1,) * 4), sixteenth) == []


def test_cells_far_larger_than_hpa_warn_about_the_image_scale():
    limit = 100 * CUT_AT_QUARTER  # 16x (a factor 4 in side) an ordinary cell of ~6x the cut-off
    assert check_cell_sizes(CellSizes((5,) * 4, (limit - 1,) * 4), QUARTER) == []
    (warning,) = check_cell_sizes(CellSizes((5,) * 4, (limit + 1,) * 4), QUARTER)
    assert "larger than HPA's" in warning and "--image-scale 1" in warning


def test_the_median_is_over_images_not_pooled_cells():
    # One image of many small cells does not outvote three images of ordinary ones.
    sizes = CellSizes((200, 10, 10, 10), (100.0, 2000.0, 2000.0, 2000.0))
    assert sizes.median_area_px == 2000.0 and check_cell_sizes(sizes, QUARTER) == []
