"""``cellcls show``: one image as a picture a person can read (composite, cells, classes, truth).

Top-level imports stay light (argparse, cellcls.cli); the work is in :mod:`cellcls.show`.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command

__all__ = ["SHOW"]


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of {ID}_{red,green,blue,yellow} files")
    parser.add_argument("--id", required=True, dest="image_id", metavar="ID", help="the image to show")
    parser.add_argument("--masks", metavar="MASKDIR", help="mask cache written by `cellcls segment` (cell outlines)")
    labels = parser.add_mutually_exclusive_group()
    labels.add_argument("--scores", metavar="FILE",
                        help="per-cell score table (.parquet/.csv) made on --masks: each cell's top classes")
    labels.add_argument("--submission", metavar="CSV",
                        help="submission file: its masks are the cells, its triplets their classes")
    parser.add_argument("--truth", metavar="DIR",
                        help="a synthetic world's truth/ folder: marks wrong cells (red) and missed ones (orange)")
    parser.add_argument("--out", required=True, metavar="PNG", help="picture to write (PNG)")
    parser.add_argument("--top-k", type=Bounded(int, low=1, high=19), default=2,
                        help="classes shown per cell, 1..19 (default 2)")
    parser.add_argument("--size", type=Bounded(int, low=128, high=8192), default=1024, metavar="PX",
                        help="longest side of the composite in pixels (default 1024; the sheet is 2x as wide)")
    parser.add_argument("--percentiles", type=Bounded(float, low=0, high=100), nargs=2, default=[1.0, 99.5],
                        metavar=("LOW", "HIGH"),
                        help="per-channel contrast stretch: these percentiles map to black and full "
                        "(default 1 99.5)")
    parser.add_argument("--channel-weights", type=Bounded(float, low=0, high=4), nargs=4,
                        default=[0.6, 1.0, 0.8, 0.4], metavar=("R", "G", "B", "Y"),
                        help="brightness of each stretched channel in the composite, yellow added to red "
                        "and green (default 0.6 1 0.8 0.4: reference channels dimmed, protein in full)")
    parser.add_argument("--levels", type=Bounded(int, low=2, high=256), default=256, metavar="N",
                        help="colour levels per channel in the PNG, 2..256 (default 256; 32 about halves the "
                        "file, e.g. for web pages)")
    parser.add_argument("--iou-threshold", type=Bounded(float, low=0, high=1, low_inclusive=False), default=0.6,
                        help="mask IoU for a predicted cell to match a true cell (default 0.6, the metric's)")


def _show_run(args: argparse.Namespace) -> int:
    from cellcls.errors import ParameterError
    from cellcls.show import quantize, show_image, write_png

    low, high = args.percentiles
    if not low < high:
        raise ParameterError(f"--percentiles LOW HIGH needs LOW < HIGH, got {low:g} {high:g}")
    rendered = show_image(
        args.images, args.image_id, masks=args.masks, scores=args.scores, submission=args.submission,
        truth=args.truth, size=args.size, top_k=args.top_k, percentiles=(low, high),
        weights=tuple(args.channel_weights), iou_threshold=args.iou_threshold,
    )
    path = write_png(args.out, quantize(rendered.image, args.levels))
    height, width = rendered.image.shape[:2]
    judged = f", {len(rendered.wrong)} wrong, {len(rendered.missed)} missed" if args.truth else ""
    print(f"{args.image_id}: {len(rendered.labels)} labels drawn{judged} -> {path} ({width}x{height})")
    return 0


SHOW = Command(
    name="show",
    help="draw one image: RGBY composite, cell outlines, top classes per cell, truth marks, channel panels",
    description="Write a PNG a person can read: the image's RGBY composite (HPA colours: microtubules red, "
    "protein green, nucleus blue, ER yellow added to red and green; each channel contrast-stretched "
    "between its --percentiles) with the cell outlines of a mask cache or a submission, each cell's "
    "--top-k classes and confidences (short names, keyed in the header), and the four channels in grey. "
    "With --truth (a synthetic world's truth/ folder) cells are matched to true cells at --iou-threshold: "
    "a cell whose best class is not a true label, or that matches no true cell, is outlined red with its "
    "true labels; true cells left unmatched are outlined orange.",
    example="""
    cellcls show --images data/synth/test --id ID --masks data/synth/masks/test --out cell.png
    cellcls show --images data/synth/test --id ID --masks data/synth/masks/test --scores scores.parquet \\
        --truth data/synth/truth --out cell.png --top-k 3
    cellcls show --images test --id ID --submission submission.csv --out cell.png --size 1536
    """,
    add_arguments=_show_arguments,
    run=_show_run,
)
