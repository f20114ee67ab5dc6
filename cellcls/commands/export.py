"""``cellcls export-masks``: a mask cache as label images napari, CellProfiler and QuPath open.

Top-level imports stay light (argparse, cellcls.cli); the work is in :mod:`cellcls.masks.export`.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Command, add_progress_option, progress_enabled

__all__ = ["EXPORT_MASKS"]


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, metavar="MASKDIR", help="mask cache written by `cellcls segment`")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the label images")
    parser.add_argument("--format", default="png", choices=("png", "tiff"),
                        help="png: 16-bit (refused when an image has more than 65535 ids); tiff: 16-bit, or "
                        "32-bit where needed (default png)")
    parser.add_argument("--ids", metavar="CSV",
                        help="only the image IDs of this CSV's ID column (default: every entry of the cache)")
    parser.add_argument("--nuclei", action="store_true", help="also write {ID}_nuclei files (nucleus = its cell's id)")
    parser.add_argument("--tiff-compression", default="deflate", choices=("deflate", "none"),
                        help="TIFF compression (default deflate, read by libtiff, Bio-Formats and tifffile)")
    add_progress_option(parser)


def _export_run(args: argparse.Namespace) -> int:
    from cellcls.masks.export import export_masks

    from cellcls.labels import read_ids_csv

    ids = read_ids_csv(args.ids) if args.ids else None
    summary = export_masks(args.masks, args.out, fmt=args.format, ids=ids, nuclei=args.nuclei,
                           compression=args.tiff_compression, progress=progress_enabled(args))
    per_image = 2 if args.nuclei else 1
    wide = f", {summary.n_uint32} of them 32-bit" if summary.n_uint32 else ""
    print(f"{summary.n_images} images -> {summary.n_images * per_image} {args.format} label images at the "
          f"original size in {summary.out_dir}{wide}")
    return 0


EXPORT_MASKS = Command(
    name="export-masks",
    help="write a mask cache as 16/32-bit label images (PNG/TIFF) at the original size for napari, QuPath...",
    description="Write every entry of a mask cache (or those listed by --ids) as {ID}_cells.png|tif, and with "
    "--nuclei {ID}_nuclei.png|tif, at the ORIGINAL image size (nearest upscale, exactly as the cache reads "
    "it): 0 = background, cells 1..N, a nucleus carries its cell's id. PNG is 16-bit; an image with ids above "
    "65535 needs --format tiff (32-bit), and --format png refuses it before writing anything.",
    example="""
    cellcls export-masks --masks masks/test --out masks_png
    cellcls export-masks --masks masks/train --out masks_tif --format tiff --nuclei --ids folds.csv
    """,
    add_arguments=_export_arguments,
    run=_export_run,
)
