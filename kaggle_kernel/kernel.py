"""The script the Kaggle notebook runs: install cellcls from an attached dataset, then run inference.

1. Find the wheels folder: the folder under ``/kaggle/input`` (at most two levels down, e.g.
   ``/kaggle/input/cellcls-wheels/``) that holds a ``cellcls-*.whl``.
2. ``python -m pip install --no-index --find-links <that folder> cellcls``: only that folder is
   used, never the network; the packages already installed in the Kaggle image (torch, numpy...)
   are kept when they satisfy cellcls's ranges, and the folder's wheels fill in the rest.
3. ``python -m infer.kaggle <arguments given to this script>`` with the same interpreter; its
   exit code is this script's.

Only the standard library is used here: nothing of cellcls can be imported before step 2.
``CELLCLS_KAGGLE_INPUT`` replaces ``/kaggle/input`` (to try the kernel outside Kaggle).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["INPUT_ROOT", "WheelFolderNotFound", "find_wheel_dir", "install_command", "inference_command", "main"]

#: Where Kaggle mounts the attached datasets and the competition data.
INPUT_ROOT = "/kaggle/input"
_WHEEL_GLOB = "cellcls-*.whl"
_MAX_DEPTH = 2  # /kaggle/input/<slug>/ and /kaggle/input/<slug>/<folder>/


class WheelFolderNotFound(RuntimeError):
    """No folder under the input root holds a cellcls wheel; the message lists what was looked at."""


def _candidate_dirs(root: Path) -> list[Path]:
    """``root/*`` and ``root/*/*`` folders, sorted, without following further down."""
    found: list[Path] = []
    level = [root]
    for _ in range(_MAX_DEPTH):
        level = sorted(p for parent in level for p in parent.iterdir() if p.is_dir())
        found.extend(level)
    return found


def find_wheel_dir(root: str | os.PathLike = INPUT_ROOT) -> Path:
    """The folder under ``root`` (1 or 2 levels down) that holds a ``cellcls-*.whl``.

    With several such folders the first in sorted order wins and the others are named on stderr.

    Raises
    ------
    WheelFolderNotFound
        No such folder; the message names every folder looked at and how to attach the dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise WheelFolderNotFound(
            f"{root} does not exist: this script expects the Kaggle notebook layout (attached datasets under "
            f"{INPUT_ROOT}); outside Kaggle set CELLCLS_KAGGLE_INPUT to a folder holding the wheels folder"
        )
    looked = _candidate_dirs(root)
    hits = [d for d in looked if any(d.glob(_WHEEL_GLOB))]
    if not hits:
        shown = "\n  ".join(str(d) for d in looked) or "(no folders at all)"
        raise WheelFolderNotFound(
            f"no folder under {root} holds a {_WHEEL_GLOB} file. Attach the wheels dataset made by "
            "kaggle_kernel/build_dataset.py (Add Input > Datasets, or dataset_sources in kernel-metadata.json). "
            f"Folders looked at:\n  {shown}"
        )
    if len(hits) > 1:
        print(f"kernel: several folders hold cellcls wheels; using {hits[0]} (also: "
              + ", ".join(str(d) for d in hits[1:]) + ")", file=sys.stderr)
    return hits[0]


def install_command(wheel_dir: str | os.PathLike, *, python: str | None = None) -> list[str]:
    """The offline ``pip install`` of cellcls from ``wheel_dir`` (no index, no network)."""
    return [python or sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheel_dir),
            "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "cellcls"]


def inference_command(args: Sequence[str], *, python: str | None = None) -> list[str]:
    """``python -m infer.kaggle ARGS`` with this interpreter."""
    return [python or sys.executable, "-m", "infer.kaggle", *args]


def main(argv: Sequence[str] | None = None) -> int:
    """Install, then run inference with ``argv`` (default: this script's arguments); return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    root = os.environ.get("CELLCLS_KAGGLE_INPUT", INPUT_ROOT)
    try:
        wheel_dir = find_wheel_dir(root)
    except WheelFolderNotFound as exc:
        print(f"kernel: {exc}", file=sys.stderr)
        return 1
    wheels = sorted(p.name for p in wheel_dir.glob(_WHEEL_GLOB))
    print(f"kernel: installing cellcls from {wheel_dir} ({', '.join(wheels)}), offline", flush=True)
    installed = subprocess.run(install_command(wheel_dir), check=False)
    if installed.returncode != 0:
        print(f"kernel: pip could not install cellcls from {wheel_dir} (exit {installed.returncode}); "
              "its output above names the missing wheel: rebuild the dataset with build_dataset.py "
              f"--python-version {sys.version_info.major}.{sys.version_info.minor} (this kernel's Python)",
              file=sys.stderr)
        return installed.returncode
    print(f"kernel: running {' '.join(inference_command(args)[1:])}", flush=True)
    return subprocess.run(inference_command(args), check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
