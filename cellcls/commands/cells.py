"""Cell commands: ``cellcls cell-table``.

Top-level imports stay light (argparse, cellcls.cli); the work is imported inside ``run``.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Command

__all__ = ["CELL_TABLE"]


def _cell_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, metavar="MASKDIR",
                        help="mask cache folder written by `cellcls segment`")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output cell table, .parquet or .csv (chosen by the suffix)")
    parser.add_argument("--ids", metavar="CSV",
                        help="only the image IDs of this CSV's ID column (train.csv, sample_submission.csv); "
                        "default: every entry of the cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cell_table_run(args: argparse.Namespace) -> int:
    from cellcls.masks import MaskCache
    from cellcls.masks.table import cache_cell_table, write_cell_table

    reader = MaskCache(args.masks).reader()
    from cellcls.labels import read_ids_csv

    ids = read_ids_csv(args.ids) if args.ids else reader.ids()
    table = cache_cell_table(reader, ids=ids, progress=not (args.no_progress or args.quiet))
    path = write_cell_table(table, args.out)
    n_images = len(ids)
    with_cells = table["ID"].nunique()
    print(f"{len(table)} cells from {with_cells} images with cells "
          f"({n_images - with_cells} without) -> {path}")
    if len(table):
        print(f"cells per image: median {table.groupby('ID').size().median():g}; "
              f"touching the border: {table['touches_border'].mean():.1%}; "
              f"median cell area {table['cell_area_px'].median():g} px (original pixels)")
    return 0


CELL_TABLE = Command(
    name="cell-table",
    help="one row per segmented cell (box, centroid, areas in original pixels) from a mask cache",
    description="Read every entry of a mask cache (or those listed by --ids) and write the cell table: "
    "image ID, cell id, bounding box, cell and nucleus centroids, cell and nucleus areas, whether the "
    "cell touches the image border, and the entry's mask_key. Every measure is in pixels of the "
    "original image, exactly as on the nearest-upscaled masks. Training and inference crop from it.",
    example="""
    cellcls cell-table --masks masks/test --out cells_test.parquet
    cellcls cell-table --masks masks/train --ids folds.csv --out cells_train.csv --no-progress
    """,
    add_arguments=_cell_table_arguments,
    run=_cell_table_run,
)
