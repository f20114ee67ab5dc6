"""``cellcls demo``: the whole recipe on a synthetic world or on a folder in Kaggle layout (what ``make demo`` runs)."""
from __future__ import annotations

import argparse
from pathlib import Path

from cellcls.cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["DEMO"]

#: --quick: a smaller world and shorter training (under ~3 min on 2 cores)
QUICK = {"train": 80, "test": 20, "size": 384, "cell_epochs": 4, "image_epochs": 8}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR",
                        help="folder everything is written into (default demo_out)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="your own data in Kaggle layout (train/, test/, train.csv, sample_submission.csv; "
                        "scored when solution.csv is there) instead of a synthetic world")
    parser.add_argument("--image-scale", type=Bounded(float, low=0.01), metavar="F",
                        help="pixel size of --data's images relative to full-resolution HPA (default: auto; "
                        "see `cellcls segment --help`)")
    parser.add_argument("--quick", action="store_true",
                        help="smaller world, shorter training, no pseudo-label round (~3 min on 2 cores)")
    world = parser.add_argument_group("synthetic world (without --data)")
    world.add_argument("--train", type=Bounded(int, low=4), metavar="N", help="train images (default 200)")
    world.add_argument("--test", type=Bounded(int, low=1), metavar="M", help="test images (default 50)")
    world.add_argument("--size", type=Bounded(int, low=64), metavar="PX", help="image side in pixels (default 512)")
    world.add_argument("--seed", type=int, default=0, help="world, folds and training seed (default 0)")
    recipe = parser.add_argument_group("recipe")
    recipe.add_argument("--epochs", type=Bounded(int, low=1), metavar="E",
                        help="epochs of the cell model and of the image model (default 6 each)")
    recipe.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-label round")
    recipe.add_argument("--pseudo-epochs", type=Bounded(int, low=1), default=3, metavar="E",
                        help="epochs of the pseudo-label round, fine-tuning the first cell model on its own "
                        "soft labels (default 3)")
    recipe.add_argument("--tta", default="flips", help="TTA of both models at prediction (default flips)")
    add_progress_option(parser)


def _run(args: argparse.Namespace) -> int:
    from .demo import DemoOptions, format_summary, run_demo

    quick = QUICK if args.quick else {}
    epochs = args.epochs or quick.get("cell_epochs") or 6
    options = DemoOptions(
        out=args.out, data=args.data, image_scale=args.image_scale, seed=args.seed,
        n_train=args.train or quick.get("train", 200), n_test=args.test or quick.get("test", 50),
        size_px=args.size or quick.get("size", 512), cell_epochs=epochs,
        image_epochs=epochs if args.epochs else quick.get("image_epochs", 6),
        pseudo_epochs=args.pseudo_epochs,
        pseudo=not (args.no_pseudo or args.quick), tta=args.tta, progress=progress_enabled(args))
    summary = run_demo(options)
    print("\n" + format_summary(summary, args.out))
    print(_report(args.out, summary))
    return 0


def _report(out: Path, summary: dict) -> str | None:
    """Run `cellcls report` on the demo folder when that command is installed; never fails the demo."""
    from importlib.metadata import entry_points

    if not any(ep.name == "report" for ep in entry_points(group="cellcls.commands")):
        return f"(no `cellcls report` installed; the outputs are in {out})"
    from cellcls.cli import main as cellcls_main

    from .demo import report_argv

    argv = report_argv(out, summary)
    print("$ cellcls " + " ".join(argv), flush=True)
    try:
        code = cellcls_main(argv)
    except SystemExit as exc:  # a usage error of the report command
        code = exc.code
    if code == 0:
        return f"report: {out / 'report' / 'index.html'}"
    return f"(cellcls report exited {code}; the figures are in {out / 'summary.json'})"


DEMO = Command(
    name="demo",
    help="the whole recipe end to end: data -> cells -> two models -> scored submission (make demo)",
    description="Make (or take, with --data) a data set in Kaggle layout and run the recipe on it with the "
    "cellcls commands themselves, each printed as `$ cellcls ...`: folds, channel statistics, segmentation of "
    "train and test, the prior baseline, a cell-crop model and a whole-image model (trained from scratch on "
    "CPU), a blend chosen on validation images of the train set, an optional pseudo-label round, scores for "
    "every test cell with TTA, the submission check and, when a solution.csv is there, the competition metric "
    "of the prior, image-only, cell-only and blended scores. Ends with a summary table (also OUT/summary.json).",
    example="""
    cellcls demo --out demo_out                  # synthetic world 200/50, ~10 min on 2 cores
    cellcls demo --quick --out demo_quick        # ~3 min
    cellcls demo --data my_data --out my_run     # your own folder: writes my_run/submission.csv
    cellcls demo --data kaggle --image-scale 1 --out run   # full-resolution HPA-like images
    """,
    add_arguments=_arguments,
    run=_run,
)
