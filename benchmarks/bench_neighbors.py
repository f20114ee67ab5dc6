"""Exact cosine top-k (``cellcls.neighbors.cosine_topk``): time and peak memory, projected to 100k x 100k.

Run: .venv/bin/python benchmarks/bench_neighbors.py [--quick] [--rows 10000 50000] [--dim 512] [--k 5]
Each row searches N random L2-normalised float32 query rows against N index rows (D = 512, k = 5,
default chunks) in a fresh subprocess, so its peak memory is its own: the peak resident set (VmHWM of
/proc/self/status; tracemalloc does not see torch's allocations) after the inputs were made, minus
the resident set before the search = what the search itself added.

Goals. Memory: 100k x 100k x 512-d (a self-search over train + the public HPA images) fits 4 GB for
the whole process, projected from a row of N as the process peak + the inputs and normalised index
copy that grow with N (3 x (100k - N) x D x 4 bytes; the block buffers do not grow). Time: the
search costs at most 1.25x the CPU time of the bare float32 matrix products of the same blocks
(measured in the same process on the first 8192 query rows and scaled: the products are the
unavoidable work, the rest is top-k and merging). CPU seconds, not wall: on a shared machine the
wall clock measures the other jobs as much as this code (on an idle 2-core machine wall ~ CPU / 2).
The projected 100k x 100k times are the row's wall and CPU seconds x (100k / N)^2.
--quick: one 10k row (well under 2 minutes on a loaded 2-core machine).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

TARGET_ROWS = 100_000
GOAL_GB = 4.0
GOAL_GEMM_RATIO = 1.25
GEMM_ROWS = 8192


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False if the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(n: int, dim: int, k: int, threads: int) -> dict:
    import numpy as np
    import torch

    from cellcls.neighbors import cosine_topk

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)

    def unit_rows(count: int) -> np.ndarray:
        out = np.empty((count, dim), np.float32)
        for start in range(0, count, 8192):  # chunked, so making the data leaves no big peak
            block = rng.standard_normal((min(8192, count - start), dim), dtype=np.float32)
            out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out

    query, index = unit_rows(n), unit_rows(n)
    reset = _reset_peak()
    rss_before = _status_kb("VmRSS")
    hwm_before = _status_kb("VmHWM")
    start, cpu = time.perf_counter(), time.process_time()
    sims, idx = cosine_topk(query, index, k=k, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    hwm = _status_kb("VmHWM")
    assert sims.shape == (n, k) and idx.shape == (n, k)
    q_t, m_t = torch.from_numpy(query), torch.from_numpy(index)
    rows = min(n, GEMM_ROWS)
    gemm_cpu = time.process_time()
    for qa in range(0, rows, 2048):
        for ma in range(0, n, 16384):
            q_t[qa:qa + 2048] @ m_t[ma:ma + 16384].T
    gemm_cpu = (time.process_time() - gemm_cpu) * n / rows
    return {"n": n, "wall_s": wall, "cpu_s": cpu, "gemm_cpu_s": gemm_cpu, "rss_before_mb": rss_before / 1024, "hwm_mb": hwm / 1024,
            "peak_reset": reset, "hwm_before_mb": hwm_before / 1024, "threads": torch.get_num_threads()}


def run_row(n: int, dim: int, k: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_worker", str(n), "--dim", str(dim), "--k", str(k),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="N per row (default 10000 50000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--quick", action="store_true", help="one 10k x 10k row")
    parser.add_argument("--_worker", type=int, default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)
    if args._worker is not None:
        print(json.dumps(worker(args._worker, args.dim, args.k, args.threads)))
        return 0
    rows = args.rows or ([10_000] if args.quick else [10_000, 50_000])
    print(f"cosine_topk, N x N x {args.dim}-d float32, k={args.k}, default chunks (2048 x 16384), "
          f"{args.threads} torch threads; goals: search <= {GOAL_GEMM_RATIO:g}x its bare matrix products, "
          f"{TARGET_ROWS // 1000}k x {TARGET_ROWS // 1000}k in < {GOAL_GB:g} GB")
    header = ("N", "wall s", "GFLOP/s", "CPU s", "bare GEMM CPU s", "CPU/GEMM", f"vs goal {GOAL_GEMM_RATIO:g}", "peak MB",
              "search adds MB", "100k wall s", "100k CPU s", "100k peak MB", f"vs goal {GOAL_GB:g} GB")
    print(" | ".join(header))
    for n in rows:
        r = run_row(n, args.dim, args.k, args.threads)
        gflops = 2.0 * n * n * args.dim / r["wall_s"] / 1e9
        projected_s = r["wall_s"] * (TARGET_ROWS / n) ** 2
        growth_mb = 3 * max(TARGET_ROWS - n, 0) * args.dim * 4 / 2 ** 20
        projected_mb = r["hwm_mb"] + growth_mb
        adds = r["hwm_mb"] - r["rss_before_mb"]
        overhead = r["cpu_s"] / r["gemm_cpu_s"]
        print(" | ".join([f"{n}", f"{r['wall_s']:.1f}", f"{gflops:.1f}", f"{r['cpu_s']:.1f}", f"{r['gemm_cpu_s']:.1f}",
                          f"{overhead:.2f}", f"{overhead / GOAL_GEMM_RATIO:.2f}x", f"{r['hwm_mb']:.0f}", f"{adds:.0f}",
                          f"{projected_s:.0f}", f"{r['cpu_s'] * (TARGET_ROWS / n) ** 2:.0f}", f"{projected_mb:.0f}", f"{projected_mb / (GOAL_GB * 1024):.2f}x"]),
              flush=True)
        if not r["peak_reset"]:
            print(f"  (the kernel would not reset VmHWM: peak includes making the inputs; "
                  f"peak before the search {r['hwm_before_mb']:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
