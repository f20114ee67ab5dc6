"""Run every benchmark script in this folder, one after another (``make bench``).

Each ``bench_*.py`` prints its own table with the measured figures and their ratios to the
goals. Extra arguments are passed to every script (e.g. ``--quick``).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, str(script), *argv])
        print(f"--- {script.name}: exit {code}, {time.perf_counter() - t0:.1f} s", flush=True)
        if code:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
