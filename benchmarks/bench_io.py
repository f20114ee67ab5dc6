"""How fast the data layer reads HPA-sized samples (4 channels of 2048 x 2048).

Run: ``.venv/bin/python benchmarks/bench_io.py [--size 2048] [--repeat 5]``

Writes one synthetic sample (cells drawn as ellipses, patchy protein stain, noise: it
compresses about like HPA PNGs) as 8-bit and 16-bit PNG and 16-bit TIFF in a temporary
folder, then times each way of reading it. Ratios are against the serial full decode of the
same file type. "max err" is the largest difference, in grey levels, from cv2.INTER_AREA of
the full-size decode (the reference :func:`cellcls.io.read_image_resized` promises to equal).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cellcls import io
from cellcls.dedup import HASH_CHANNELS, dct_signature
from cellcls.stats import image_moments


def synthetic_sample(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 4) uint16 HPA-like field."""
    rng = np.random.default_rng(seed)
    planes = np.zeros((4, size, size), np.float32)
    scale = size / 128
    for _ in range(30):
        cx, cy = (int(v) for v in rng.uniform(0, size, 2))
        r = rng.uniform(6, 14) * scale
        cell = np.zeros((size, size), np.float32)
        cv2.ellipse(cell, (cx, cy), (int(2 * r), int(1.5 * r)), rng.uniform(0, 180), 0, 360, 1.0, -1)
        nucleus = np.zeros((size, size), np.float32)
        cv2.circle(nucleus, (cx, cy), int(0.8 * r), 1.0, -1)
        speckle = cv2.GaussianBlur((rng.random((size, size)) < 0.2).astype(np.float32), (0, 0), 2)
        planes[0] += cell * rng.uniform(0.2, 0.5)
        planes[1] += cell * speckle * rng.uniform(0.2, 1.0)
        planes[2] += nucleus * rng.uniform(0.4, 0.9)
        planes[3] += cell * rng.uniform(0.2, 0.5)
    image = np.stack([cv2.GaussianBlur(p, (0, 0), 2) for p in planes], -1)
    image += rng.normal(0.03, 0.01, image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 65535).astype(np.uint16)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up (page cache, thread pool)
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return float(np.median(best))


def reduced_decode(folder: Path, image_id: str, factor: int) -> np.ndarray:
    flag = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[factor]
    paths = io.channel_paths(folder, image_id)
    return np.stack([cv2.imread(str(p), flag | cv2.IMREAD_ANYDEPTH) for p in paths.values()], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    image16 = synthetic_sample(args.size)
    image8 = np.round(image16 / 257.0).astype(np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        io.write_image(folder, "png8", image8)
        io.write_image(folder, "png16", image16)
        io.write_image(folder, "tif16", image16, ext="tif")
        for image_id in ("png8", "png16", "tif16"):
            mb = sum(p.stat().st_size for p in io.channel_paths(folder, image_id).values()) / 1e6
            full = io.read_image(folder, image_id)
            base = timed(lambda: io.read_image(folder, image_id, threads=1), args.repeat)
            rows.append((image_id, f"read_image threads=1 ({mb:.1f} MB)", base, base, "exact"))
            t = timed(lambda: io.read_image(folder, image_id), args.repeat)
            rows.append((image_id, "read_image threads=4", t, base, "exact"))
            t = timed(lambda: io.read_image_resized(folder, image_id, scale=0.25), args.repeat)
            rows.append((image_id, "read_image_resized scale=0.25", t, base, "0 (equal)"))
            if image_id.startswith("png"):
                for factor in (2, 4):
                    t = timed(lambda: reduced_decode(folder, image_id, factor), args.repeat)
                    small = reduced_decode(folder, image_id, factor).astype(np.float64)
                    h, w = small.shape[:2]
                    ref = np.stack([cv2.resize(full[..., c], (w, h), interpolation=cv2.INTER_AREA)
                                    for c in range(4)], -1).astype(np.float64)
                    # IMREAD_REDUCED_GRAYSCALE may drop 16-bit to 8-bit: compare at its depth
                    if full.dtype == np.uint16 and small.max() <= 255:
                        ref = ref / 257.0
                    rows.append((image_id, f"cv2 IMREAD_REDUCED_{factor} (rejected)", t, base,
                                 f"{np.abs(small - ref).max():.0f} levels"))
            t = timed(lambda: io.image_shape(folder, image_id), args.repeat)
            rows.append((image_id, "image_shape (headers)", t, base, "-"))
            t = timed(lambda: image_moments(full), args.repeat)
            rows.append((image_id, "stats: image_moments (decoded)", t, base, "exact"))
            t = timed(lambda: dct_signature(io.read_image(folder, image_id, channels=HASH_CHANNELS)), args.repeat)
            rows.append((image_id, "dedup: read 2 channels + hash", t, base, "-"))
    print(f"{args.size}x{args.size} x 4 channels, median of {args.repeat}")
    print(f"{'file':<6} {'operation':<42} {'ms':>9} {'x serial':>9}  max err")
    for image_id, what, seconds, base, err in rows:
        print(f"{image_id:<6} {what:<42} {seconds * 1e3:9.2f} {base / seconds:9.2f}  {err}")


if __name__ == "__main__":
    main()
