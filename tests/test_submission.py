"""Submission files: the streaming writer, readers, and check-submission (library and CLI)."""
from __future__ import annotations

import base64
import zlib
from pathlib import Path

import numpy as np
import pytest

from cellcls import rle
from cellcls.cli import main
from cellcls.errors import ParameterError, SubmissionError
from cellcls.submission import (
    NO_PREDICTION,
    SampleRow,
    SubmissionWriter,
    format_confidence,
    parse_prediction_string,
    prediction_string,
    read_sample_submission,
    read_submission,
    validate_submission,
)

SAMPLE = [SampleRow("img_a", 8, 6), SampleRow("img_b", 5, 5), SampleRow("img_c", 9, 7)]  # width, height


def write_sample(path: Path, rows=SAMPLE) -> Path:
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"]
    lines += [f"{r.id},{r.width},{r.height},0 1 {rle.EMPTY_MASK_FULL_FRAME}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def label_map(height: int, width: int, n_cells: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint16)
    for k in range(1, n_cells + 1):
        labels[(k - 1) * 2 : (k - 1) * 2 + 2, : width // 2 + k % 2] = k
    return labels


def scores_for(n_cells: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n_cells, 19))


@pytest.fixture
def sample_path(tmp_path) -> Path:
    return write_sample(tmp_path / "sample_submission.csv")


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------------------- writer


def test_writer_output_is_in_sample_order_whatever_the_add_order(tmp_path, sample_path):
    preds = {
        "img_a": (label_map(6, 8, 2), scores_for(2, 1)),
        "img_b": (label_map(5, 5, 1), scores_for(1, 2)),
        "img_c": (label_map(7, 9, 3), scores_for(3, 3)),
    }
    outputs = []
    for order in (["img_a", "img_b", "img_c"], ["img_c", "img_a", "img_b"], ["img_b", "img_c", "img_a"]):
        out = tmp_path / f"sub_{'_'.join(order)}.csv"
        with SubmissionWriter(out, sample_path) as writer:
            for image_id in order:
                writer.add(image_id, *preds[image_id])
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] == outputs[2]
    lines = outputs[0].splitlines()
    assert lines[0] == "ID,ImageWidth,ImageHeight,PredictionString"
    assert [line.split(",")[:3] for line in lines[1:]] == [["img_a", "8", "6"], ["img_b", "5", "5"], ["img_c", "9", "7"]]
    # nothing left behind: no spill folder, no partial file
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".partial") == []
    assert validate_submission(tmp_path / "sub_img_a_img_b_img_c.csv", sample_path).ok


def test_writer_rows_hold_all_classes_per_cell_with_masks_at_original_size(tmp_path, sample_path):
    labels = label_map(6, 8, 2)
    scores = scores_for(2)
    with SubmissionWriter(tmp_path / "s.csv", sample_path) as writer:
        writer.add("img_a", labels, scores)
    row = next(read_submission(tmp_path / "s.csv"))
    triplets = parse_prediction_string(row.prediction_string, image_id=row.id)
    assert len(triplets) == 2 * 19
    assert [t.class_id for t in triplets] == list(range(19)) * 2
    for i, t in enumerate(triplets):
        cell = 1 + i // 19
        np.testing.assert_array_equal(rle.decode(t.mask, (6, 8)), labels == cell)
        assert t.confidence == pytest.approx(scores[cell - 1, t.class_id], abs=1e-6)


def test_writer_upscales_label_maps_to_the_sample_size(tmp_path, sample_path):
    small = label_map(3, 4, 1)  # img_a is 6 x 8: scale 2
    with SubmissionWriter(tmp_path / "s.csv", sample_path) as writer:
        writer.add("img_a", small, scores_for(1))
    triplets = parse_prediction_string(next(read_submission(tmp_path / "s.csv")).prediction_string)
    expected = np.kron(small == 1, np.ones((2, 2), bool))
    np.testing.assert_array_equal(rle.decode(triplets[0].mask, (6, 8)), expected)


def test_writer_missing_ids_and_cell_free_images_get_the_sample_placeholder(tmp_path, sample_path):
    # An empty field may be read as NaN by the host's scorer; the sample's own placeholder is safe.
    with SubmissionWriter(tmp_path / "s.csv", sample_path) as writer:
        writer.add("img_b", label_map(5, 5, 1), scores_for(1))
        writer.add("img_c", np.zeros((5, 5), np.uint16), np.zeros((0, 19)))
    rows = list(read_submission(tmp_path / "s.csv"))
    assert [r.id for r in rows] == ["img_a", "img_b", "img_c"]
    assert rows[0].prediction_string == NO_PREDICTION == "0 1 eNoLCAgIMAEABJkBdQ=="
    assert rows[2].prediction_string == NO_PREDICTION
    assert rows[1].prediction_string not in ("", NO_PREDICTION)
    assert validate_submission(tmp_path / "s.csv", sample_path).ok


def test_placeholder_is_valid_but_other_empty_masks_are_not(tmp_path, sample_path):
    sample = read_sample_submission(sample_path)
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"]
    lines += [f"{r.id},{r.width},{r.height},{NO_PREDICTION}" for r in sample]
    (tmp_path / "p.csv").write_text("\n".join(lines) + "\n")
    assert validate_submission(tmp_path / "p.csv", sample_path).ok
    first = sample[0]
    lines[1] = f"{first.id},{first.width},{first.height},3 0.5 {rle.EMPTY_MASK_FULL_FRAME}"
    (tmp_path / "q.csv").write_text("\n".join(lines) + "\n")
    assert dict(validate_submission(tmp_path / "q.csv", sample_path).counts) == {"empty-mask": 1}


def test_writer_dict_masks_top_k_and_min_confidence(tmp_path, sample_path):
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:4] = True
    masks = {4: rle.encode(mask), 9: rle.encode(~mask)}
    scores = np.zeros((2, 19))
    scores[0, [3, 7, 11]] = [0.9, 0.8, 0.05]
    scores[1, [0, 18]] = [0.7, 0.6]
    with SubmissionWriter(tmp_path / "s.csv", sample_path, top_k=3, min_confidence=0.1) as writer:
        writer.add("img_b", masks, scores)
    triplets = parse_prediction_string(list(read_submission(tmp_path / "s.csv"))[1].prediction_string)
    got = [(t.class_id, t.confidence, t.mask) for t in triplets]
    assert got == [(3, 0.9, masks[4]), (7, 0.8, masks[4]), (0, 0.7, masks[9]), (18, 0.6, masks[9])]


def test_scores_as_mapping_and_row_order_is_by_cell_id():
    a, b = rle.encode(np.eye(3, dtype=bool)), rle.encode(~np.eye(3, dtype=bool))
    table = np.zeros((2, 19))
    table[0, 1], table[1, 2] = 0.25, 0.75  # row 0 = smallest id = cell 1 (mask b)
    by_dict = prediction_string({2: a, 1: b}, {1: table[0], 2: table[1]}, top_k=1)
    by_array = prediction_string({2: a, 1: b}, table, top_k=1)
    assert by_dict == by_array == f"1 0.25 {b} 2 0.75 {a}"


def test_prediction_string_rejects_misuse():
    masks = {1: rle.encode(np.eye(3, dtype=bool))}
    with pytest.raises(SubmissionError, match="one column per class"):
        prediction_string(masks, np.full((1, 18), 0.5))
    with pytest.raises(SubmissionError, match="n_cells=1"):
        prediction_string(masks, np.full((2, 19), 0.5))
    with pytest.raises(SubmissionError, match="differ from mask cell ids"):
        prediction_string(masks, {2: np.full(19, 0.5)})
    with pytest.raises(ParameterError, match="top_k"):  # a bad option, not a bad file: also a ValueError
        prediction_string(masks, np.full((1, 19), 0.5), top_k=0)
    with pytest.raises(ValueError, match="min_confidence"):
        prediction_string(masks, np.full((1, 19), 0.5), min_confidence=2)
    with pytest.raises(SubmissionError, match="cell 1: .*base64"):
        prediction_string({1: "not base64!"}, np.full((1, 19), 0.5))


def test_writer_rejects_bad_sample_rows(tmp_path):
    with pytest.raises(SubmissionError, match="repeat an ID"):
        SubmissionWriter(tmp_path / "s.csv", SAMPLE + SAMPLE[:1])
    with pytest.raises(SubmissionError, match="comma"):
        SubmissionWriter(tmp_path / "s.csv", [SampleRow("a,b", 5, 5)])
    with pytest.raises(ParameterError, match="top_k"):
        SubmissionWriter(tmp_path / "s.csv", SAMPLE, top_k=20)


@pytest.mark.parametrize("value, text", [(0.5, "0.5"), (1.0, "1"), (0.0, "0"), (-0.0, "0"),
                                         (0.12345678, "0.123457"), (0.25000000, "0.25"), (1e-7, "1e-07")])
def test_confidence_formatting(value, text):
    assert format_confidence(value) == text
    assert float(text) == pytest.approx(value, rel=1e-5, abs=0)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -0.01, 1.5])
def test_writer_rejects_non_finite_or_out_of_range_scores(tmp_path, sample_path, bad):
    scores = scores_for(1)
    scores[0, 4] = bad
    with SubmissionWriter(tmp_path / "s.csv", sample_path) as writer:
        with pytest.raises(SubmissionError, match="img_b: cell 1 class 4"):
            writer.add("img_b", label_map(5, 5, 1), scores)


def test_writer_rejects_misuse(tmp_path, sample_path):
    with SubmissionWriter(tmp_path / "s.csv", sample_path) as writer:
        with pytest.raises(SubmissionError, match="not in the sample"):
            writer.add("nope", label_map(5, 5, 1), scores_for(1))
        with pytest.raises(SubmissionError, match="2 cells"):
            writer.add("img_a", label_map(6, 8, 2), scores_for(3))
        with pytest.raises(SubmissionError, match="another size"):
            writer.add("img_b", {1: rle.encode(np.ones((6, 8), bool))}, scores_for(1))
        writer.add("img_b", label_map(5, 5, 1), scores_for(1))
        with pytest.raises(SubmissionError, match="twice"):
            writer.add("img_b", label_map(5, 5, 1), scores_for(1))
    with pytest.raises(SubmissionError, match="closed"):
        writer.add("img_c", label_map(7, 9, 1), scores_for(1))


def test_writer_failure_inside_with_leaves_no_file(tmp_path, sample_path):
    out = tmp_path / "s.csv"
    with pytest.raises(RuntimeError):
        with SubmissionWriter(out, sample_path) as writer:
            writer.add("img_c", label_map(7, 9, 1), scores_for(1))  # spilled (not next in order)
            raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == [sample_path]


def test_writer_skips_empty_masks():
    text = prediction_string({1: rle.encode(np.zeros((3, 3), bool))}, np.full((1, 19), 0.5))
    assert text == ""


# ---------------------------------------------------------------------------- readers


def test_read_submission_accepts_long_rows_quotes_crlf_bom_and_extra_columns(tmp_path):
    mask = rle.encode(np.eye(40, dtype=bool))
    long_string = " ".join(f"{c % 19} 0.5 {mask}" for c in range(4000))  # > csv's 131072 field limit
    path = tmp_path / "sol.csv"
    path.write_bytes(("\ufeffID,ImageWidth,ImageHeight,PredictionString,Usage\r\n"
                      f'"a",40,40,"{long_string}",Public\r\n'
                      "b,40,40,,Private\r\n\r\n").encode())
    rows = list(read_submission(path))
    assert [(r.id, r.width, r.height, r.line) for r in rows] == [("a", 40, 40, 2), ("b", 40, 40, 3)]
    assert rows[0].prediction_string == long_string and rows[1].prediction_string == ""


def test_read_sample_submission(sample_path, tmp_path):
    rows = read_sample_submission(sample_path)
    assert rows == SAMPLE and rows[0].shape == (6, 8)
    dup = write_sample(tmp_path / "dup.csv", SAMPLE + [SAMPLE[0]])
    with pytest.raises(SubmissionError, match="img_a already on line 2"):
        read_sample_submission(dup)


@pytest.mark.parametrize("content, match", [
    ("A,B,C\n1,2,3\n", "missing ID, ImageWidth"),
    ("", "missing"),
    ("ID,ImageWidth,ImageHeight,PredictionString\nx,ten,5,\n", "integers"),
    ("ID,ImageWidth,ImageHeight,PredictionString\nx,5,5\n", "expected 4"),
])
def test_read_submission_malformed(tmp_path, content, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(SubmissionError, match=match):
        list(read_submission(path))


def test_read_submission_binary_and_missing(tmp_path):
    binary = tmp_path / "model.pth"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SubmissionError, match="not a text CSV"):
        list(read_submission(binary))
    with pytest.raises(SubmissionError, match="no such file"):
        list(read_submission(tmp_path / "absent.csv"))


@pytest.mark.parametrize("text, match", [
    ("0 0.5", "multiple of 3"),
    ("19 0.5 m", "class '19'"),
    ("1.0 0.5 m", "class '1.0'"),
    ("-1 0.5 m", "class '-1'"),
    ("3 nan m", "finite"),
    ("3 1.01 m", "finite"),
    ("3 high m", "not a number"),
])
def test_parse_prediction_string_errors_name_id_and_triplet(text, match):
    good = f"0 0.5 {rle.EMPTY_MASK_FULL_FRAME}"
    with pytest.raises(SubmissionError, match=rf"ID x: triplet 1: .*{match}"):
        parse_prediction_string(f"{good} {text}", image_id="x")


# ---------------------------------------------------------------------------- check-submission


def write_submission(path: Path, rows: list[tuple]) -> Path:
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"] + [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def good_rows() -> list[tuple]:
    rows = []
    for r in SAMPLE:
        mask = np.zeros((r.height, r.width), bool)
        mask[1:3, 2:4] = True
        text = rle.encode(mask)
        rows.append((r.id, r.width, r.height, f"0 0.9 {text} 5 0.25 {text}"))
    return rows


def test_valid_submission_passes_with_summary(tmp_path, sample_path, capsys):
    sub = write_submission(tmp_path / "sub.csv", good_rows())
    report = validate_submission(sub, sample_path)
    assert report.ok and (report.rows, report.triplets, report.cells) == (3, 6, 3)
    assert main(["check-submission", str(sub), "--sample", str(sample_path)]) == 0
    assert "OK" in capsys.readouterr().out


def corrupt(kind: str) -> list[tuple]:
    rows = good_rows()
    mask_b = rows[1][3].split()[2]
    wrong_size = rle.encode(np.ones((4, 4), bool))
    edits = {
        "missing-id": lambda: rows.pop(2),
        "duplicate-id": lambda: rows.append(rows[0]),
        "unknown-id": lambda: rows.append(("img_z", 5, 5, "")),
        "size-mismatch": lambda: rows.__setitem__(1, ("img_b", 5, 6, rows[1][3])),
        "bad-size": lambda: rows.__setitem__(1, ("img_b", "five", 5, rows[1][3])),
        "bad-row": lambda: rows.append(("img_q", 5)),
        "bad-triplet-count": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + " 3 0.5")),
        "bad-class": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + f" 19 0.5 {mask_b}")),
        "bad-confidence": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + f" 2 inf {mask_b}")),
        "bad-mask": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + f" 2 0.5 {mask_b[:-4]}")),
        "mask-size": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + f" 2 0.5 {wrong_size}")),
        "empty-mask": lambda: rows.__setitem__(1, (*rows[1][:3], rows[1][3] + f" 2 0.5 {rle.EMPTY_MASK_FULL_FRAME}")),
    }
    edits[kind]()
    return rows


@pytest.mark.parametrize("kind, where", [
    ("missing-id", "ID img_c"),
    ("duplicate-id", "line 5: ID img_a"),
    ("unknown-id", "line 5: ID img_z"),
    ("size-mismatch", "line 3: ID img_b"),
    ("bad-size", "line 3: ID img_b"),
    ("bad-row", "line 5"),
    ("bad-triplet-count", "line 3: ID img_b triplet 2"),
    ("bad-class", "line 3: ID img_b triplet 2"),
    ("bad-confidence", "line 3: ID img_b triplet 2"),
    ("bad-mask", "line 3: ID img_b triplet 2"),
    ("mask-size", "line 3: ID img_b triplet 2"),
    ("empty-mask", "line 3: ID img_b triplet 2"),
])
def test_each_problem_kind_is_reported_with_id_and_triplet(tmp_path, sample_path, capsys, kind, where):
    sub = write_submission(tmp_path / "sub.csv", corrupt(kind))
    report = validate_submission(sub, sample_path)
    assert dict(report.counts) == {kind: 1}
    assert where in str(report.problems[0])
    assert main(["check-submission", str(sub), "--sample", str(sample_path)]) == 1
    out = capsys.readouterr().out
    assert f"[{kind}]" in out and where in out and "INVALID" in out


def test_empty_masks_allowed_on_request(tmp_path, sample_path):
    sub = write_submission(tmp_path / "sub.csv", corrupt("empty-mask"))
    assert validate_submission(sub, sample_path, allow_empty_masks=True).ok
    assert main(["check-submission", str(sub), "--sample", str(sample_path), "--allow-empty-masks"]) == 0


def test_every_problem_counted_listing_capped(tmp_path, sample_path, capsys):
    rows = good_rows()
    bad = " ".join(f"{c} 7 m" for c in range(19))  # 19 bad confidences + 19 bad masks
    rows[0] = (*rows[0][:3], bad)
    sub = write_submission(tmp_path / "sub.csv", rows)
    report = validate_submission(sub, sample_path, max_listed=5)
    assert report.counts == {"bad-confidence": 19, "bad-mask": 19}
    assert len(report.problems) == 5
    assert main(["check-submission", str(sub), "--sample", str(sample_path), "--max-listed", "5"]) == 1
    out = capsys.readouterr().out
    assert "33 more problems" in out and "bad-confidence" in out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 10, "not a text CSV"),
    (b"image,label\nabc,1\n", "expected a header"),
])
def test_cli_malformed_files_give_a_message_not_a_traceback(tmp_path, sample_path, capsys, content, message):
    sub = tmp_path / "sub.csv"
    if content is not None:
        sub.write_bytes(content)
    assert main(["check-submission", str(sub), "--sample", str(sample_path), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_truncated_base64_and_zlib_garbage_are_bad_masks(tmp_path, sample_path):
    rows = good_rows()
    garbage = base64.b64encode(b"garbage!" * 3).decode()
    truncated_zlib = base64.b64encode(zlib.compress(b"0" * 100)[:-5]).decode()
    rows[2] = (*rows[2][:3], f"1 0.5 {garbage} 2 0.5 {truncated_zlib} 3 0.5 abc")
    report = validate_submission(write_submission(tmp_path / "s.csv", rows), sample_path)
    assert report.counts == {"bad-mask": 3}
    messages = [p.message for p in report.problems]
    assert "zlib" in messages[0] and "truncated" in messages[1] and "base64" in messages[2]


def test_writer_dropped_without_close_leaves_nothing(tmp_path, sample_path):
    import gc

    writer = SubmissionWriter(tmp_path / "s.csv", sample_path)
    writer.add("img_c", label_map(7, 9, 1), scores_for(1))
    del writer
    gc.collect()
    assert list(tmp_path.iterdir()) == [sample_path]


def test_submission_modules_import_one_way():
    # submission -> submission_check -> submission_format: no cycle, the format module at the bottom.
    import ast

    import cellcls

    def local_imports(name: str) -> set[str]:
        tree = ast.parse((Path(cellcls.__file__).parent / f"{name}.py").read_text())
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 1}

    assert local_imports("submission_format").isdisjoint({"submission", "submission_check"})
    assert "submission" not in local_imports("submission_check")


def test_every_public_name_is_still_importable_from_cellcls_submission():
    import cellcls.submission as submission
    import cellcls.submission_check as check
    import cellcls.submission_format as fmt

    assert set(fmt.__all__) - {"iter_csv_records"} <= set(submission.__all__)
    for name in submission.__all__:
        assert hasattr(submission, name), name
    assert submission.validate_submission is check.validate_submission
    assert submission.SampleRow is fmt.SampleRow is check.SampleRow
