"""SubmissionWriter.add with explicit cell ids and mask_key checks (issue 11: never 'row i = i-th cell')."""
from __future__ import annotations

import numpy as np
import pytest

from cellcls import rle
from cellcls.errors import ParameterError, SubmissionError
from cellcls.submission import SampleRow, SubmissionWriter, parse_prediction_string, read_submission

SAMPLE = [SampleRow("img0", 16, 12), SampleRow("img1", 16, 12)]


def _labels() -> np.ndarray:
    """A (6, 8) label map (half of the 12 x 16 image) with cells 1, 2 and 5 (a gap)."""
    labels = np.zeros((6, 8), dtype=np.uint16)
    labels[0:2, 0:3] = 1
    labels[3:6, 1:4] = 2
    labels[1:5, 5:8] = 5
    return labels


def _scores(n: int, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).random((n, 19)), 3)


def _written(path) -> dict[str, dict[str, np.ndarray]]:
    """ID -> mask string -> (19,) confidences read back from the file."""
    out = {}
    for row in read_submission(path):
        by_mask: dict[str, np.ndarray] = {}
        for t in parse_prediction_string(row.prediction_string, image_id=row.id):
            by_mask.setdefault(t.mask, np.full(19, np.nan))[t.class_id] = t.confidence
        out[row.id] = by_mask
    return out


def test_scores_follow_their_cell_ids_in_any_order(tmp_path):
    labels, scores = _labels(), _scores(3)
    order = [5, 1, 2]  # score rows in this order, not sorted
    with SubmissionWriter(tmp_path / "sub.csv", SAMPLE) as writer:
        writer.add("img0", labels, scores, cell_ids=order, mask_key="k", expected_mask_key="k")
    masks = rle.encode_label_map(labels, out_shape=(12, 16))
    got = _written(tmp_path / "sub.csv")["img0"]
    for row, cell in enumerate(order):
        np.testing.assert_allclose(got[masks[cell]], scores[row])


def test_explicit_ids_in_sorted_order_write_the_same_file_as_the_positional_call(tmp_path):
    labels, scores = _labels(), _scores(3)
    with SubmissionWriter(tmp_path / "old.csv", SAMPLE) as writer:
        writer.add("img0", labels, scores)  # old call: row i = i-th smallest id
    with SubmissionWriter(tmp_path / "new.csv", SAMPLE) as writer:
        writer.add("img0", labels, scores, cell_ids=np.array([1, 2, 5]))
    assert (tmp_path / "old.csv").read_text() == (tmp_path / "new.csv").read_text()


def test_explicit_ids_work_with_mask_strings_too(tmp_path):
    masks = rle.encode_label_map(_labels(), out_shape=(12, 16))
    scores = _scores(3, seed=1)
    with SubmissionWriter(tmp_path / "sub.csv", SAMPLE) as writer:
        writer.add("img1", masks, scores, cell_ids=[2, 5, 1])
    got = _written(tmp_path / "sub.csv")["img1"]
    np.testing.assert_allclose(got[masks[2]], scores[0])
    np.testing.assert_allclose(got[masks[1]], scores[2])


@pytest.mark.parametrize("ids, pattern", [
    ([1, 2], r"img0.*no score for cell\(s\) \[5\]"),
    ([1, 2, 5, 7], r"img0.*cell\(s\) \[7\] are not in the masks"),
    ([1, 2, 2], r"img0.*repeat.*\[2\]"),
])
def test_missing_extra_or_repeated_ids_are_refused(tmp_path, ids, pattern):
    with SubmissionWriter(tmp_path / "sub.csv", SAMPLE) as writer:
        with pytest.raises(SubmissionError, match=pattern):
            writer.add("img0", _labels(), _scores(len(ids)), cell_ids=ids)
        writer.add("img0", _labels(), _scores(3), cell_ids=[1, 2, 5])  # the refused image can still be added


def test_ids_and_score_rows_must_pair_up(tmp_path):
    with SubmissionWriter(tmp_path / "sub.csv", SAMPLE) as writer:
        with pytest.raises(SubmissionError, match=r"img0.*3 cell ids but scores of shape \(2, 19\)"):
            writer.add("img0", _labels(), _scores(2), cell_ids=[1, 2, 5])
        with pytest.raises(ParameterError, match="cell_ids"):
            writer.add("img0", _labels(), {1: _scores(1)[0]}, cell_ids=[1])


def test_scores_of_other_masks_are_refused_by_mask_key(tmp_path):
    with SubmissionWriter(tmp_path / "sub.csv", SAMPLE) as writer:
        with pytest.raises(SubmissionError, match=r"img0.*'p1-aaaa'.*'p1-bbbb'"):
            writer.add("img0", _labels(), _scores(3), cell_ids=[1, 2, 5], mask_key="p1-aaaa",
                       expected_mask_key="p1-bbbb")
        with pytest.raises(ParameterError, match="expected_mask_key"):
            writer.add("img0", _labels(), _scores(3), mask_key="p1-aaaa")
        writer.add("img0", _labels(), _scores(3), cell_ids=[1, 2, 5], mask_key="p1-aaaa",
                   expected_mask_key="p1-aaaa")
    assert "img0" in _written(tmp_path / "sub.csv")
