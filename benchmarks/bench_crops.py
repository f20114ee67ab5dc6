"""Cell crops of one 2048² image (40 cells, 1/4-scale label map) against decoding that image from PNG.

Run: .venv/bin/python benchmarks/bench_crops.py [--repeats 7] [--quick]
Data: synthetic. A 512x512 Voronoi label map of 40 seeds (cells cut to a radius, so there is
background) with a disk nucleus at each seed, and bench_io.py's 2048x2048 4-channel sample (it
compresses about like HPA PNGs; 8-bit = its 16-bit values >> 8) written as 4 PNGs with
cellcls.io.write_image. Times: median of --repeats, in milliseconds, decode and crops timed in
alternation (a shared machine's drifts hit both alike). Crops run in the calling thread (cv2's
resize uses its default threads unless --threads); decode = cellcls.io.read_image (one thread per
channel). Goal: all crops of the image in well under its decode time (ratio < 0.5).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cellcls.crops import CROP_MODES, crop_cells
from cellcls.io import read_image, write_image
from cellcls.masks.table import cell_table

SEG, FULL, N_CELLS = 512, 2048, 40
GOAL_RATIO = 0.5


def alternating_ms(fns, repeats: int) -> list[float]:
    """Median milliseconds of each function, timed in turn (a, b, a, b, ...) so drifts hit all alike."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeats):
        for slot, fn in zip(times, fns):
            start = time.perf_counter()
            fn()
            slot.append(time.perf_counter() - start)
    return [float(np.median(slot)) * 1e3 for slot in times]


def synthetic_maps(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(cells, nuclei) uint16 at SEG x SEG: Voronoi cells of N_CELLS seeds, radius-limited."""
    from scipy import ndimage

    seeds = np.zeros((SEG, SEG), np.uint16)
    ys, xs = rng.integers(20, SEG - 20, size=(2, N_CELLS))
    seeds[ys, xs] = np.arange(1, N_CELLS + 1)
    distance, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = np.where(distance < 70, seeds[iy, ix], 0).astype(np.uint16)
    yy, xx = np.mgrid[:SEG, :SEG]
    nuclei = np.zeros_like(cells)
    for k, (y, x) in enumerate(zip(ys, xs), start=1):
        disk = (yy - y) ** 2 + (xx - x) ** 2 < 12 ** 2
        nuclei[disk & (cells == k)] = k
    return cells, nuclei


def hpa_like_image(dtype) -> np.ndarray:
    """(FULL, FULL, 4) image that compresses about like HPA PNGs (bench_io's sample), so decode times are fair."""
    from bench_io import synthetic_sample  # the sibling script; crops' cost does not depend on the content

    image = synthetic_sample(FULL)
    return image if dtype == np.uint16 else (image >> 8).astype(np.uint8)


def main() -> None:
    import cv2

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=0, help="cv2 threads for the crops' resizes (0: cv2's default)")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    if args.threads:
        cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(0)
    cells, nuclei = synthetic_maps(rng)
    table_ms, = alternating_ms([lambda: cell_table(cells, nuclei, image_id="bench", original_shape=(FULL, FULL),
                                                   mask_key="k")], repeats)
    table = cell_table(cells, nuclei, image_id="bench", original_shape=(FULL, FULL), mask_key="k")
    print(f"{len(table)} cells, median box {table.eval('y1 - y0').median():.0f} x {table.eval('x1 - x0').median():.0f} "
          f"original px, {int(table.touches_border.sum())} on the border; cell table of the image {table_ms:.1f} ms")
    print(f"{'bits':>4} {'mode':>14} {'S':>4} {'crops ms':>9} {'per cell':>9} {'decode ms':>9} "
          f"{'ratio':>6} {'goal':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, bits in ((np.uint8, 8), (np.uint16, 16)):
            image = hpa_like_image(dtype)
            write_image(tmp, f"img{bits}", image)
            assert np.array_equal(read_image(tmp, f"img{bits}"), image)
            for mode in CROP_MODES.names():
                for size in (128, 256):
                    decode_ms, crop_ms = alternating_ms([
                        lambda: read_image(tmp, f"img{bits}"),
                        lambda: crop_cells(image, cells, table, mode=mode, size=size, margin=0.1),
                    ], repeats)
                    ratio = crop_ms / decode_ms
                    verdict = "ok" if ratio < GOAL_RATIO else "MISSED"
                    print(f"{bits:4d} {mode:>14} {size:4d} {crop_ms:9.1f} {crop_ms / len(table):9.2f} "
                          f"{decode_ms:9.1f} {ratio:6.3f} {'<' + str(GOAL_RATIO):>6} {verdict}", flush=True)


if __name__ == "__main__":
    main()
