"""``cellcls report``: a folder with ``index.html`` and PNGs that opens from disk in any browser.

Top-level imports stay light (argparse, cellcls.cli); the work is in :mod:`cellcls.report`.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command

__all__ = ["REPORT", "parse_named"]


def parse_named(values: list[str] | None, option: str) -> dict[str, str]:
    """``["prior=a.json", "b.json"]`` -> ``{"prior": "a.json", "b": "b.json"}`` (no ``NAME=``: the file stem;
    ``metrics.csv``: its run folder's name). Raises ReportError on an empty name or a repeated one."""
    from cellcls.errors import ReportError
    from cellcls.report.write import default_name

    named: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep:
            name, path = default_name(value), value
        if not name or not path:
            raise ReportError(f"{option} {value!r}: expected NAME=PATH or PATH")
        if name in named:
            raise ReportError(f"{option}: the name {name!r} is given twice; write NAME=PATH to tell them apart")
        named[name] = path
    return named


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write index.html and its PNGs into")
    parser.add_argument("--evaluation", action="append", metavar="NAME=JSON",
                        help="a `cellcls evaluate --json` file; repeat to compare (e.g. prior=, cell=, blend=)")
    parser.add_argument("--segmentation", action="append", metavar="[NAME=]JSON",
                        help="a `cellcls segment-score --json` file; repeat to compare segmentations")
    parser.add_argument("--train-log", action="append", metavar="[NAME=]CSV",
                        help="a training run's RUN/logs/version_N/metrics.csv (CSVLogger); repeat per run")
    parser.add_argument("--scores", metavar="FILE",
                        help="per-cell score table (.parquet/.csv): with --labels, the disagreement tables; "
                        "with --masks, the classes drawn on the overlays")
    parser.add_argument("--labels", metavar="CSV", help="image labels (train.csv) of the scored images")
    parser.add_argument("--images", metavar="DIR", help="image folder, for the overlays (needs --masks)")
    parser.add_argument("--masks", metavar="MASKDIR", help="mask cache of --images (the one --scores was made on)")
    parser.add_argument("--overlay-scores", metavar="FILE",
                        help="score table made on --masks, when it is not --scores (e.g. test-image scores while "
                        "--scores holds the labelled images' scores); default --scores")
    parser.add_argument("--truth", metavar="DIR", help="a synthetic world's truth/: overlays mark wrong cells red")
    parser.add_argument("--overlay-ids", type=Bounded(int, low=0, high=64), default=3, metavar="N",
                        help="how many overlays (the first N image IDs of the mask cache that have scores; "
                        "default 3)")
    parser.add_argument("--overlay-size", type=Bounded(int, low=128, high=2048), default=480, metavar="PX",
                        help="longest side of each overlay's composite, pixels (default 480)")
    parser.add_argument("--top-n", type=Bounded(int, low=1, high=1000), default=10, metavar="N",
                        help="cells listed per disagreement table (default 10)")
    parser.add_argument("--threshold", type=Bounded(float, low=0, high=1), default=0.5, metavar="P",
                        help="P(class) cut of the disagreement counts (default 0.5)")
    parser.add_argument("--title", default="cellcls report", help="page title")


def _report_run(args: argparse.Namespace) -> int:
    import logging

    from cellcls.errors import ParameterError
    from cellcls.report import OverlaySpec, write_report

    if (args.images is None) != (args.masks is None):
        raise ParameterError("overlays need both --images and --masks (or neither)")
    overlays = None
    if args.images is not None and args.overlay_ids > 0:
        overlays = OverlaySpec(images=args.images, masks=args.masks, scores=args.overlay_scores or args.scores, truth=args.truth,
                               ids=args.overlay_ids, size=args.overlay_size)
    elif args.truth is not None and args.images is None:
        logging.getLogger("cellcls").warning("--truth is only used by the overlays, which need --images and --masks")
    report = write_report(
        args.out, evaluations=parse_named(args.evaluation, "--evaluation"),
        segmentation=parse_named(args.segmentation, "--segmentation"),
        train_logs=parse_named(args.train_log, "--train-log"),
        scores=args.scores if args.labels is not None else None, labels=args.labels if args.scores else None,
        overlays=overlays, top_n=args.top_n, threshold=args.threshold, title=args.title)
    print(report.summary())
    print(f"wrote {report.index} and {len(report.files)} PNGs; open it in a browser (no server needed)")
    if report.failed:
        print(f"error: sections that could not be made: {', '.join(report.failed)} (reasons in the page and above)")
        return 1
    return 0


REPORT = Command(
    name="report",
    help="write a report folder (index.html + PNGs): AP bars, overlays, segmentation, training curves, "
    "cell-vs-image-label disagreement",
    description="Write DIR/index.html and its PNGs, a page that opens from disk in any browser (inline CSS, "
    "relative image links, no script, no network). Each section is filled from the inputs given and says "
    "'not available' otherwise: per-class AP bars of each --evaluation (NAME=score.json from `cellcls "
    "evaluate --json`; e.g. prior, cell, blend side by side); overlays of a few images (--images --masks, "
    "classes from --scores, wrong cells from --truth); cell precision/recall/F1 of each --segmentation "
    "(`cellcls segment-score --json`); training curves of each --train-log (Lightning metrics.csv); and, "
    "from --scores with --labels, the cells where the cell model and the image-level labels disagree most "
    "(image labelled with a class the model scores lowest or calls Negative; image without a class the "
    "model scores highest). Exit code 1 if an input given cannot be read (the page is still written and "
    "says which).",
    example="""
    cellcls report --out demo_out/report \\
        --evaluation prior=demo_out/prior_score.json --evaluation cell=demo_out/cell_score.json \\
        --segmentation demo_out/seg_score.json --train-log demo_out/run/logs/version_0/metrics.csv \\
        --scores demo_out/train_scores.parquet --labels data/synth/train.csv \\
        --images data/synth/test --masks data/synth/masks/test --overlay-scores demo_out/test_scores.parquet \\
        --truth data/synth/truth --overlay-ids 3
    cellcls report --out report --evaluation score.json       # only the AP section; the rest 'not available'
    """,
    add_arguments=_report_arguments,
    run=_report_run,
)
