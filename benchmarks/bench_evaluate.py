"""Benchmark: the competition metric and the submission tools at test-set scale.

Builds a synthetic test set shaped like the real one (559 images: 462 at 2048², 68 at 1728²,
29 at 3072²; segmentation at 1/4 scale; ~30 cells per image), a solution (1-2 classes per cell)
and a noisy submission (the label maps shifted by a few pixels, all 19 classes per cell, as top
teams wrote), then times: writing the submission (SubmissionWriter, rows added in shuffled
order), check-submission (validate_submission) and evaluate (mAP@0.6).

    python benchmarks/bench_evaluate.py [--images 559] [--cells 30] [--keep] [--quick]

Goal (issue 4): evaluate 559 images x 30 cells x 19 classes in under 60 s on 2 cores (the
goal column scales it to --images).

Files go to benchmarks/out/ (deleted at the end unless --keep).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from bench_rle import make_label_map  # noqa: E402

from cellcls import rle  # noqa: E402
from cellcls.metric import evaluate  # noqa: E402
from cellcls.submission import SampleRow, SubmissionWriter, validate_submission  # noqa: E402

OUT = Path(__file__).parent / "out"


def test_set_sizes(n_images: int) -> list[int]:
    """Image sizes in the real proportions (462 : 68 : 29)."""
    sizes = [2048] * 462 + [1728] * 68 + [3072] * 29
    rng = np.random.default_rng(1)
    rng.shuffle(sizes)
    return [sizes[i % len(sizes)] for i in range(n_images)]


def variant(base: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square label map."""
    out = np.rot90(base, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def build(n_images: int, n_cells: int, folder: Path) -> tuple[Path, Path, Path, float]:
    rng = np.random.default_rng(0)
    sizes = test_set_sizes(n_images)
    bases = {s: [make_label_map(s // 4, n_cells, seed=10 * s + i) for i in range(6)] for s in set(sizes)}
    sample = [SampleRow(f"{i:04d}-synthetic", s, s) for i, s in enumerate(sizes)]
    sample_path = folder / "sample_submission.csv"
    sample_path.write_text("ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(
        f"{r.id},{r.width},{r.height},0 1 {rle.EMPTY_MASK_FULL_FRAME}\n" for r in sample))
    solution_path = folder / "solution.csv"
    t_write = 0.0
    order = rng.permutation(n_images)
    with open(solution_path, "w") as solution, \
            SubmissionWriter(folder / "submission.csv", sample) as writer:
        solution.write("ID,ImageWidth,ImageHeight,PredictionString\n")
        rows = []
        for i, row in enumerate(sample):
            labels = variant(bases[row.width][i % 6], i // 6 % 8)
            cells = rle.encode_label_map(labels, out_shape=row.shape)
            truth = {k: rng.choice(19, size=rng.integers(1, 3), replace=False) for k in cells}
            solution.write(f"{row.id},{row.width},{row.height}," + " ".join(
                f"{c} 1 {cells[k]}" for k in cells for c in truth[k]) + "\n")
            shifted = np.roll(labels, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            n = len(np.unique(shifted)) - 1
            scores = rng.uniform(0, 0.6, (n, 19))
            for j, k in enumerate(k for k in np.unique(shifted) if k):
                scores[j, truth.get(int(k), [])] += rng.uniform(0, 0.4)
            rows.append((row.id, shifted, scores))
        for j in order:  # rows arrive out of order, as from parallel workers
            t0 = time.perf_counter()
            writer.add(*rows[j])
            t_write += time.perf_counter() - t0
        t0 = time.perf_counter()
    t_write += time.perf_counter() - t0
    return sample_path, solution_path, folder / "submission.csv", t_write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=559)
    parser.add_argument("--cells", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/out/evaluate/")
    parser.add_argument("--quick", action="store_true", help="60 images instead of 559")
    args, _ = parser.parse_known_args()
    if args.quick:
        args.images = min(args.images, 60)
    folder = OUT / "evaluate"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    sample, solution, submission, t_write = build(args.images, args.cells, folder)
    t_build = time.perf_counter() - t0
    size_mb = submission.stat().st_size / 1e6

    t0 = time.perf_counter()
    report = validate_submission(submission, sample)
    t_check = time.perf_counter() - t0
    assert report.ok, report.summary()

    t0 = time.perf_counter()
    result = evaluate(solution, submission)
    t_eval = time.perf_counter() - t0

    print(f"synthetic test set: {args.images} images x ~{args.cells} cells x 19 classes = {report.triplets} "
          f"triplets, {report.cells} cells, submission {size_mb:.0f} MB (built in {t_build:.1f} s)")
    goal_s = 60.0 * args.images / 559
    print(f"{'step':<34} {'seconds':>8} {'ms/image':>9} {'/ goal':>7}")
    for name, seconds, goal in [("write submission (shuffled rows)", t_write, None),
                                ("check-submission", t_check, None), ("evaluate mAP@0.6", t_eval, goal_s)]:
        ratio = f"{seconds / goal:>7.2f}" if goal else f"{'':>7}"
        print(f"{name:<34} {seconds:>8.1f} {seconds / args.images * 1e3:>9.1f} {ratio}")
    print(f"(goal: evaluate in {goal_s:.0f} s = 60 s x {args.images}/559 images)")
    print(f"mAP of the noisy submission: {result.map:.4f}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
