"""Data-preparation commands: ``cellcls folds``, ``cellcls stats``, ``cellcls dedup``.

Top-level imports stay light (argparse, cellcls.cli); the work is imported inside ``run``.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command, add_deprecated_alias, add_progress_option, progress_enabled

__all__ = ["FOLDS", "STATS", "DEDUP", "format_fold_table"]


# --------------------------------------------------------------------------- folds
def _folds_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", required=True, metavar="CSV", help="label file with columns ID,Label (train.csv)")
    parser.add_argument("--k", type=int, default=5, help="number of folds, >= 2 (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same folds (default 0)")
    parser.add_argument("--out", required=True, metavar="CSV", help="output: ID,fold (+ the group column)")
    parser.add_argument(
        "--group-col",
        metavar="COL",
        help="column of the label file whose values must not straddle folds (e.g. a dedup group); "
        "empty cells are groups of one",
    )


def format_fold_table(counts, *, image_counts=None) -> str:
    """Text table: one row per fold, one column per class id, plus image count and totals."""
    import numpy as np

    counts = np.asarray(counts)
    k, n_classes = counts.shape
    header = ["fold"] + (["images"] if image_counts is not None else []) + [str(c) for c in range(n_classes)]
    rows = []
    for f in range(k):
        rows.append([str(f)] + ([str(int(image_counts[f]))] if image_counts is not None else [])
                    + [str(int(v)) for v in counts[f]])
    rows.append(["total"] + ([str(int(np.sum(image_counts)))] if image_counts is not None else [])
                + [str(int(v)) for v in counts.sum(axis=0)])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return "\n".join(" ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header] + rows)


def _folds_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import pandas as pd

    from cellcls.errors import CellclsError
    from cellcls.folds import fold_class_counts, make_folds
    from cellcls.labels import read_train_csv

    table = read_train_csv(args.labels)
    groups = None
    if args.group_col:
        if args.group_col not in table.extra.columns:
            raise CellclsError(
                f"{args.labels} has no column {args.group_col!r}; its extra columns are {list(table.extra.columns)}"
            )
        groups = table.extra[args.group_col].tolist()
    folds = make_folds(table.targets, k=args.k, seed=args.seed, groups=groups)
    out = pd.DataFrame({"ID": list(table.ids), "fold": folds})
    if groups is not None:
        out[args.group_col] = groups
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    counts = fold_class_counts(table.targets, folds, k=args.k)
    print(f"{len(table)} images in {args.k} folds (seed {args.seed}) -> {args.out}")
    print("images per class in each fold (columns: class ids):")
    print(format_fold_table(counts, image_counts=np.bincount(folds, minlength=args.k)))
    return 0


FOLDS = Command(
    name="folds",
    help="multi-label stratified cross-validation folds from a label CSV",
    description="Assign every image of a label file (ID,Label) to one of K folds, stratified over all "
    "19 classes at once (iterative stratification). With --group-col, images sharing a group value "
    "stay in one fold. Prints how many images of each class each fold holds.",
    example="""
    cellcls folds --labels train.csv --k 5 --seed 0 --out folds.csv
    cellcls folds --labels train_with_groups.csv --group-col group --out folds.csv
    """,
    add_arguments=_folds_arguments,
    run=_folds_run,
)


def _workers_option(parser: argparse.ArgumentParser) -> None:
    workers = parser.add_argument("--num-workers", type=Bounded(int, low=0), default=2, metavar="W",
                                  help="images decoded concurrently, in threads (default 2; 0 or 1 = one at a time)")
    add_deprecated_alias(parser, "--workers", workers, since="0.1.0", removed_in="0.3")


# --------------------------------------------------------------------------- stats
def _stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, nargs="+", metavar="DIR", help="image folder(s)")
    parser.add_argument("--out", required=True, metavar="JSON", help="output statistics file")
    parser.add_argument("--size", type=int, metavar="PX", help="area-resize images to PX x PX first (as the model sees them)")
    _workers_option(parser)
    add_progress_option(parser)


def _stats_run(args: argparse.Namespace) -> int:
    from cellcls.stats import channel_stats, write_stats

    stats = channel_stats(args.images, size=args.size, workers=args.num_workers, progress=progress_enabled(args))
    write_stats(stats, args.out)
    size = "full size" if stats["size"] is None else f"{stats['size'][0]}x{stats['size'][1]}"
    print(f"{stats['n_images']} images at {size}, {stats['n_pixels']} pixels per channel -> {args.out}")
    print(f"{'channel':>8} {'mean':>8} {'std':>8}")
    for name, mean, std in zip(stats["channels"], stats["mean"], stats["std"]):
        print(f"{name:>8} {mean:8.5f} {std:8.5f}")
    return 0


STATS = Command(
    name="stats",
    help="per-channel mean and std of image folders (for normalisation)",
    description="Stream every complete sample of the given folders and compute each channel's mean and "
    "standard deviation in [0, 1] units (uint8/255, uint16/65535), exactly merged over images. "
    "Writes JSON for input normalisation (read back with cellcls.stats.read_stats).",
    example="""
    cellcls stats --images data/train data/test --out stats.json --size 512
    """,
    add_arguments=_stats_arguments,
    run=_stats_run,
)


# --------------------------------------------------------------------------- dedup
def _dedup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, nargs="+", metavar="DIR", help="image folder(s) to compare")
    parser.add_argument("--out", required=True, metavar="CSV", help="output: group,ID,folder of every duplicate")
    parser.add_argument(
        "--threshold", type=Bounded(int, low=0, high=40), default=None, metavar="BITS",
        help="largest hash distance (of 126 bits) that counts as a duplicate, 0..40 (default 6)",
    )
    _workers_option(parser)
    add_progress_option(parser)


def _dedup_run(args: argparse.Namespace) -> int:
    from cellcls.dedup import DEFAULT_THRESHOLD_BITS, find_duplicates, write_duplicates

    threshold = DEFAULT_THRESHOLD_BITS if args.threshold is None else args.threshold
    rows = find_duplicates(args.images, threshold=threshold, workers=args.num_workers,
                           progress=progress_enabled(args))
    write_duplicates(rows, args.out)
    n_groups = len({r.group for r in rows})
    print(f"{n_groups} duplicate groups, {len(rows)} images in them (threshold {threshold} bits) -> {args.out}")
    if rows:
        folders = sorted({r.folder for r in rows})
        for folder in folders:
            print(f"  {folder}: {sum(r.folder == folder for r in rows)} images")
    return 0


DEDUP = Command(
    name="dedup",
    help="find near-duplicate images (copies, rotations, flips, re-encodings) across folders",
    description="Hash the green and blue channels of every sample (DCT of a 32x32 thumbnail, in all 8 "
    "orientations) and group samples whose hashes differ in at most --threshold bits. Writes one row "
    "per grouped image; drop or group them before making folds.",
    example="""
    cellcls dedup --images data/train data/hpa_public --out dups.csv
    cellcls dedup --images data/train --out dups.csv --threshold 4
    """,
    add_arguments=_dedup_arguments,
    run=_dedup_run,
)
