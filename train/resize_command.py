"""``cellcls resize``: a resized copy of an image folder for training on whole images.

Top-level imports stay light (argparse, cellcls.cli); the work (:mod:`train.resize`) is imported
inside :func:`run`.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command, add_deprecated_alias, add_progress_option, progress_enabled

__all__ = ["RESIZE", "add_arguments", "run"]

DESCRIPTION = """\
Write a copy of the images in --images into --out with the LONGER side resized to --size pixels
(aspect ratio kept, so the competition's square images come out SIZE x SIZE; images already no
larger than --size are copied as they are, never enlarged). Area averaging (cv2.INTER_AREA) per
channel; 8-bit stays 8-bit, 16-bit stays 16-bit; output is {ID}_{red,green,blue,yellow}.png, so
the copy reads like the originals (cellcls.io.read_image; a training config's data.images).

Decoding full-size PNGs is the bottleneck of training on whole images: do it once here, in
--num-workers processes. Resumable: every file is written atomically, and an image whose four
files already exist at the right size (checked from the PNG headers) is skipped, so a killed run
re-started with the same command redoes only the rest (--overwrite redoes all). resize.json in
--out records the size, the source and the counts; another --size into the same --out is refused.

An unreadable image (missing channel, corrupt or truncated file) is logged by ID and skipped.
Exit codes: 0 = every image resized (or already there); 3 = finished, but some images failed
(listed at the end and in resize.json); 1 = nothing done (bad option, missing folder); 2 = usage.
"""

EXAMPLE = """\
cellcls resize --images data/train --out data/train_1024 --size 1024
cellcls resize --images data/train --out data/train_512 --size 512 --ids data/train.csv --num-workers 2
cellcls train --config configs/seed002_efficientnet_b0.yaml --data.images data/train_1024   # train on the copy
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--images", required=True, metavar="DIR",
                    help="folder of {ID}_{red,green,blue,yellow}.png|tif|jpg images (the originals)")
    io.add_argument("--out", required=True, metavar="DIR", help="folder of the resized copy (created)")
    io.add_argument("--size", required=True, type=Bounded(int, low=1), metavar="PX",
                    help="longer side of the copy in pixels, e.g. 512, 768 or 1024")
    io.add_argument("--ids", metavar="CSV",
                    help="resize only the IDs in this CSV's ID (or Image) column (train.csv); "
                    "default: every complete image in --images")
    io.add_argument("--overwrite", action="store_true", help="redo images already present in --out")

    run_group = parser.add_argument_group("execution")
    workers = run_group.add_argument(
        "--num-workers", type=Bounded(int, low=0), default=None, metavar="N",
        help="worker processes decoding and resizing (default: min(4, CPU count); 0 = in the main process)")
    # the spelling of the issue that asked for this command, as for dedup: works, hidden, warns
    add_deprecated_alias(run_group, "--workers", workers, since="0.1.0", removed_in="0.3")
    add_progress_option(run_group)


def run(args: argparse.Namespace) -> int:
    from train.resize import read_ids_csv, resize_folder

    ids = read_ids_csv(args.ids) if args.ids else None
    summary = resize_folder(args.images, args.out, size=args.size, ids=ids, workers=args.num_workers,
                            overwrite=args.overwrite, progress=progress_enabled(args))
    print(summary.format())
    return summary.exit_code


RESIZE = Command(
    name="resize",
    help="a resized copy of an image folder (longer side to --size px), resumable, for training",
    description=DESCRIPTION,
    example=EXAMPLE,
    add_arguments=add_arguments,
    run=run,
)
