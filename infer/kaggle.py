"""``python -m infer.kaggle``: the offline Kaggle notebook, end to end, in one command.

The only module that knows Kaggle's folders. It never touches the network (nothing in cellcls
downloads; the hub libraries are told to stay offline before anything imports them):

1. finds the checkpoints (``*.ckpt``) and the HPA segmentation weights (``dpn_unet_nuclei_v1.pth``,
   ``dpn_unet_cell_3ch_v1.pth``) in the attached datasets ``INPUT_ROOT/*/`` and says what it found;
2. segments the test images into ``SCRATCH/masks`` (``cellcls segment``: the HPA networks, on the GPU
   when there is one, when both weight files were found; else the classical backend, with a loud
   warning: its masks match the ground truth far less well);
3. scores every cell (:mod:`infer.predict`) with all checkpoints, logging progress and an ETA
   against ``--budget-hours`` (9 h on Kaggle); when the projected finish passes the budget it sheds
   work (TTA first, then half the models);
4. writes ``--out`` (every sample ID, bad images with the empty placeholder row, named in the log and
   in ``SCRATCH/summary.json``) and runs ``cellcls check-submission`` on it.

Defaults are Kaggle's paths, each overridable::

    python -m infer.kaggle                                  # on Kaggle
    python -m infer.kaggle --input-root /data/input --out sub.csv --scratch /tmp/hpa --budget-hours 1
"""
from __future__ import annotations

import os

for _name, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("NO_ALBUMENTATIONS_UPDATE", "1"),
                      ("WANDB_MODE", "offline")):
    os.environ.setdefault(_name, _value)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

__all__ = ["COMPETITION", "SEGMENTATION_WEIGHTS", "Found", "discover", "main", "run"]

log = logging.getLogger("infer.kaggle")

COMPETITION = "hpa-single-cell-image-classification"
SEGMENTATION_WEIGHTS = ("dpn_unet_nuclei_v1.pth", "dpn_unet_cell_3ch_v1.pth")
_BANNER = "!" * 78


@dataclass
class Found:
    """What the attached datasets hold."""

    checkpoints: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    weights_dir: Path | None = None

    def describe(self) -> str:
        lines = [f"checkpoints: {len(self.checkpoints)}"]
        lines += [f"  {p}" for p in self.checkpoints]
        lines += [f"  skipped {p}: {why}" for p, why in self.skipped]
        lines.append(f"segmentation weights: {self.weights_dir or 'not found (classical backend)'}")
        return "\n".join(lines)


def _datasets(input_root: Path, competition_dir: Path) -> list[Path]:
    if not input_root.is_dir():
        return []
    skip = competition_dir.resolve()
    return sorted(d for d in input_root.iterdir() if d.is_dir() and d.resolve() != skip)


def _pick_checkpoints(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """In a folder holding ``best-*.ckpt`` files, ``last.ckpt`` is the same run: keep the best ones."""
    chosen, skipped = [], []
    folders: dict[Path, list[Path]] = {}
    for path in paths:
        folders.setdefault(path.parent, []).append(path)
    for folder, files in sorted(folders.items()):
        best = [p for p in files if p.name.startswith("best")]
        for path in sorted(files):
            if best and path.name == "last.ckpt":
                skipped.append((path, f"same run as {best[0].name}"))
            else:
                chosen.append(path)
    return chosen, skipped


def discover(input_root: Path, competition_dir: Path) -> Found:
    """Checkpoints and segmentation weights under ``input_root/*/`` (the competition folder excluded)."""
    from cellcls.checkpoints import read_inference_meta
    from cellcls.errors import CellclsError

    found = Found()
    ckpts: list[Path] = []
    for dataset in _datasets(input_root, competition_dir):
        ckpts += sorted(dataset.rglob("*.ckpt"))
        if found.weights_dir is None:
            for nuclei in sorted(dataset.rglob(SEGMENTATION_WEIGHTS[0])):
                if (nuclei.parent / SEGMENTATION_WEIGHTS[1]).is_file():
                    found.weights_dir = nuclei.parent
                    break
    chosen, found.skipped = _pick_checkpoints(ckpts)
    for path in chosen:
        try:
            read_inference_meta(path)
        except CellclsError as exc:
            found.skipped.append((path, str(exc)))
            continue
        found.checkpoints.append(path)
    return found


def _segment(args: argparse.Namespace, test_dir: Path, sample: Path, masks: Path, found: Found) -> None:
    from cellcls.cli import main as cellcls_main
    from cellcls.errors import CellclsError

    if found.weights_dir is not None:
        backend = ["--backend", "hpa", "--weights-dir", str(found.weights_dir), "--device", args.device]
        log.info("segmenting with the HPA networks (weights in %s)", found.weights_dir)
    else:
        backend = ["--backend", "classical"]
        log.warning("%s\nNO HPA SEGMENTATION WEIGHTS FOUND under %s/*/ (%s): segmenting with the CLASSICAL "
                    "backend.\nIts masks match the HPA ground truth far less well; attach a dataset with both "
                    "files for a real submission.\n%s", _BANNER, args.input_root, ", ".join(SEGMENTATION_WEIGHTS),
                    _BANNER)
    argv = ["segment", "--images", str(test_dir), "--out", str(masks), "--ids", str(sample), *backend]
    code = cellcls_main(argv + ([] if args.progress else ["--no-progress"]))
    if code not in (0, 3):
        raise CellclsError(f"segmentation failed (cellcls segment exit code {code})")


def run(args: argparse.Namespace) -> int:
    """The whole notebook; returns the exit code (0 = a submission that passes check-submission)."""
    from cellcls.atomic import atomic_write_text
    from cellcls.cli import main as cellcls_main
    from cellcls.errors import CellclsError
    from cellcls.masks import MaskCache
    from cellcls.submission import read_sample_submission

    from .config import load_config
    from .predict import TimeBudget, load_models, predict_images, resolve_device

    start = time.monotonic()
    budget = TimeBudget(seconds=args.budget_hours * 3600.0, start=start)
    competition = args.competition_dir or args.input_root / COMPETITION
    test_dir, sample_path = competition / "test", competition / "sample_submission.csv"
    if not sample_path.is_file():
        raise CellclsError(f"no {sample_path}: --competition-dir must hold test/ and sample_submission.csv "
                           f"(on Kaggle: add the competition data, {COMPETITION})")
    found = discover(args.input_root, competition)
    print(f"input root {args.input_root}: competition data {competition}\n{found.describe()}", flush=True)
    checkpoints = [Path(p) for p in args.checkpoint] if args.checkpoint else found.checkpoints
    if not checkpoints:
        raise CellclsError(f"no usable checkpoint (*.ckpt saved by `cellcls train`) under {args.input_root}/*/; "
                           "attach the dataset that holds them")
    args.scratch.mkdir(parents=True, exist_ok=True)
    masks = args.scratch / "masks"
    _segment(args, test_dir, sample_path, masks, found)
    log.info("segmentation done after %.0f s; %.2f h of the %.1f h budget left", time.monotonic() - start,
             budget.left() / 3600, args.budget_hours)
    config = load_config(args.config)
    cache = MaskCache(masks)
    reader = cache.reader() if cache.parameter_sets() else None
    device = resolve_device(args.device if args.device != "auto" else config.device)
    models = load_models(checkpoints, config, device=device)
    sample = read_sample_submission(sample_path)
    summary = predict_images([row.id for row in sample], images_dir=test_dir, reader=reader, models=models,
                             config=config, device=device, sample=sample, submission_path=args.out,
                             scores_path=args.scratch / "scores.parquet", budget=budget, progress=args.progress)
    print(summary.format(), flush=True)
    report = {"checkpoints": [str(p) for p in checkpoints], "weights_dir": str(found.weights_dir or ""),
              "placeholders": summary.placeholders, "degraded": summary.degraded, "n_cells": summary.n_cells,
              "timings_s": summary.timings, "wall_s": time.monotonic() - start}
    atomic_write_text(args.scratch / "summary.json", json.dumps(report, indent=2))  # whole, like the submission
    code = cellcls_main(["check-submission", str(args.out), "--sample", str(sample_path)])
    print(f"submission {args.out}: {'passes' if code == 0 else 'FAILS'} check-submission; "
          f"{len(summary.placeholders)} placeholder row(s); {time.monotonic() - start:.0f} s in all", flush=True)
    return 0 if code == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infer.kaggle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-root", type=Path, default=Path("/kaggle/input"),
                        help="attached datasets, one folder each (default /kaggle/input)")
    parser.add_argument("--competition-dir", type=Path, default=None,
                        help=f"folder with test/ and sample_submission.csv (default INPUT_ROOT/{COMPETITION})")
    parser.add_argument("--out", type=Path, default=Path("/kaggle/working/submission.csv"))
    parser.add_argument("--scratch", type=Path, default=Path("/kaggle/temp"), help="masks, scores, summary")
    parser.add_argument("--budget-hours", type=float, default=9.0, help="time limit of the whole run (default 9)")
    parser.add_argument("--checkpoint", action="append", help="use these checkpoints instead of the ones found")
    parser.add_argument("--config", type=Path, help="infer config YAML (TTA, blend, batch size)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log and tracebacks")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from cellcls.errors import CellclsError

    if not args.budget_hours > 0:
        print("error: --budget-hours must be > 0", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (CellclsError, OSError) as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
