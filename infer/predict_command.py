"""``cellcls predict``: score every cell with trained checkpoints; write the submission and the score table.

Top-level imports stay light (argparse, cellcls.cli); the work happens in :mod:`infer.predict`.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

from cellcls.cli import Bounded, Command, add_progress_option, progress_enabled

__all__ = ["PREDICT", "segment_missing", "read_folds", "run_predict"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Score every segmented cell of the images in --images with one or more checkpoints saved by
`cellcls train` (cell-task models on crops cut as their checkpoint records; image-task models on the
whole image, and on crops when no cell model is given), average the ensemble, blend cell and image
scores by a named rule, and write the submission (--out, in sample order, every sample ID present)
and/or the per-cell score table (--scores, Parquet or CSV: ID, cell_id, mask_key, source, p0..p18).

Images without a mask-cache entry are segmented first into --masks (`cellcls segment`, the backend
the cache already uses), or only reported with --no-segment. An image that cannot be read, has no
cells or no mask entry gets the empty placeholder row and is named in the log and the summary.

--oof scores a TRAIN set out of fold: each image only by the checkpoints validated on its fold of
--folds (they never saw it). Its score table is the soft labels of a pseudo-label round
(`cellcls train --cell-labels`).

Exit codes: 0 = done; 3 = done, but some images got the placeholder row; 1 = error; 2 = usage.
"""

EXAMPLE = """\
cellcls predict --images test --masks masks/test --checkpoint runs/f0/checkpoints/last.ckpt \\
    --sample sample_submission.csv --out submission.csv --scores scores.parquet
cellcls predict --images test --masks masks/test --checkpoint f0.ckpt --checkpoint f1.ckpt \\
    --sample sample_submission.csv --out submission.csv --config infer.yaml --blend mean:w=0.7 --tta d4
cellcls predict --oof --folds folds.csv --images train --masks masks/train --checkpoint f0.ckpt \\
    --checkpoint f1.ckpt --scores oof_scores.parquet
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--images", required=True, metavar="DIR", help="folder of {ID}_{red,green,blue,yellow} images")
    io.add_argument("--masks", required=True, metavar="MASKDIR", help="mask cache (made here if images lack entries)")
    io.add_argument("--checkpoint", required=True, action="append", metavar="CKPT",
                    help="a .ckpt saved by `cellcls train`; repeat for an ensemble")
    io.add_argument("--sample", metavar="CSV", help="sample_submission.csv: IDs, order and sizes (needed for --out)")
    io.add_argument("--out", metavar="CSV", help="submission file to write")
    io.add_argument("--scores", metavar="FILE", help="per-cell score table to write (.parquet or .csv)")
    io.add_argument("--summary", metavar="JSON", help="also write the run summary (placeholders, stage times) here")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--config", metavar="YAML", help="infer config (TTA, blend, batch size; see infer/config.py)")
    scoring.add_argument("--tta", metavar="NAME", help="TTA of every model: none, flips, d4, seed002 (overrides config)")
    scoring.add_argument("--blend", metavar="SPEC", help="blend spec, e.g. cell, mean:w=0.7, fourth, product12 "
                         "(+area7:image_scale=S, +border4); overrides config")
    scoring.add_argument("--batch-size", type=Bounded(int, low=1), metavar="B", help="crops per forward pass")
    scoring.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the models run (default auto)")
    oof = parser.add_argument_group("out of fold")
    oof.add_argument("--oof", action="store_true", help="score each image by the checkpoints of its fold only")
    oof.add_argument("--folds", metavar="CSV", help="folds.csv (ID,fold) of the training runs; --oof needs it")
    seg = parser.add_argument_group("segmentation of images without masks")
    seg.add_argument("--no-segment", action="store_true", help="do not segment: report such images (placeholder rows)")
    seg.add_argument("--segment-backend", default="auto", choices=("auto", "hpa", "classical"),
                     help="backend when the cache has none yet (default auto); else the cache's own")
    seg.add_argument("--weights-dir", metavar="D", help="HPA segmentation weights folder (see `cellcls segment`)")
    add_progress_option(parser)


# ----------------------------------------------------------------------------- helpers
def read_folds(path: str | Path) -> dict[str, int]:
    """``folds.csv`` (``ID,fold``, from ``cellcls folds``) -> {ID: fold}."""
    import pandas as pd

    from cellcls.errors import CellclsError

    path = Path(path)
    if not path.is_file():
        raise CellclsError(f"folds file {path} does not exist; make it with `cellcls folds`")
    table = pd.read_csv(path, dtype={"ID": str})
    if not {"ID", "fold"} <= set(table.columns):
        raise CellclsError(f"folds file {path}: expected columns ID,fold, found {list(table.columns)}")
    return dict(zip(table["ID"], table["fold"].astype(int)))


def segment_missing(images: str | Path, masks: str | Path, ids: Sequence[str], *, backend: str = "auto",
                    weights_dir: str | None = None, progress: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """Segment the images of ``ids`` that have no usable entry in ``masks``; return the IDs still without one.

    Runs ``cellcls segment`` through the plugin CLI (the infer stage never imports the segment
    stage). When the cache already holds entries, their backend is used so the folder stays one
    parameter set.
    """
    import tempfile

    from cellcls.cli import main as cellcls_main
    from cellcls.errors import CellclsError
    from cellcls.masks import MaskCache

    cache = MaskCache(masks)
    sets = cache.parameter_sets()
    have = set(sets[0].ids) if len(sets) == 1 else set()
    if len(sets) > 1:
        cache.reader()  # raises the CacheError that names the mixed sets
    todo = [i for i in dict.fromkeys(ids) if i not in have]
    if not todo:
        return []
    if sets and sets[0].backend in ("hpa", "classical"):
        backend = sets[0].backend
    log.info("segmenting %d image(s) without a mask entry into %s (backend %s)", len(todo), masks, backend)
    with tempfile.TemporaryDirectory() as tmp:
        id_file = Path(tmp) / "ids.csv"
        id_file.write_text("ID\n" + "".join(f"{i}\n" for i in todo))
        argv = ["segment", "--images", str(images), "--out", str(masks), "--ids", str(id_file), "--backend", backend]
        argv += ["--weights-dir", str(weights_dir)] if weights_dir else []
        argv += [] if progress else ["--no-progress"]
        code = cellcls_main([*argv, *extra])
    if code not in (0, 3):
        raise CellclsError(f"segmenting the images without masks failed (cellcls segment exit code {code}); "
                           f"see the messages above, or pass --no-segment")
    now = cache.parameter_sets()
    done = set(now[0].ids) if len(now) == 1 else set()
    return [i for i in todo if i not in done]


def _config(args: argparse.Namespace):
    from .config import load_config

    config = load_config(args.config)
    changes = {k: v for k, v in (("tta", args.tta), ("blend", args.blend), ("batch_size", args.batch_size),
                                 ("device", args.device)) if v is not None}
    return config.replace(**changes) if changes else config


def _ids(args: argparse.Namespace, sample, fold_of) -> list[str]:
    from cellcls.io import list_image_ids

    if sample is not None:
        return [row.id for row in sample]
    if fold_of is not None:
        present = set(list_image_ids(args.images))
        missing = [i for i in fold_of if i not in present]
        if missing:
            log.warning("%d image(s) of %s are not in %s (first: %s); they get no scores", len(missing), args.folds,
                        args.images, missing[0])
        return [i for i in fold_of if i in present]
    return list_image_ids(args.images)


def run_predict(args: argparse.Namespace, *, budget=None) -> "tuple[int, object]":
    """The command's work; returns (exit code, PredictSummary)."""
    import json

    from cellcls.atomic import atomic_write_text
    from cellcls.errors import CellclsError
    from cellcls.masks import MaskCache
    from cellcls.submission import read_sample_submission

    from .predict import load_models, predict_images, resolve_device

    if args.out is None and args.scores is None:
        raise CellclsError("nothing to write: give --out submission.csv and/or --scores scores.parquet")
    if args.out is not None and args.sample is None:
        raise CellclsError("--out needs --sample sample_submission.csv (IDs, order and sizes of the submission)")
    if args.oof and args.folds is None:
        raise CellclsError("--oof needs --folds folds.csv (the folds the checkpoints were trained with)")
    if args.oof and args.out is not None:
        raise CellclsError("--oof scores a train set: write --scores, not a submission (--out)")
    config = _config(args)
    fold_of = read_folds(args.folds) if args.oof else None
    sample = read_sample_submission(args.sample) if args.sample else None
    ids = _ids(args, sample, fold_of)
    progress = progress_enabled(args)
    if not args.no_segment:
        segment_missing(args.images, args.masks, ids, backend=args.segment_backend, weights_dir=args.weights_dir,
                        progress=progress)
    cache = MaskCache(args.masks)
    reader = cache.reader() if cache.parameter_sets() else None
    if reader is None:
        log.warning("mask cache %s holds no usable entry: every image gets the placeholder row", args.masks)
    device = resolve_device(config.device)
    models = load_models(args.checkpoint, config, device=device)
    summary = predict_images(ids, images_dir=args.images, reader=reader, models=models, config=config, device=device,
                             sample=sample, submission_path=args.out, scores_path=args.scores, fold_of=fold_of,
                             budget=budget, progress=progress)
    print(summary.format())
    for path, what in ((args.out, "submission"), (args.scores, "score table")):
        if path is not None:
            print(f"wrote {what} {path}")
    if args.summary:  # appears whole (temp file beside it, renamed), like the submission
        atomic_write_text(args.summary, json.dumps({
            "n_images": summary.n_images, "n_scored": summary.n_scored, "n_cells": summary.n_cells,
            "placeholders": summary.placeholders, "timings_s": summary.timings, "degraded": summary.degraded,
            "wall_s": summary.wall_s}, indent=2))
    return (3 if summary.placeholders else 0), summary


def _run(args: argparse.Namespace) -> int:
    return run_predict(args)[0]


PREDICT = Command(
    name="predict",
    help="score every cell with trained checkpoints: submission + per-cell score table (also out of fold)",
    description=DESCRIPTION,
    example=EXAMPLE,
    add_arguments=add_arguments,
    run=_run,
)
