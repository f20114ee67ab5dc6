"""Bad input to any command ends in ONE line ``error: ...`` and exit 1, never a traceback.

Each case runs a real command through ``cellcls.cli.main`` on a small synthetic world, with one
bad value; argparse usage errors (a value that does not parse) stay exit 2.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cellcls.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli_errors")
    world = root / "world"
    assert main(["synth", "--out", str(world), "--train", "6", "--test", "2", "--size", "96", "--seed", "1",
                 "--no-progress", "-q"]) == 0
    assert main(["segment", "--images", str(world / "test"), "--out", str(world / "masks"), "--backend", "classical",
                 "--scale", "1", "--num-workers", "0", "--no-progress", "-q"]) == 0
    (root / "a_file").write_text("not a folder\n")
    return world


def _cases():
    w = "{w}"
    segment_score = ["segment-score", "--masks", f"{w}/masks", "--truth", f"{w}/truth"]
    evaluate = ["evaluate", "--solution", f"{w}/solution.csv", "--submission", f"{w}/solution.csv"]
    check = ["check-submission", f"{w}/solution.csv", "--sample", f"{w}/sample_submission.csv"]
    prior = ["prior-submission", "--masks", f"{w}/masks", "--sample", f"{w}/sample_submission.csv",
             "--out", f"{w}/out/prior.csv"]
    return [
        # (argv, words the one line must contain)
        (["folds", "--labels", f"{w}/train.csv", "--out", f"{w}/out/f.csv", "--k", "1"], ["k", ">= 2", "1"]),
        (["folds", "--labels", f"{w}/train.csv", "--out", f"{w}/out/f.csv", "--k", "7"], ["7 folds", "6 images"]),
        (["folds", "--labels", f"{w}/missing.csv", "--out", f"{w}/out/f.csv"], ["missing.csv"]),
        (["stats", "--images", f"{w}/train", "--out", f"{w}/out/s.json", "--size", "0"], ["size", "positive", "0"]),
        (["stats", "--images", f"{w}/train", "--out", f"{w}/out/s.json", "--num-workers", "-1"],
         ["--num-workers", ">= 0", "-1"]),
        (["stats", "--images", f"{w}/train", "--out", f"{w}/out/s.json", "--workers", "-1"], ["--num-workers"]),
        (["stats", "--images", f"{w}/train", "--out", f"{w}/../a_file/s.json"], ["a_file"]),
        (["dedup", "--images", f"{w}/train", "--out", f"{w}/out/d.csv", "--threshold", "41"],
         ["--threshold", "0..40", "41"]),
        (["dedup", "--images", f"{w}/nowhere", "--out", f"{w}/out/d.csv"], ["nowhere"]),
        ([*segment_score, "--iou-threshold", "2"], ["iou_threshold", "(0, 1]", "2.0"]),
        ([*segment_score, "--iou-threshold", "0"], ["iou_threshold", "(0, 1]"]),
        ([*segment_score, "--iou-threshold", "nan"], ["iou_threshold", "nan"]),
        ([*segment_score, "--iou", "2"], ["iou_threshold", "(0, 1]"]),
        ([*evaluate, "--iou-threshold", "1.5"], ["iou_threshold", "(0, 1]", "1.5"]),
        ([*evaluate, "--iou-threshold", "0"], ["iou_threshold", "(0, 1]"]),
        ([*check, "--max-listed", "-1"], ["--max-listed", ">= 0", "-1"]),
        (["synth", "--out", f"{w}/out/s1", "--train", "-1"], ["--train", ">= 0", "-1"]),
        (["synth", "--out", f"{w}/out/s2", "--train", "1", "--size", "10"], ["--size", ">= 32", "10"]),
        (["synth", "--out", f"{w}/out/s3", "--train", "1", "--scale", "0"], ["--scale", "[0.05, 2]", "0.0"]),
        (["synth", "--out", f"{w}/out/s4", "--train", "1", "--non-square", "2"], ["--non-square", "[0, 1]", "2.0"]),
        (["synth", "--out", f"{w}/out/s5"], ["nothing to do"]),
        (["synth", "--out", f"{w}/../a_file/world", "--train", "1", "--size", "64"], ["a_file"]),
        (["segment", "--images", f"{w}/test", "--out", f"{w}/out/m", "--backend", "classical",
          "--ids", f"{w}/no_ids.csv", "--no-progress"], ["no_ids.csv"]),
        ([*prior, "--labels", f"{w}/sample_submission.csv"], ["sample_submission.csv", "Label"]),
    ]


def _case_id(argv: list[str]) -> str:
    return " ".join([argv[0], *argv[-2:]]).replace("{w}/", "")


@pytest.mark.parametrize("argv, words", _cases(), ids=[_case_id(argv) for argv, _ in _cases()])
def test_bad_input_is_one_error_line_and_exit_1(world, capsys, argv, words):
    argv = [a.replace("{w}", str(world)) for a in argv]
    assert main([*argv, "-q"]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("argv", [
    ["folds", "--labels", "x.csv", "--out", "y.csv", "--k", "two"],
    ["dedup", "--images", "x", "--out", "y.csv", "--threshold", "1.5"],
    ["synth", "--out", "x", "--bit-depth", "12"],
    ["evaluate", "--solution", "x.csv"],
])
def test_a_command_line_that_does_not_parse_is_a_usage_error_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ") and ("error: argument" in err or "required" in err), err


def test_what_the_user_sees_in_a_terminal_is_exactly_one_line(world):
    # Outside pytest's log capture: the log handlers are the CLI's own, so the deprecation warning shows too.
    argv = ["segment-score", "--masks", str(world / "masks"), "--truth", str(world / "truth"), "--iou", "2"]
    proc = subprocess.run([sys.executable, "-m", "cellcls", *argv], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "WARNING cellcls: --iou is deprecated since cellcls 0.1.0 and will be removed in 0.3; use --iou-threshold",
        "error: iou_threshold must be a number in (0, 1], got 2.0",
    ]


def _library_calls(world: Path):
    import numpy as np

    from cellcls.dedup import find_duplicates
    from cellcls.folds import make_folds
    from cellcls.metric import evaluate
    from cellcls.stats import channel_stats
    from segment.score import score_masks

    return {
        "make_folds k=1": lambda: make_folds(np.eye(4, 19, dtype=np.uint8), k=1),
        "channel_stats size=0": lambda: channel_stats(world / "train", size=0, progress=False),
        "find_duplicates threshold=-1": lambda: find_duplicates(world / "train", threshold=-1, progress=False),
        "evaluate iou_threshold=0": lambda: evaluate(world / "solution.csv", world / "solution.csv", iou_threshold=0),
        "score_masks iou_threshold=2": lambda: score_masks(world / "masks", world / "truth", iou_threshold=2),
    }


@pytest.mark.parametrize("name", ["make_folds k=1", "channel_stats size=0", "find_duplicates threshold=-1",
                                  "evaluate iou_threshold=0", "score_masks iou_threshold=2"])
def test_library_parameter_errors_are_both_cellcls_errors_and_value_errors(world, name):
    from cellcls.errors import CellclsError, ParameterError

    with pytest.raises(ParameterError) as exc:
        _library_calls(world)[name]()
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, CellclsError)
