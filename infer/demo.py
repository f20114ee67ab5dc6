"""``make demo``: the whole pipeline, as far as it exists, on the built-in synthetic world.

Every step is a ``cellcls`` command run through the plugin CLI, so what the demo does is what a
user would type. It writes into one folder and ends by listing what it made and the scores.

    python -m infer.demo --out demo_out [--train 48] [--test 16] [--size 512] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from cellcls.cli import main as cellcls_main

__all__ = ["run_demo", "main"]


def _step(title: str, argv: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> None:
    print(f"\n== {title}\n$ cellcls {' '.join(argv)}", flush=True)
    t0 = time.perf_counter()
    code = cellcls_main(argv)
    if code not in ok_codes:
        raise SystemExit(f"demo step '{title}' failed with exit code {code}")
    print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def run_demo(out: Path, *, n_train: int, n_test: int, size_px: int, seed: int) -> dict:
    """Run every step into ``out``; returns the paths made and the scores."""
    world = out / "world"
    masks = out / "masks" / "test"
    quiet = ["--no-progress"]
    _step("synthetic HPA-like world with per-cell truth",
          ["synth", "--out", str(world), "--train", str(n_train), "--test", str(n_test), "--size", str(size_px),
           "--seed", str(seed), "--preview", *quiet])
    _step("multilabel stratified folds, proteins kept within a fold",
          ["folds", "--labels", str(world / "train.csv"), "--k", "5", "--seed", str(seed), "--group-col", "group",
           "--out", str(out / "folds.csv")])
    _step("per-channel mean/std over train+test",
          ["stats", "--images", str(world / "train"), str(world / "test"), "--out", str(out / "stats.json")])
    _step("near-duplicate search",
          ["dedup", "--images", str(world / "train"), str(world / "test"), "--out", str(out / "dups.csv")])
    # Default scale: the world's images are quarter-size fields already (world.json: scale 0.25),
    # so --scale auto segments them as they are, at 1/4 of HPA's resolution.
    _step("cell segmentation (HPA networks if their weights are found, else the classical backend)",
          ["segment", "--images", str(world / "test"), "--out", str(masks), *quiet])
    _step("segmentation against the true cell maps",
          ["segment-score", "--masks", str(masks), "--truth", str(world / "truth"),
           "--json", str(out / "segment_score.json"), *quiet])
    submission = out / "submission.csv"
    _step("baseline submission: every cell gets the train class frequencies",
          ["prior-submission", "--masks", str(masks), "--sample", str(world / "sample_submission.csv"),
           "--labels", str(world / "train.csv"), "--out", str(submission), *quiet])
    _step("submission check", ["check-submission", str(submission), "--sample", str(world / "sample_submission.csv")])
    _step("competition metric: mAP at mask IoU 0.6",
          ["evaluate", "--solution", str(world / "solution.csv"), "--submission", str(submission),
           "--json", str(out / "score.json")])
    seg = json.loads((out / "segment_score.json").read_text())
    score = json.loads((out / "score.json").read_text())
    return {
        "world": world, "preview": world / "preview.png", "folds": out / "folds.csv", "stats": out / "stats.json",
        "dups": out / "dups.csv", "masks": masks, "submission": submission,
        "segment_f1": seg["f1"], "map": score["map"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infer.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder to write into (default demo_out)")
    parser.add_argument("--train", type=int, default=48, help="synthetic train images (default 48)")
    parser.add_argument("--test", type=int, default=16, help="synthetic test images (default 16)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    made = run_demo(args.out, n_train=args.train, n_test=args.test, size_px=args.size, seed=args.seed)
    print(f"\n== demo finished in {time.perf_counter() - t0:.0f} s. It made:")
    print(f"  {made['world']}/            synthetic world: train/, test/, train.csv, sample_submission.csv, truth/, "
          f"solution.csv")
    print(f"  {made['preview']}  one image per class, to look at")
    print(f"  {made['folds']}, {made['stats']}, {made['dups']}")
    print(f"  {made['masks']}/      cached cell masks + manifest.csv")
    print(f"  {made['submission']}    valid submission (prior baseline)")
    print(f"Segmentation F1 at IoU 0.6: {made['segment_f1']:.3f}.  Prior-baseline mAP: {made['map']:.3f} "
          f"(the floor a trained model must beat; training and cell scoring arrive with later issues).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
