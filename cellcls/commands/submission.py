"""``cellcls check-submission`` and ``cellcls evaluate``: the competition file and its score."""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["CHECK_SUBMISSION", "EVALUATE"]


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", metavar="SUB.csv", help="the submission file to check")
    parser.add_argument("--sample", required=True, metavar="CSV",
                        help="sample_submission.csv of the competition (IDs and image sizes)")
    parser.add_argument("--allow-empty-masks", action="store_true",
                        help="accept masks without pixels (the sample's placeholder); the scorer drops them")
    parser.add_argument("--max-listed", type=Bounded(int, low=0), default=50, metavar="N",
                        help="list at most N problems (all are counted; default 50)")
    add_progress_option(parser)


def _check_run(args: argparse.Namespace) -> int:
    from cellcls.submission import validate_submission

    report = validate_submission(args.submission, args.sample, allow_empty_masks=args.allow_empty_masks,
                                 max_listed=args.max_listed, progress=progress_enabled(args))
    print(report.summary())
    return 0 if report.ok else 1


CHECK_SUBMISSION = Command(
    name="check-submission",
    help="check a submission CSV against the sample submission (every problem listed)",
    description=(
        "Check every row of a submission against the sample submission: each sample ID exactly once,\n"
        "sizes as in the sample, 'class confidence mask' triplets with class 0..18, confidence finite\n"
        "in [0, 1], every mask a valid RLE string of the image's size with at least one pixel.\n"
        "Prints each problem with its line, ID and triplet index (the first --max-listed) and the\n"
        "count per kind. Exit code 0 if valid, 1 otherwise."
    ),
    example="cellcls check-submission submission.csv --sample sample_submission.csv",
    add_arguments=_check_arguments,
    run=_check_run,
)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solution", required=True, metavar="CSV",
                        help="ground truth in submission format (one 'class 1 mask' triplet per cell and class)")
    parser.add_argument("--submission", required=True, metavar="CSV", help="the predictions to score")
    parser.add_argument("--json", metavar="OUT", help="also write the score and per-class figures as JSON")
    parser.add_argument("--iou-threshold", type=float, default=0.6,
                        help="mask IoU needed for a true positive, inclusive, in (0, 1] (competition: 0.6)")
    add_progress_option(parser)


def _evaluate_run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from cellcls.metric import evaluate

    result = evaluate(args.solution, args.submission, iou_threshold=args.iou_threshold,
                      progress=progress_enabled(args))
    print(result.table())
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


EVALUATE = Command(
    name="evaluate",
    help="score a submission: mAP at mask IoU 0.6 (the competition metric)",
    description=(
        "Score a submission against a solution file with the competition metric, mAP at mask IoU 0.6:\n"
        "per image and class, detections in descending confidence each look only at their best-IoU\n"
        "ground-truth cell; a true positive needs IoU >= 0.6 and a cell not yet taken (no fall-back).\n"
        "Classes absent from an image's ground truth are ignored in that image; empty masks dropped;\n"
        "AP per class over all images; mAP over classes with ground truth. Equal confidences keep\n"
        "submission order. Prints a per-class table (#GT, #detections, #TP, AP)."
    ),
    example="cellcls evaluate --solution solution.csv --submission submission.csv --json score.json",
    add_arguments=_evaluate_arguments,
    run=_evaluate_run,
)
