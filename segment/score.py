"""Score a mask cache against true cell maps: detection F1 at mask IoU 0.6 (the metric's threshold).

True maps come as ``{ID}_cells.png`` (uint16, 0 = background) in one folder, as the synthetic
world writes them in ``truth/``. Masks are compared at the ORIGINAL resolution (the cache entry is
upscaled by nearest neighbour), because that is where the competition scores them.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from cellcls.cli import Command, add_deprecated_alias, add_progress_option, progress_enabled

__all__ = ["score_masks", "SEGMENT_SCORE"]

log = logging.getLogger(__name__)


def score_masks(masks_dir: str | Path, truth_dir: str | Path, *, iou_threshold: float = 0.6,
                progress: bool = True) -> dict:
    """Pooled and per-image cell F1 of every "ok" cache entry that has a truth map.

    Returns ``{"tp", "fp", "fn", "precision", "recall", "f1", "n_images", "per_image": {ID: f1}}``.
    Raises CacheError when the cache holds no usable entry with a truth map, ParameterError (a
    ValueError) when ``iou_threshold`` is not in (0, 1].
    """
    if not 0.0 < iou_threshold <= 1.0:  # also False for NaN
        from cellcls.errors import ParameterError

        raise ParameterError(f"iou_threshold must be a number in (0, 1], got {iou_threshold!r}")
    import cv2
    from tqdm import tqdm

    from cellcls.errors import CacheError, ImageError
    from cellcls.masks import MaskCache

    from .evaluate import cell_f1

    cache = MaskCache(masks_dir).reader()  # refuses a missing, empty or mixed cache
    ids = cache.ids()
    truth_dir = Path(truth_dir)
    totals = {"tp": 0.0, "fp": 0.0, "fn": 0.0}
    per_image: dict[str, float] = {}
    for image_id in tqdm(ids, desc="scoring masks", unit="img", disable=not progress):
        path = truth_dir / f"{image_id}_cells.png"
        if not path.exists():
            log.debug("no truth map %s; %s not scored", path, image_id)
            continue
        truth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if truth is None:
            raise ImageError(f"truth map {path} (ID {image_id}) cannot be read")
        pred = cache.read(image_id, upscale=True).cells
        if pred.shape != truth.shape:
            raise CacheError(f"ID {image_id}: cached masks upscale to {pred.shape} but the truth map {path} "
                             f"is {truth.shape}")
        scores = cell_f1(pred, truth, iou_threshold=iou_threshold)
        per_image[image_id] = scores["f1"]
        for key in totals:
            totals[key] += scores[key]
    if not per_image:
        raise CacheError(f"no cache entry in {masks_dir} has a truth map {truth_dir}/<ID>_cells.png to score")
    tp, fp, fn = totals["tp"], totals["fp"], totals["fn"]
    return {
        **{k: int(v) for k, v in totals.items()},
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0,
        "n_images": len(per_image),
        "per_image": per_image,
    }


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--masks", required=True, metavar="MASKDIR", help="mask cache written by 'cellcls segment'")
    parser.add_argument("--truth", required=True, metavar="DIR", help="folder of true maps {ID}_cells.png")
    iou = parser.add_argument("--iou-threshold", type=float, default=0.6,
                              help="mask IoU for a match, inclusive, in (0, 1] (default 0.6, as the metric)")
    add_deprecated_alias(parser, "--iou", iou, since="0.1.0", removed_in="0.3")
    parser.add_argument("--json", metavar="OUT", help="also write the scores as JSON")
    add_progress_option(parser)


def _run(args: argparse.Namespace) -> int:
    import json

    result = score_masks(args.masks, args.truth, iou_threshold=args.iou_threshold, progress=progress_enabled(args))
    worst = sorted(result["per_image"].items(), key=lambda kv: kv[1])[:3]
    print(f"cells: {result['tp']} matched, {result['fp']} false, {result['fn']} missed over "
          f"{result['n_images']} images")
    print(f"precision {result['precision']:.3f}  recall {result['recall']:.3f}  F1 {result['f1']:.3f} "
          f"(IoU >= {args.iou_threshold})")
    print("worst images: " + ", ".join(f"{i} {f:.2f}" for i, f in worst))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


SEGMENT_SCORE = Command(
    name="segment-score",
    help="score cached cell masks against true cell maps (F1 at IoU 0.6)",
    description=(
        "Compare every cached segmentation with its true cell map at the original resolution and report "
        "detection precision, recall and F1 at mask IoU >= 0.6 (one-to-one matching). The synthetic world "
        "writes true maps to DIR/truth."
    ),
    example="cellcls segment-score --masks data/synth/masks/test --truth data/synth/truth --json seg_score.json",
    add_arguments=_add_arguments,
    run=_run,
)
