#!/usr/bin/env bash
# Every GPU check of the project, prepared to run ONCE on a lent GPU in under 8 minutes:
#   bash benchmarks/gpu_check.sh            # on the GPU machine (installs the venv first if missing)
#   bash benchmarks/gpu_check.sh --smoke    # on CPU at toy sizes: proves the script runs end to end
# Prints one table per part; copy both into benchmarks/README.md with the date and the GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1 HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || { make venv >/dev/null || exit 1; }
status=0
if [ "${1:-}" = "--smoke" ]; then
  timeout 600 "$PY" benchmarks/gpu_check.py --smoke || status=1
  timeout 600 "$PY" benchmarks/bench_segment.py --device cpu --quick --images 1 || status=1
else
  "$PY" -c "import torch; print(torch.cuda.get_device_name(0)); print(torch.__version__, torch.version.cuda)" || exit 1
  timeout 270 "$PY" benchmarks/gpu_check.py --device cuda || status=1
  # End to end: images/s of our pipeline vs the decode-only rate (goal >= 50%), original path alongside.
  timeout 180 "$PY" benchmarks/bench_segment.py --device cuda --images 8 --batch-size 24 || status=1
fi
exit $status
