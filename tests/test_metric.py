"""mAP at mask IoU 0.6 (HPA_FACTS §3): hand-computed cases, a brute-force twin, the CLI."""
from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from cellcls import rle
from cellcls.cli import main
from cellcls.errors import SubmissionError
from cellcls.metric import average_precision, evaluate, read_solution
from cellcls.submission import SubmissionRow, read_submission

H, W = 20, 20


def box(y0: int, x0: int, y1: int, x1: int, shape=(H, W)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def row(image_id: str, triplets: list[tuple], shape=(H, W)) -> SubmissionRow:
    """triplets: (class, confidence, bool mask)."""
    text = " ".join(f"{c} {p:g} {rle.encode(m)}" for c, p, m in triplets)
    return SubmissionRow(image_id, shape[1], shape[0], text)


def gt_row(image_id: str, cells: list[tuple], shape=(H, W)) -> SubmissionRow:
    """cells: (class, bool mask)."""
    return row(image_id, [(c, 1, m) for c, m in cells], shape)


CELL1, CELL2, CELL3 = box(0, 0, 5, 5), box(10, 10, 15, 15), box(0, 10, 5, 20)


def ap(result, cls):
    return result.per_class_ap[cls]


def test_perfect_submission_scores_one_and_classes_without_gt_are_nan():
    solution = [gt_row("a", [(0, CELL1), (0, CELL2), (5, CELL3)])]
    submission = [row("a", [(0, 0.9, CELL1), (0, 0.8, CELL2), (5, 0.7, CELL3)])]
    result = evaluate(solution, submission)
    assert result.map == 1.0
    assert ap(result, 0) == 1.0 and ap(result, 5) == 1.0
    assert np.isnan(result.per_class_ap[[c for c in range(19) if c not in (0, 5)]]).all()
    assert result.n_gt.tolist()[:6] == [2, 0, 0, 0, 0, 1] and result.n_tp[0] == 2 and result.n_det[0] == 2


def test_one_miss_halves_recall():
    solution = [gt_row("a", [(0, CELL1), (0, CELL2)])]
    result = evaluate(solution, [row("a", [(0, 0.9, CELL1)])])
    assert ap(result, 0) == 0.5 and result.map == 0.5


def test_later_duplicate_is_a_false_positive():
    solution = [gt_row("a", [(0, CELL1), (0, CELL2)])]
    submission = [row("a", [(0, 0.9, CELL1), (0, 0.8, CELL1), (0, 0.7, CELL2)])]
    result = evaluate(solution, submission)
    # P = 1, 1/2, 2/3 ; R = 1/2, 1/2, 1 ; monotone P = 1, 2/3, 2/3
    assert ap(result, 0) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert result.n_tp[0] == 2 and result.n_det[0] == 3


@pytest.mark.parametrize("mask, is_tp", [
    (box(0, 0, 6, 10), True),        # 60 of a 100-px cell: IoU exactly 0.6 (inclusive)
    (box(0, 0, 6, 10) & ~box(5, 9, 6, 10), False),   # 59 px: 0.59
    (box(0, 0, 10, 10) | box(10, 0, 17, 10) & ~box(16, 6, 17, 10), True),   # 100 / 166 = 0.602
    (box(0, 0, 10, 10) | box(10, 0, 17, 10) & ~box(16, 7, 17, 10), False),  # 100 / 167 = 0.599
])
def test_iou_threshold_is_inclusive_at_exactly_point_six(mask, is_tp):
    cell = box(0, 0, 10, 10)
    solution = [gt_row("a", [(3, cell)])]
    result = evaluate(solution, [row("a", [(3, 0.5, mask)])])
    assert ap(result, 3) == (1.0 if is_tp else 0.0)
    assert result.n_tp[3] == int(is_tp)


def test_higher_confidence_worse_mask_takes_the_cell():
    worse = box(0, 0, 5, 4)  # IoU 0.8 with CELL1
    solution = [gt_row("a", [(0, CELL1), (0, CELL2)])]
    result = evaluate(solution, [row("a", [(0, 0.9, worse), (0, 0.8, CELL1)])])
    # worse = TP (P 1, R 1/2); the exact later mask = FP; CELL2 missed.
    assert ap(result, 0) == 0.5 and result.n_tp[0] == 1


def test_no_fall_back_to_the_second_best_cell():
    big, small = box(0, 0, 10, 10), box(0, 0, 10, 8)  # overlapping ground truth (IoU 0.8)
    solution = [gt_row("a", [(2, big), (2, small)])]
    detection = box(0, 0, 10, 9)  # IoU 0.9 with big, 0.889 with small
    result = evaluate(solution, [row("a", [(2, 0.9, big), (2, 0.8, detection)])])
    # big is taken by the first detection; the second looks only at big -> FP, small stays unmatched.
    assert result.n_tp[2] == 1
    assert ap(result, 2) == 0.5


def test_class_absent_from_an_image_is_ignored_there():
    solution = [gt_row("a", [(0, CELL1)]), gt_row("b", [(3, CELL2)])]
    submission = [
        row("a", [(0, 0.5, CELL1), (3, 0.99, CELL1), (3, 0.98, CELL3)]),  # class 3 not in a's truth
        row("b", [(3, 0.4, CELL2)]),
    ]
    result = evaluate(solution, submission)
    assert ap(result, 3) == 1.0 and result.n_det[3] == 1
    assert result.map == 1.0


def test_empty_rows_and_missing_rows_still_count_ground_truth():
    solution = [gt_row("a", [(0, CELL1)]), gt_row("b", [(0, CELL2)]), gt_row("c", [(0, CELL3)])]
    submission = [row("a", [(0, 0.9, CELL1)]), SubmissionRow("b", W, H, "")]  # c has no row
    result = evaluate(solution, submission)
    assert result.n_gt[0] == 3 and ap(result, 0) == pytest.approx(1 / 3)
    assert evaluate(solution, []).per_class_ap[0] == 0.0


def test_rows_for_ids_not_in_the_solution_are_ignored():
    solution = [gt_row("a", [(0, CELL1)])]
    submission = [row("zzz", [(0, 1.0, CELL2)]), row("a", [(0, 0.5, CELL1)]),
                  SubmissionRow("other", 3, 3, "not even parsed")]
    assert evaluate(solution, submission).map == 1.0


def test_empty_masks_are_dropped():
    empty = np.zeros((H, W), bool)
    solution = [gt_row("a", [(0, CELL1), (0, empty)])]
    submission = [SubmissionRow("a", W, H, f"0 0.99 {rle.EMPTY_MASK_FULL_FRAME} " + row("a", [(0, 0.5, CELL1)]).prediction_string)]
    result = evaluate(solution, submission)
    assert result.n_gt[0] == 1 and result.n_det[0] == 1 and ap(result, 0) == 1.0


def test_ties_keep_submission_order():
    solution = [gt_row("a", [(0, CELL1)]), gt_row("b", [(0, CELL2)])]
    wrong = row("a", [(0, 0.5, CELL3)])      # FP
    right = row("b", [(0, 0.5, CELL2)])      # TP, same confidence
    assert ap(evaluate(solution, [wrong, right]), 0) == pytest.approx(0.25)  # FP ranked first
    assert ap(evaluate(solution, [right, wrong]), 0) == pytest.approx(0.5)   # TP ranked first
    # within one image too: the first listed of two equal-confidence duplicates takes the cell
    worse = box(0, 0, 5, 4)
    one = evaluate([gt_row("a", [(0, CELL1), (0, CELL2)])], [row("a", [(0, 0.5, worse), (0, 0.5, CELL1)])])
    assert one.n_tp[0] == 1 and ap(one, 0) == 0.5


def test_class_with_ground_truth_but_no_detection_scores_zero_and_counts_in_the_mean():
    solution = [gt_row("a", [(0, CELL1), (7, CELL2)])]
    result = evaluate(solution, [row("a", [(0, 0.9, CELL1)])])
    assert ap(result, 7) == 0.0 and result.map == 0.5


def test_malformed_scored_rows_raise_with_id_and_triplet():
    solution = [gt_row("a", [(0, CELL1)])]
    bad_mask = rle.encode(np.ones((5, 5), bool))
    with pytest.raises(SubmissionError, match="ID a: triplet 1: .*another size"):
        evaluate(solution, [SubmissionRow("a", W, H, f"0 0.5 {rle.encode(CELL1)} 0 0.4 {bad_mask}")])
    with pytest.raises(SubmissionError, match="ID a: triplet 0: confidence"):
        evaluate(solution, [SubmissionRow("a", W, H, f"0 2 {rle.encode(CELL1)}")])
    with pytest.raises(SubmissionError, match="differ from the solution"):
        evaluate(solution, [row("a", [(0, 0.5, box(0, 0, 2, 2, (H, W + 1)))], (H, W + 1))])
    with pytest.raises(SubmissionError, match="twice"):
        evaluate(solution, [row("a", []), row("a", [])])


def test_average_precision_function():
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([], [], 3) == 0.0
    assert np.isnan(average_precision([0.5], [False], 0))
    # ties broken by the order key, not by position
    assert average_precision([0.5, 0.5], [False, True], 1, order=[1, 0]) == 1.0


# ---------------------------------------------------------------------------- brute-force twin


def reference_evaluate(solution, submission, num_classes=19, threshold=Fraction(3, 5)):
    """The rules of HPA_FACTS §3 written as plainly as possible, with dense masks and exact IoU."""
    truth = {}
    for r in solution:
        tokens = r.prediction_string.split()
        cells = [(int(tokens[i]), rle.decode(tokens[i + 2], r.shape)) for i in range(0, len(tokens), 3)]
        truth[r.id] = [(c, m) for c, m in cells if m.any()]
    pooled = {c: [] for c in range(num_classes)}
    order = 0
    for r in submission:
        tokens = r.prediction_string.split()
        dets = []
        for i in range(0, len(tokens), 3):
            dets.append((int(tokens[i]), float(tokens[i + 1]), order, tokens[i + 2]))
            order += 1
        if r.id not in truth:
            continue
        for c in {c for c, _ in truth[r.id]}:
            cells = [m for k, m in truth[r.id] if k == c]
            taken = [False] * len(cells)
            mine = [(p, o, rle.decode(t, r.shape)) for k, p, o, t in dets if k == c]
            for p, o, m in sorted((d for d in mine if d[2].any()), key=lambda d: (-d[0], d[1])):
                ious = [Fraction(int((m & g).sum()), int((m | g).sum())) for g in cells]
                best = max(range(len(cells)), key=lambda j: (ious[j], -j))
                hit = ious[best] >= threshold and not taken[best]
                taken[best] = taken[best] or hit
                pooled[c].append((p, o, hit))
    aps = []
    for c in range(num_classes):
        n_gt = sum(1 for cells in truth.values() for k, _ in cells if k == c)
        if n_gt == 0:
            aps.append(np.nan)
            continue
        ranked = sorted(pooled[c], key=lambda d: (-d[0], d[1]))
        tp = fp = 0
        precision, recall = [], []
        for _, _, hit in ranked:
            tp, fp = tp + hit, fp + (not hit)
            precision.append(tp / (tp + fp))
            recall.append(tp / n_gt)
        for i in range(len(precision) - 2, -1, -1):
            precision[i] = max(precision[i], precision[i + 1])
        total, previous = 0.0, 0.0
        for p, r in zip(precision, recall):
            total += (r - previous) * p
            previous = r
        aps.append(total)
    return np.array(aps)


def random_case(rng: np.random.Generator):
    shape = (int(rng.integers(6, 14)), int(rng.integers(6, 14)))
    n_images = int(rng.integers(1, 4))
    solution, submission = [], []
    for i in range(n_images):
        labels = np.zeros(shape, np.uint16)
        for k in range(1, int(rng.integers(2, 6))):
            y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
            labels[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = k
        cells = [labels == k for k in np.unique(labels) if k]
        classes = [rng.choice(4, size=rng.integers(1, 3), replace=False).tolist() for _ in cells]
        gt = [(c, m) for m, cs in zip(cells, classes) for c in cs]
        solution.append(gt_row(f"img{i}", gt, shape))
        dets = []
        for m, cs in zip(cells + [rng.random(shape) < 0.3], classes + [[0]]):
            for _ in range(int(rng.integers(1, 4))):
                noisy = m ^ (rng.random(shape) < rng.choice([0.0, 0.0, 0.02, 0.1]))
                confidence = float(rng.choice([0.1, 0.5, 0.9, round(float(rng.random()), 3)]))
                cls = int(rng.choice(cs)) if rng.random() < 0.7 else int(rng.integers(0, 5))
                dets.append((cls, confidence, noisy))
        if rng.random() < 0.85:
            submission.append(row(f"img{i}", dets, shape))
    if rng.random() < 0.5:
        submission.append(row("extra", [(0, 0.9, np.ones(shape, bool))], shape))
    rng.shuffle(submission)
    return solution, submission


def test_matches_brute_force_reference_on_random_cases():
    rng = np.random.default_rng(2021)
    for _ in range(60):
        solution, submission = random_case(rng)
        got = evaluate(solution, submission).per_class_ap
        expected = reference_evaluate(solution, submission)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------------------- files and CLI


def write_csv(path, rows):
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"] + [f"{r.id},{r.width},{r.height},{r.prediction_string}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_evaluate_prints_table_and_writes_json(tmp_path, capsys):
    solution = write_csv(tmp_path / "solution.csv", [gt_row("a", [(0, CELL1), (0, CELL2), (18, CELL3)])])
    submission = write_csv(tmp_path / "sub.csv", [row("a", [(0, 0.9, CELL1), (18, 0.3, CELL3)])])
    out = tmp_path / "out" / "score.json"
    code = main(["evaluate", "--solution", str(solution), "--submission", str(submission), "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "Nucleoplasm" in text and "Negative" in text and "mAP@0.6 = 0.7500" in text
    data = json.loads(out.read_text())
    assert data["map"] == 0.75
    assert set(data["per_class_ap"]) == {str(c) for c in range(19)}
    assert data["per_class_ap"]["0"] == 0.5 and data["per_class_ap"]["18"] == 1.0
    assert data["per_class_ap"]["3"] is None and data["n_gt"]["0"] == 2
    # the library gives the same from paths and from parsed rows
    assert evaluate(solution, submission).map == evaluate(read_solution(solution), list(read_submission(submission))).map


def test_cli_evaluate_malformed_submission_is_an_error_message(tmp_path, capsys):
    solution = write_csv(tmp_path / "solution.csv", [gt_row("a", [(0, CELL1)])])
    submission = tmp_path / "sub.csv"
    submission.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,20,20,0 0.5 eNoLCAgIMA\n")
    assert main(["evaluate", "--solution", str(solution), "--submission", str(submission), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "ID a: triplet 0" in err and "base64" in err
