"""``cellcls embed``: image-level embeddings of an ArcFace checkpoint into an ``emb.npz`` file.

Top-level imports stay light (argparse + cellcls.cli); the work is imported inside ``run``.
"""
from __future__ import annotations

import argparse

from cellcls.cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["EMBED"]


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a .ckpt of `cellcls train --task arcface`")
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of {ID}_{red,green,blue,yellow} images")
    parser.add_argument("--masks", metavar="MASKDIR", help="mask cache of these images (cellcls segment); needed "
                        "by a checkpoint trained on cell crops (an image's embedding is the mean of its cells')")
    parser.add_argument("--ids", metavar="CSV", help="embed only the IDs of this CSV's ID column, in its order "
                        "(default: every complete image of --images, sorted)")
    parser.add_argument("--tta", default="none", metavar="NAME",
                        help="views averaged (normalised embeddings, then normalised again): none (default), flips, d4")
    parser.add_argument("--labels", metavar="CSV", help="train.csv: store each image's labels in the file, for "
                        "label transfer (every embedded ID needs a row)")
    parser.add_argument("--out", required=True, metavar="NPZ", help="embeddings file to write (emb.npz format)")
    parser.add_argument("--batch-size", type=Bounded(int, low=1), default=32, metavar="B",
                        help="images (cells, for a cell-crop checkpoint) per forward pass (default 32)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the network runs (default auto: cuda when available)")
    add_progress_option(parser)


def _read_ids(path: str) -> list[str]:
    import pandas as pd

    from cellcls.errors import LabelError

    frame = pd.read_csv(path, dtype=str)
    if "ID" not in frame.columns:
        raise LabelError(f"{path}: no ID column (columns {list(frame.columns)}); --ids needs a CSV with a header 'ID'")
    ids = [s.strip() for s in frame["ID"].dropna()]
    if not ids:
        raise LabelError(f"{path}: no IDs below the header")
    return ids


def _run(args: argparse.Namespace) -> int:
    import torch

    from cellcls.embeddings import write_embeddings
    from cellcls.errors import CellclsError
    from cellcls.io import list_image_ids

    from .embed import embed_images, labels_for, read_arcface_checkpoint
    from .tta import get_tta

    get_tta(args.tta)  # an unknown name fails before the checkpoint is read
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise CellclsError("--device cuda: torch sees no CUDA GPU; use --device auto or cpu")
    ids = _read_ids(args.ids) if args.ids else list_image_ids(args.images)
    if not ids:
        raise CellclsError(f"no complete image (all four channel files) in {args.images}")
    labels = labels_for(args.labels, ids) if args.labels else None
    checkpoint = read_arcface_checkpoint(args.checkpoint)
    embeddings = embed_images(checkpoint, args.images, ids, masks=args.masks, tta=args.tta,
                              batch_size=args.batch_size, device=device, progress=progress_enabled(args))
    written = write_embeddings(args.out, ids, embeddings, labels)
    print(f"{len(ids)} images -> {checkpoint.embedding_dim}-d embeddings ({checkpoint.describe()}, tta "
          f"{args.tta}{', with labels' if labels is not None else ''}) -> {written}")
    return 0


EMBED = Command(
    name="embed",
    help="image embeddings of an ArcFace checkpoint (cellcls train --task arcface) into emb.npz",
    description="Embed images with the metric-learning network, exactly as training validated: a whole-image "
    "checkpoint resizes each image to its image size; a cell-crop checkpoint (trained with --data.masks) cuts "
    "every cell of the image's --masks entry with its crop recipe and takes the L2-normalised mean of the "
    "cells' embeddings. Inputs are normalised with the checkpoint's statistics and embedded under every TTA "
    "view, the L2-normalised views averaged and normalised again. Writes an emb.npz (ids, embeddings, and "
    "with --labels the images' labels) for `cellcls neighbors` and label transfer "
    "(cellcls.neighbors.transfer_labels: the 2019 winner copied a labelled neighbour's labels from cosine 0.65).",
    example="""
    cellcls embed --checkpoint runs/arcface/checkpoints/last.ckpt --images train --labels train.csv --out train_emb.npz
    cellcls embed --checkpoint runs/arcface/checkpoints/last.ckpt --images test --tta flips --out test_emb.npz
    cellcls embed --checkpoint runs/arcface_cells/checkpoints/last.ckpt --images test --masks masks/test \\
        --out test_emb.npz
    cellcls neighbors --query test_emb.npz --index train_emb.npz --k 5 --out nn.csv
    """,
    add_arguments=_arguments,
    run=_run,
)
