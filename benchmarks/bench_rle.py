"""Benchmark: mask strings of every cell of one image (cellcls.rle.encode_label_map vs naive).

Naive = what most notebooks did: upscale the label map with cv2 (nearest), then for each
cell build a full-frame boolean mask, copy it to Fortran order and encode it. Fast = run
space (one pass over the column-major label runs, per-cell counts, pycocotools compresses).
Both produce identical strings (checked here on every case).

    python benchmarks/bench_rle.py [--repeats 5] [--quick]

Goal (issue 4): all cells of a 2048² image with 40 cells in <= 50 ms on one core.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from cellcls import rle  # noqa: E402

cv2.setNumThreads(1)


def make_label_map(size: int, n_cells: int, *, seed: int = 0, fill: float = 0.8) -> np.ndarray:
    """Voronoi-like cells: (size, size) uint16 label map, cells 1..n_cells, ~`fill` of the frame covered.

    Every pixel goes to its nearest seed if closer than a cut-off radius, else background 0.
    """
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, size, (n_cells, 2))
    radius = np.sqrt(fill * size * size / (np.pi * n_cells)) * 1.3
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.uint16)
    for k, (sy, sx) in enumerate(seeds, start=1):
        wobble = 1.0 + 0.15 * np.sin(np.arctan2(yy - sy, xx - sx) * rng.integers(2, 6))
        d = np.hypot(yy - sy, xx - sx) / wobble
        closer = (d < best) & (d < radius)
        labels[closer] = k
        best[closer] = d[closer]
    return labels


def naive_encode(labels: np.ndarray, out_shape: tuple[int, int]) -> dict[int, str]:
    big = cv2.resize(labels, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_NEAREST)
    return {int(k): rle.encode(big == k) for k in np.unique(big) if k}


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="fewer cases and repeats")
    args, _ = parser.parse_known_args()
    if args.quick:
        args.repeats = 2
    cases = [  # (label-map size, original size, cells)
        (512, 2048, 40),
        (432, 1728, 40),
        (768, 3072, 40),
        (2048, 2048, 40),
        (512, 2048, 120),
    ]
    if args.quick:
        cases = cases[:1] + cases[3:4]
    goal_ms = 50.0
    print(f"{'labels':>8} {'original':>9} {'cells':>5} {'naive ms':>9} {'run-space ms':>13} {'speed-up':>9} "
          f"{'/ goal 50 ms':>12}")
    for src, dst, cells in cases:
        if src == dst:
            labels = cv2.resize(make_label_map(512, cells), (dst, dst), interpolation=cv2.INTER_NEAREST)
        else:
            labels = make_label_map(src, cells)
        shape = (dst, dst)
        fast = rle.encode_label_map(labels, out_shape=shape)
        assert fast == naive_encode(labels, shape), "run-space strings differ from the naive ones"
        t_naive = best_of(lambda: naive_encode(labels, shape), max(1, args.repeats // 2))
        t_fast = best_of(lambda: rle.encode_label_map(labels, out_shape=shape), args.repeats)
        print(f"{src:>7}² {dst:>8}² {len(fast):>5} {t_naive * 1e3:>9.1f} {t_fast * 1e3:>13.1f} "
              f"{t_naive / t_fast:>8.1f}x {t_fast * 1e3 / goal_ms:>12.2f}")


if __name__ == "__main__":
    main()
