"""Benchmark: ``label_cell`` (fixture maps) and the classical backend (synthetic images).

    python benchmarks/bench_classical.py [--repeats 5] [--samples 6] [--quick]

Rows (median seconds per image over --repeats runs, then the ratio to a reference figure):

- ``label_cell`` on the fixture's quarter maps (512², 512x384, 256²) with the quarter constants,
  against the goal of 0.1 s at 512² and the original's ~0.08 s at 512² (HPA_FACTS §4);
- ``label_cell`` on the fixture's 2048² maps with the stock constants, against the original's
  ~2.5 s at 2048² (skipped with --quick);
- ``segment_classical`` on ``cellcls.synth.make_sample`` 512² images at scale 0.25 (whole call,
  then its pseudo-probability maps alone), with its cell F1 at IoU 0.6;
- ``cell_f1`` on the same images.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from cellcls.synth import make_sample  # noqa: E402
from segment.classical import pseudo_probability_maps, segment_classical  # noqa: E402
from segment.evaluate import cell_f1  # noqa: E402
from segment.labelling import LabelParams, label_cell  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "data" / "label_cell_fixture.npz"


CPU_TIMES: list[float] = []  # process CPU seconds of the last median_time call (per run)


def median_time(fn, repeats: int) -> float:
    """Median wall seconds per call; the median process CPU seconds go to CPU_TIMES[-1].

    CPU time is the steadier figure on a shared machine (other processes inflate wall time).
    """
    fn()  # warm-up: imports, caches
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU_TIMES.append(statistics.median(cpu))
    return statistics.median(times)


def row(name: str, seconds: float, reference: float | None, ref_name: str, extra: str = "") -> None:
    cpu = CPU_TIMES[-1] if CPU_TIMES else float("nan")
    ratio = f"{seconds / reference:5.2f}x / {cpu / reference:5.2f}x {ref_name}" if reference else ""
    print(f"{name:<44} {seconds:7.3f} {cpu:7.3f}  {ratio:<36} {extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="skip the 2048² rows, 2 repeats")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats

    print(f"{'row':<44} {'wall s':>7} {'cpu s':>7}  {'ratio wall / cpu':<36} notes")
    quarter = LabelParams().scaled(0.25)
    with np.load(FIXTURE) as data:
        for case in ("case1", "case2", "case3", "case4"):
            nuc, cell = data[f"{case}_quarter_nuclei_pred"], data[f"{case}_quarter_cell_pred"]
            t = median_time(lambda: label_cell(nuc, cell, params=quarter), repeats)
            per_512 = t * (512 * 512) / (nuc.shape[0] * nuc.shape[1])
            per_512_cpu = CPU_TIMES[-1] * (512 * 512) / (nuc.shape[0] * nuc.shape[1])
            row(f"label_cell quarter {case} {nuc.shape[0]}x{nuc.shape[1]}", t, 0.1, "goal 0.1 s",
                f"per 512²: {per_512:.3f} s wall, {per_512_cpu:.3f} s cpu (original ~0.08 s)")
        if not args.quick:
            for case in ("case1", "case2"):
                nuc, cell = data[f"{case}_full_nuclei_pred"], data[f"{case}_full_cell_pred"]
                t = median_time(lambda: label_cell(nuc, cell), max(1, repeats // 2))
                row(f"label_cell full {case} {nuc.shape[0]}x{nuc.shape[1]}", t, 2.5, "original 2.5 s")

    samples = [make_sample(400 + i) for i in range(args.samples)]
    images = [s.image.astype(np.float32) / 255 for s in samples]
    timings: dict[str, list[tuple[float, float]]] = {"seg": [], "maps": [], "f1": []}
    f1s = []
    for sample, image in zip(samples, images):
        for key, fn in (
            ("seg", lambda: segment_classical(image, scale=sample.scale)),
            ("maps", lambda: pseudo_probability_maps(image, scale=sample.scale)),
        ):
            timings[key].append((median_time(fn, repeats), CPU_TIMES[-1]))
        _, cells = segment_classical(image, scale=sample.scale)
        timings["f1"].append((median_time(lambda: cell_f1(cells, sample.cells), repeats), CPU_TIMES[-1]))
        f1s.append(cell_f1(cells, sample.cells)["f1"])

    def summary(key: str) -> float:
        CPU_TIMES.append(statistics.median(c for _, c in timings[key]))
        return statistics.median(w for w, _ in timings[key])

    row("segment_classical 512² (synth, scale 0.25)", summary("seg"), 0.1, "labelling goal 0.1 s",
        f"F1@0.6 per image {', '.join(f'{f:.3f}' for f in f1s)}")
    row("  of which pseudo_probability_maps", summary("maps"), None, "")
    row("cell_f1 512²", summary("f1"), None, "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
