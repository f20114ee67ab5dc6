"""Benchmark the synthetic world writer: generate_world end to end, PNG writing included.

Goal: 100 images at 512 x 512 in under 60 s on 2 CPU cores.

    python benchmarks/bench_synth.py                 # 100 images at 512, then 16-bit
    python benchmarks/bench_synth.py --n 20 --size 768

Also prints how weak the image labels are as cell labels (what a pipeline that copies the
image label to every cell gets wrong), from the generated truth, and the competition mAP
(cellcls.metric.evaluate, true cell masks) of three reference submissions on all images of
the 8-bit world: the image labels broadcast to every cell, the train class prior for every
cell, and the per-cell truth (oracle, must be 1).
"""
from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from cellcls.synth import generate_world
from cellcls.synth.difficulty import REFERENCES, world_reference_scores

GOAL_S_PER_100 = 60.0


def _run(n: int, size: int, bit_depth: int, seed: int) -> tuple[float, float, Path, tempfile.TemporaryDirectory]:
    tmp = tempfile.TemporaryDirectory(prefix="bench_synth_")
    t0, c0 = time.perf_counter(), time.process_time()
    generate_world(tmp.name, n_train=n - n // 5, n_test=n // 5, size_px=size, seed=seed, bit_depth=bit_depth, progress=False)
    return time.perf_counter() - t0, time.process_time() - c0, Path(tmp.name), tmp


def _hardness(world: Path) -> dict[str, float]:
    image_labels = {}
    for name in ("train.csv",):
        with open(world / name, newline="") as fh:
            for r in csv.DictReader(fh):
                image_labels[r["ID"]] = tuple(sorted(int(x) for x in r["Label"].split("|")))
    cells = defaultdict(list)
    with open(world / "truth" / "cells.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            if r["ID"] in image_labels:
                cells[r["ID"]].append(tuple(int(x) for x in r["labels"].split("|")))
    n_cells = sum(len(v) for v in cells.values())
    differ = sum(lab != image_labels[i] for i, v in cells.items() for lab in v)
    negative = sum(lab == (18,) and image_labels[i] != (18,) for i, v in cells.items() for lab in v)
    multi = sum(len(v) > 1 for v in image_labels.values())
    return {
        "cells": n_cells,
        "cells whose truth != image label": differ / max(n_cells, 1),
        "unstained (Negative) cells in positive images": negative / max(n_cells, 1),
        "images with >1 class": multi / max(len(image_labels), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="images per run (default 100)")
    parser.add_argument("--size", type=int, default=512, help="image side in px (default 512)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"cpu cores visible: {os.cpu_count()}  (wall times on a shared machine are provisional; cpu s = process CPU time)")
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    header = (
        f"{'images':>6} {'size':>6} {'bits':>4} {'wall s':>7} {'cpu s':>7} {'images/s':>9} {'s per 100':>9} "
        f"{'vs 60 s goal':>13}"
    )
    print(header)
    print("-" * len(header))
    hardness = None
    scores = None
    for bits in (8, 16):
        seconds, cpu, world, tmp = _run(args.n, args.size, bits, args.seed)
        per100 = seconds / args.n * 100
        ok = "ok" if per100 < GOAL_S_PER_100 else "SLOW"
        print(
            f"{args.n:>6} {args.size:>6} {bits:>4} {seconds:>7.1f} {cpu:>7.1f} {args.n / seconds:>9.2f} {per100:>9.1f} "
            f"{per100 / GOAL_S_PER_100:>7.2f}x {ok:>5}"
        )
        if hardness is None:
            hardness = _hardness(world)
            t0 = time.perf_counter()
            scores = world_reference_scores(world, splits=("train", "test"))
            score_s = time.perf_counter() - t0
        tmp.cleanup()
    print()
    print("weak labels (train split of the 8-bit run):")
    for k, v in hardness.items():
        print(f"  {k:<48} {v:.3f}" if isinstance(v, float) else f"  {k:<48} {v}")
    print()
    n_img = scores["oracle"].n_images
    print(f"reference submissions on the true cell masks, {n_img} images of the 8-bit run ({score_s:.1f} s to score):")
    header = f"{'submission':<12} {'mAP':>7} {'vs broadcast':>13} {'classes':>8}"
    print(header)
    print("-" * len(header))
    base = scores["broadcast"].map
    for name in REFERENCES:
        r = scores[name]
        n_cls = int((~np.isnan(r.per_class_ap)).sum())
        print(f"{name:<12} {r.map:>7.3f} {r.map / base:>12.2f}x {n_cls:>8}")
    neg = scores["broadcast"].per_class_ap[18], scores["prior"].per_class_ap[18]
    print(f"  (broadcast and prior tie on classes 0-17; Negative AP: broadcast {neg[0]:.3f}, prior {neg[1]:.3f})")


if __name__ == "__main__":
    main()
