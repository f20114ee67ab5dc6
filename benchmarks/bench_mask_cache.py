"""Storage format of the mask cache: np.savez_compressed vs 16-bit PNG, and the cache's per-entry costs.

Run: .venv/bin/python benchmarks/bench_mask_cache.py [--repeats 30]
Data: the real 1/4-scale label maps of tests/data/label_cell_fixture.npz (cells + nuclei per image).
Sizes are per entry (both maps); times are per entry, best of --repeats, in milliseconds.
"""
from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from cellcls.masks import MaskCache

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "label_cell_fixture.npz"


def best_ms(fn, repeats: int) -> tuple[float, object]:
    result, times = fn(), []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3, result


def npz_codec(cells, nuclei):
    def encode():
        buffer = io.BytesIO()
        np.savez_compressed(buffer, cells=cells, nuclei=nuclei)
        return buffer.getvalue()

    def decode(blob):
        with np.load(io.BytesIO(blob)) as archive:
            return archive["cells"], archive["nuclei"]

    return encode, decode, len


def png_codec(cells, nuclei, level):
    def encode():
        return [cv2.imencode(".png", a, [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes() for a in (cells, nuclei)]

    def decode(blobs):
        return [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED) for b in blobs]

    return encode, decode, lambda blobs: sum(map(len, blobs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with np.load(FIXTURE) as fixture:
        cases = [(name, fixture[f"{name}_quarter_cell_label"], fixture[f"{name}_quarter_nuclei_label"])
                 for name in ("case1", "case2", "case3", "case4")]

    formats = {"npz": None, "png1": 1, "png3": 3, "png9": 9}
    print("format comparison (ratios = format / npz)")
    print(f"{'case':6} {'shape':>10} {'cells':>5} {'format':>6} {'KB':>6} {'enc ms':>7} {'dec ms':>7}"
          f" {'KB x':>6} {'enc x':>6} {'dec x':>6}")
    for name, cells, nuclei in cases:
        base = None
        for label, level in formats.items():
            encode, decode, size = npz_codec(cells, nuclei) if level is None else png_codec(cells, nuclei, level)
            enc_ms, blob = best_ms(encode, args.repeats)
            dec_ms, (back_cells, back_nuclei) = best_ms(lambda: decode(blob), args.repeats)
            assert np.array_equal(back_cells, cells) and np.array_equal(back_nuclei, nuclei)
            row = (size(blob) / 1024, enc_ms, dec_ms)
            base = base or row
            ratios = " ".join(f"{v / b:6.2f}" for v, b in zip(row, base))
            print(f"{name:6} {str(cells.shape):>10} {len(np.unique(cells)) - 1:5d} {label:>6} "
                  f"{row[0]:6.1f} {row[1]:7.2f} {row[2]:7.2f} {ratios}")

    print("\nMaskCache per entry (case2, 512x512 -> 2048x2048)")
    _, cells, nuclei = cases[1]
    with tempfile.TemporaryDirectory() as root:
        cache = MaskCache(root)
        counter = iter(range(10**6))

        def write():
            cache.write(f"img-{next(counter)}", cells, nuclei, original_shape=(2048, 2048), scale=0.25,
                        backend="bench", params_hash="k", params={"backend": "bench", "scale": 0.25})

        timings = {
            "write (encode + digest + 2 fsync'd renames)": best_ms(write, args.repeats)[0],
            "status (sha256 check)": best_ms(lambda: cache.status("img-0", "k"), args.repeats)[0],
            "read (one file read: checksum + decode)": best_ms(lambda: cache.read("img-0"), args.repeats)[0],
            "read upscale=True": best_ms(lambda: cache.read("img-0", upscale=True), args.repeats)[0],
            "manifest() from sidecars": best_ms(cache.manifest, 5)[0],
        }
        cache.write_manifest()
        timings["manifest() from csv"] = best_ms(cache.manifest, 5)[0]
        timings["reader() (homogeneity check, from csv)"] = best_ms(cache.reader, 5)[0]
        entries = len(cache.ids())
    for label, ms in timings.items():
        print(f"  {label:44} {ms:8.2f} ms")
    print(f"  (manifest timings over {entries} entries)")


if __name__ == "__main__":
    main()
