"""Commands of the inference stage (registered in the ``cellcls.commands`` entry-point group)."""
from __future__ import annotations

import argparse

from cellcls.cli import Command, add_progress_option, progress_enabled

__all__ = ["PRIOR_SUBMISSION"]


def _add_prior_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, metavar="MASKDIR", help="mask cache written by 'cellcls segment'")
    parser.add_argument("--sample", required=True, metavar="CSV", help="sample_submission.csv (IDs, order, sizes)")
    parser.add_argument("--labels", required=True, metavar="CSV", help="train.csv whose class frequencies are used")
    parser.add_argument("--out", required=True, metavar="CSV", help="submission file to write")
    add_progress_option(parser)


def _run_prior(args: argparse.Namespace) -> int:
    from cellcls.classes import CLASS_NAMES
    from cellcls.labels import read_train_csv

    from .prior import class_prior, write_prior_submission

    prior = class_prior(read_train_csv(args.labels))
    counts = write_prior_submission(args.masks, args.sample, prior, args.out, progress=progress_enabled(args))
    top = sorted(range(len(prior)), key=lambda c: -prior[c])[:3]
    print(f"wrote {args.out}: {counts['images']} images, {counts['cells']} cells x 19 classes"
          f" ({counts['missing']} images without masks got the empty placeholder)")
    print("most frequent classes: " + ", ".join(f"{CLASS_NAMES[c]} {prior[c]:.2f}" for c in top))
    return 0


PRIOR_SUBMISSION = Command(
    name="prior-submission",
    help="baseline submission: every segmented cell gets the train set's class frequencies",
    description=(
        "Write a valid submission from a mask cache without looking at any image: each cell gets, for each of "
        "the 19 classes, the fraction of training images that carry the class. It is the floor a model must "
        "beat, and a check that masks, sizes and sample order come out right."
    ),
    example="cellcls prior-submission --masks masks/test --sample sample_submission.csv --labels train.csv "
    "--out submission.csv",
    add_arguments=_add_prior_arguments,
    run=_run_prior,
)
