"""``cellcls synth``: write the synthetic HPA-like world (images + per-cell truth)."""
from __future__ import annotations

import argparse

from ..cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["SYNTH"]


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the world into")
    parser.add_argument("--train", type=Bounded(int, low=0), default=0, metavar="N",
                        help="number of train images (default 0)")
    parser.add_argument("--test", type=Bounded(int, low=0), default=0, metavar="M",
                        help="number of test images (default 0)")
    parser.add_argument(
        "--size",
        type=Bounded(int, low=32),
        default=None,
        metavar="PX",
        help="side of every image in pixels, >= 32; default: 1728/2048/3072 x --scale drawn with the real test "
        "set's frequencies (432/512/768 at 0.25)",
    )
    parser.add_argument("--seed", type=int, default=0, help="world seed: the same seed writes the same bytes (default 0)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    parser.add_argument(
        "--scale", type=Bounded(float, low=0.05, high=2.0), default=0.25,
        help="pixel size relative to full-resolution HPA, in [0.05, 2] (default 0.25 = quarter resolution)",
    )
    parser.add_argument(
        "--non-square", type=Bounded(float, low=0.0, high=1.0), default=0.0, metavar="F",
        help="fraction of images with a random non-square aspect, in [0, 1] (default 0)",
    )
    parser.add_argument("--preview", action="store_true", help="also write DIR/preview.png, one image per class")
    group = parser.add_argument_group(
        "drawing the world differently",
        "Each option changes the world only when given (the default world is unchanged byte for byte); "
        "the choices are recorded under \"variant\" in world.json.",
    )
    group.add_argument(
        "--variant", choices=("default", "shifted"), default=None,
        help="preset of the four options below; 'shifted' = --cell-shape irregular --renderer alt --class-mix flat "
        "--negative-share 0.1 0.5 (a world drawn differently in one flag); explicit options override it",
    )
    group.add_argument(
        "--cell-shape", choices=("default", "round", "elongated", "irregular"), default=None,
        help="cell geometry: 'round' near-circular (long/short axis 1.0-1.12), 'elongated' spindle-like "
        "(axis ratio 2.8-4.5, long aligned nuclei, parallel colonies), 'irregular' lobed, rough outlines "
        "(low solidity); nuclei stay inside their cells (default: the cell lines' own shapes)",
    )
    group.add_argument(
        "--renderer", choices=("default", "alt"), default=None,
        help="green (protein) pattern textures: 'alt' = an independent set (other puncta sizes/counts, rim "
        "profiles, filament thickness/orientation, ER/mitochondria scales), each class in its usual compartment; "
        "for the same --seed only the green channel changes (geometry, labels, red/blue/yellow are the same bytes)",
    )
    group.add_argument(
        "--class-mix", choices=("real", "flat", "rare"), default=None,
        help="how often each class is a protein's location: 'real' = real train counts ** 0.75 (default), "
        "'flat' = the 18 location classes equally likely, 'rare' = tilted towards rare classes "
        "(counts ** -0.5); Negative keeps its real share (~0.3 %%) in all three",
    )
    group.add_argument(
        "--negative-share", type=Bounded(float, low=0.0, high=1.0), nargs=2, default=None, metavar=("LO", "HI"),
        help="range of each image's share of non-expressing cells (cell truth Negative), fractions in "
        "0 <= LO <= HI <= 1, drawn per image and skewed towards LO (default 0 0.3)",
    )
    group.add_argument(
        "--shared-groups", type=Bounded(float, low=0.0, high=1.0), default=None, metavar="F",
        help="chance in [0, 1] that a test draw is one more image of a train protein (group); otherwise it adds "
        "a protein unseen in train with 1-6 images, so fewer test images than F share a group with train "
        "(200 + 50 images, seed 0: 5 of 50 at the default 0.3, 41 at 0.85); 1 = every test group occurs in "
        "train, 0 = none; recorded as \"shared_groups\" in world.json",
    )
    add_progress_option(parser)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import CellclsError

    if args.train == 0 and args.test == 0 and not args.preview:
        raise CellclsError("nothing to do: give --train N and/or --test M (or --preview for the contact sheet)")
    from ..synth.variants import resolve_variant

    variant_options = {
        "variant": args.variant,
        "cell_shape": args.cell_shape,
        "renderer": args.renderer,
        "class_mix": args.class_mix,
        "negative_share": tuple(args.negative_share) if args.negative_share is not None else None,
    }
    variant = resolve_variant(**variant_options)  # checks LO <= HI before anything is written
    out = Path(args.out)
    if args.train or args.test:
        from ..synth import generate_world

        summary = generate_world(
            out,
            n_train=args.train,
            n_test=args.test,
            size_px=args.size,
            seed=args.seed,
            bit_depth=args.bit_depth,
            scale=args.scale,
            non_square=args.non_square,
            progress=progress_enabled(args),
            shared_groups=args.shared_groups,
            **variant_options,
        )
        print(summary.describe())
    if args.preview:
        from ..synth import preview_sheet

        path = preview_sheet(out / "preview.png", seed=args.seed, scale=args.scale, variant=variant)
        print(f"contact sheet (one image per class): {path}")
    return 0


SYNTH = Command(
    name="synth",
    help="write a synthetic HPA-like dataset with per-cell ground truth",
    description=(
        "Generate synthetic 4-channel HPA-like images (red microtubules, green protein, blue nuclei, "
        "yellow ER) in the Kaggle layout: train/ and test/ PNGs, train.csv (ID,Label,group), "
        "sample_submission.csv, plus the truth a real train set lacks: truth/{ID}_cells.png and "
        "truth/{ID}_nuclei.png instance maps, truth/cells.csv (labels of every cell), solution.csv "
        "(test) and solution_train.csv (train) in the submission format, and world.json. "
        "Sizes are given at --scale (relative to full-resolution HPA pixels)."
    ),
    example="""
        cellcls synth --out world --train 200 --test 50 --seed 0
        cellcls synth --out world16 --train 20 --test 10 --size 512 --bit-depth 16 --non-square 0.2
        cellcls synth --out world --preview
        cellcls synth --out shifted --train 200 --test 50 --size 512 --seed 0 --variant shifted
        cellcls synth --out long --train 20 --test 10 --size 256 --cell-shape elongated --negative-share 0.2 0.6
    """,
    add_arguments=_add_arguments,
    run=_run,
)
