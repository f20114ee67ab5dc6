"""``cellcls segment`` / ``python -m segment``: segment every cell of a folder of HPA images.

Top-level imports stay light (argparse, cellcls.cli); numpy, torch and the backends are
imported inside :func:`run`.
"""
from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from cellcls.cli import Bounded, Command, progress_enabled

if TYPE_CHECKING:  # annotations only: the command module stays light to import
    from segment.pipeline import SegmentSummary
    from segment.scales import ScaleChoice

__all__ = ["SEGMENT", "add_arguments", "execution_defaults", "run"]

log = logging.getLogger(__name__)

DESCRIPTION = """\
Segment every cell of the images in --images and store label maps (cells and nuclei, at the
segmentation scale) in the mask cache --out, one entry per image ID plus manifest.csv.

Backends: 'hpa' = the HPA-Cell-Segmentation networks + label_cell (needs the two weight files,
see --weights-dir); 'classical' = thresholds + watershed, no weights; 'auto' = hpa when both
weight files are found, else classical (the choice and the reason are printed).

Scale: by default (--scale auto) the networks see the images at 1/4 of HPA's full resolution,
as in the 2021 solutions, whatever the images' own pixel size: Kaggle 2048^2 images are resized
by 0.25 (to 512^2), the synthetic world's quarter-size images (world.json beside them) by 1.
--scale F resizes by F instead. --image-scale (rarely needed) is the pixel size of the images
relative to real HPA images when it is not 1 and no world.json says it (e.g. HPA-like images at
another magnification). Pixel cut-offs are scaled by scale x image-scale. The log says at which
resolution the run segments. When most images have no cells, or the typical cell is far smaller
or larger than HPA's at that resolution (scales that do not fit the images), the run ends with a
WARNING naming the likely cause.

Re-running skips images already cached with the same backend, weights and parameters, and redoes
missing, failed, changed or corrupt entries (--overwrite redoes all). A killed run loses only
the images in flight. An unreadable image is logged, recorded as failed in the manifest, and
skipped.

Many GPUs or nodes: --devices N [--num-nodes M] runs the same work under PyTorch Lightning
(Trainer.predict, DDP); each rank segments and writes its share of the IDs, rank 0 writes the
manifest.

Exit codes: 0 = every image segmented (or already cached); 3 = finished, but some images failed
(see the log and manifest.csv); 1 = nothing done (bad option, missing weights...); 2 = usage.
"""

EXAMPLE = """\
cellcls segment --images data/test --out masks/test --ids data/sample_submission.csv
cellcls segment --images data/train --out masks/train --backend hpa --weights-dir weights/ --device cuda --batch-size 24 --tta
cellcls segment --images synth/train --out masks/synth --backend classical   # world.json: no resize
cellcls segment --images data/test --out masks/test --scale 0.5      # segment at 1/2 of HPA's resolution
cellcls segment --images data/test --out masks/test --backend hpa --device cuda --devices 4   # 4 GPUs, DDP
python -m segment --images data/test --out masks/test        # the same command, standalone
"""


# Ranges are checked after parsing (cellcls.cli.Bounded): "--scale 0" is one error line and exit 1.
_POSITIVE_INT = Bounded(int, low=1)
_NON_NEGATIVE_INT = Bounded(int, low=0)
_AUTO_OR_POSITIVE_FLOAT = Bounded(float, low=0, low_inclusive=False, words=("auto",))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("input and output")
    io.add_argument("--images", required=True, metavar="DIR",
                    help="folder of {ID}_{red,green,blue,yellow}.png|tif images")
    io.add_argument("--out", required=True, metavar="MASKDIR", help="mask cache folder (created)")
    io.add_argument("--ids", metavar="CSV",
                    help="segment only the IDs in this CSV's ID column (train.csv, sample_submission.csv); "
                    "default: every complete image in --images")
    io.add_argument("--overwrite", action="store_true", help="redo images that are already cached")

    method = parser.add_argument_group("method")
    method.add_argument("--backend", default="auto", choices=("auto", "hpa", "classical"),
                        help="segmentation backend (default: auto = hpa if its weights are found, else classical)")
    method.add_argument("--weights-dir", metavar="D",
                        help="folder with dpn_unet_nuclei_v1.pth and dpn_unet_cell_3ch_v1.pth "
                        "(also searched: $CELLCLS_SEG_WEIGHTS, ~/.cache/cellcls/hpacellseg)")
    method.add_argument("--scale", type=_AUTO_OR_POSITIVE_FLOAT, default="auto", metavar="auto|F",
                        help="resize factor applied to the images before segmentation (default: auto = "
                        "0.25 / image scale, so that the networks see 1/4 of HPA's full resolution: "
                        "0.25 for Kaggle images, 1 for the quarter-size synthetic world)")
    method.add_argument("--image-scale", type=_AUTO_OR_POSITIVE_FLOAT, default="auto", metavar="auto|F",
                        help="rarely needed: pixel size of the images relative to real HPA images "
                        "(default: auto = world.json's scale for a synthetic world, else 1)")
    method.add_argument("--tta", nargs="?", const="d4", default="none", metavar="NAME",
                        help="test-time augmentation of the cell network: --tta alone = d4 (8 flips/"
                        "transposes); also 'flips' (4) or 'none' (default). hpa backend only")

    run = parser.add_argument_group("execution")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                     help="where the networks run (default: auto = cuda if available)")
    run.add_argument("--batch-size", type=_POSITIVE_INT, default=None, metavar="B",
                     help="images per forward pass (default: 8 on a GPU, the 2021 solutions used ~24; "
                     "1 on CPU, where bigger batches only add memory traffic)")
    run.add_argument("--num-workers", type=_NON_NEGATIVE_INT, default=None, metavar="W",
                     help="image-decoding processes (default: min(4, CPU count); 0 = in the main process, "
                     "the default for the hpa backend on CPU: decoding is ~3%% of the work there, and "
                     "forked workers make every write to the network's large heap a copy-on-write fault)")
    run.add_argument("--label-workers", type=_NON_NEGATIVE_INT, default=0, metavar="L",
                     help="processes for labelling + cache writes, overlapping the network (default: 0 = "
                     "in the main process; try 2-4 with a GPU). Not used with --devices/--num-nodes > 1")
    run.add_argument("--devices", type=_POSITIVE_INT, default=1, metavar="N",
                     help="devices (GPUs) per node; > 1 runs under PyTorch Lightning with DDP")
    run.add_argument("--num-nodes", type=_POSITIVE_INT, default=1, metavar="M",
                     help="nodes; > 1 runs under PyTorch Lightning with DDP")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


def execution_defaults(
    backend: str, device: str, batch_size: int | None, num_workers: int | None
) -> tuple[int, int]:
    """(batch size, decoding workers): the user's values, or the defaults for this backend and device.

    The networks on CPU: batch 1 and decoding in the main process (measured in
    benchmarks/bench_segment.py: batch 8 and forked workers were both slower on 2 cores). Otherwise
    batch 8 and min(4, CPU count) workers.
    """
    import os

    network_on_cpu = backend == "hpa" and device == "cpu"
    if num_workers is None:
        num_workers = 0 if network_on_cpu else min(4, os.cpu_count() or 1)
    if batch_size is None:
        batch_size = 1 if network_on_cpu else 8
    return batch_size, num_workers


def run(args: argparse.Namespace) -> int:
    from segment.backends import build_backend, resolve_backend
    from segment.pipeline import read_ids_csv, resolve_device, resolve_image_scale, run_segmentation
    from segment.scales import resolve_scale

    image_scale, source = resolve_image_scale(args.images, args.image_scale)
    scales = resolve_scale(args.scale, image_scale=image_scale, image_scale_from=source)
    log.info("%s", scales.sentence())
    name, reason = resolve_backend(args.backend, weights_dir=args.weights_dir)
    if args.backend == "auto":  # the user did not choose: say which one runs and why
        print(f"backend: {reason}")
    else:
        log.info("backend: %s", reason)
    if name != "hpa" and args.tta != "none":
        log.warning("--tta applies to the hpa backend only; ignored for %s", name)
    device = resolve_device(args.device)
    if name == "hpa" and device == "cuda":
        import torch

        if not torch.cuda.is_available():
            from cellcls.errors import CellclsError

            raise CellclsError("--device cuda, but torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                               "use --device cpu, or --device auto to take a GPU only when there is one")
    if device == "cpu":
        from cellcls.runtime import retain_freed_memory

        retain_freed_memory()  # ~1.2x on CPU forwards; see cellcls.runtime
    ids = read_ids_csv(args.ids) if args.ids else None
    batch_size, num_workers = execution_defaults(name, device, args.batch_size, args.num_workers)
    log.info("batch size %d, %d decoding worker(s)", batch_size, num_workers)
    backend = build_backend(name, scale=scales.scale, image_scale=image_scale, weights_dir=args.weights_dir,
                            device=device, batch_size=batch_size, tta=args.tta)
    common = dict(ids=ids, batch_size=batch_size, num_workers=num_workers, overwrite=args.overwrite,
                  progress=progress_enabled(args))
    if args.devices > 1 or args.num_nodes > 1:
        from segment.lightning import run_segmentation_lightning

        summary = run_segmentation_lightning(args.images, args.out, backend, devices=args.devices,
                                             num_nodes=args.num_nodes, accelerator=device, **common)
        if summary is None:  # not global rank 0: rank 0 reports
            return 0
    else:
        summary = run_segmentation(args.images, args.out, backend, label_workers=args.label_workers, **common)
    _check_cells(summary, scales, params_hash=backend.params_hash(), ids=ids)
    print(summary.format())
    return summary.exit_code


def _check_cells(summary: "SegmentSummary", scales: "ScaleChoice", *, params_hash: str,
                 ids: list[str] | None) -> None:
    """Measure the run's cells, store them and any warnings in ``summary`` and log the warnings."""
    from segment.scales import check_cell_sizes, measure_cell_sizes

    summary.cell_sizes = measure_cell_sizes(summary.cache_dir, params_hash=params_hash, ids=ids)
    summary.warnings = check_cell_sizes(summary.cell_sizes, scales)
    for warning in summary.warnings:
        log.warning("%s", warning)


SEGMENT = Command(
    name="segment",
    help="segment cells into a mask cache (HPA networks or a classical fallback)",
    description=DESCRIPTION,
    example=EXAMPLE,
    add_arguments=add_arguments,
    run=run,
)
