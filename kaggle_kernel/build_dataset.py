"""Pack cellcls and its dependency wheels into a folder to upload as a Kaggle dataset.

    python kaggle_kernel/build_dataset.py --out dist/cellcls-wheels --user YOUR_KAGGLE_NAME
    kaggle datasets create -p dist/cellcls-wheels          # first time; later: kaggle datasets version

The folder holds, flat (the kernel installs it with ``pip install --no-index --find-links``):

* the cellcls wheel, built from this checkout (``pip wheel --no-deps``, from a copy of the sources so
  the checkout gets no ``build/`` folder);
* the dependency wheels for the KERNEL's interpreter (``--python-version``, ``--platform``), binary
  only, at the versions of ``constraints.txt``: the resolution is ``pip install --dry-run --report``
  for that target, then each package is fetched with ``pip download --no-deps``. torch and torchvision
  (and their CUDA/triton wheels) are left out unless ``--include-torch``: the Kaggle image has its
  own CUDA build of torch, and cellcls's range (``torch>=2.4``) accepts it. Packages the image
  already has at a version within cellcls's ranges are not reinstalled; these wheels are fallbacks;
* ``dataset-metadata.json`` (title, ``id = <user>/<slug>``, licenses), what ``kaggle datasets
  create -p`` reads.

``--no-deps`` writes only the cellcls wheel and the metadata (no network needed). Downloads are
resumable: wheels already in ``--out`` are not fetched again. Only this script's Python and pip are
used; the dependency step needs PyPI.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

__all__ = [
    "PLACEHOLDER_USER",
    "DEFAULT_SLUG",
    "kaggle_platforms",
    "canonical_name",
    "is_torch_family",
    "select_downloads",
    "build_project_wheel",
    "resolve",
    "download",
    "write_dataset_metadata",
    "main",
]

#: Stands for the Kaggle user name until ``--user`` (or an edit of the JSON files) replaces it.
PLACEHOLDER_USER = "your-kaggle-username"
DEFAULT_SLUG = "cellcls-wheels"
DEFAULT_TITLE = "cellcls wheels"
DEFAULT_PYTHON = "3.11"
#: glibc of the Kaggle image (Ubuntu 22.04): manylinux wheels up to this version run there.
KAGGLE_GLIBC = (2, 35)
ROOT = Path(__file__).resolve().parent.parent

_TORCH_FAMILY = frozenset({"torch", "torchvision", "torchaudio", "triton", "pytorch-triton"})
_TORCH_PREFIXES = ("nvidia-", "cuda-")  # torch's CUDA runtime wheels (nvidia-cudnn-cu12, cuda-bindings...)
_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in")
_MIN_SETUPTOOLS = (77,)  # pyproject's build-system (PEP 639 license string)


# --------------------------------------------------------------------------- pure helpers
def kaggle_platforms(arch: str = "x86_64", glibc: tuple[int, int] = KAGGLE_GLIBC) -> list[str]:
    """pip ``--platform`` tags of the wheels that run on the Kaggle image, newest first.

    pip does not widen an explicit ``manylinux_2_28`` tag to older glibc versions, so every
    ``manylinux_2_X`` from ``glibc`` down to 2.17 is listed, plus the legacy aliases
    (``manylinux2014`` = 2.17, ``manylinux2010``, ``manylinux1``).
    """
    major, minor = glibc
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]


def canonical_name(name: str) -> str:
    """PEP 503 normalised project name (``Scikit_Image`` -> ``scikit-image``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_torch_family(name: str) -> bool:
    """torch, torchvision, torchaudio, triton and torch's nvidia-*/cuda-* runtime wheels."""
    name = canonical_name(name)
    return name in _TORCH_FAMILY or name.startswith(_TORCH_PREFIXES)


def select_downloads(report: dict, *, include_torch: bool = False, skip: Iterable[str] = ("cellcls",)) -> list[str]:
    """``name==version`` pins to download, from a ``pip install --report`` JSON.

    Parameters
    ----------
    report : dict
        pip's installation report (``{"install": [{"metadata": {"name", "version"}, ...}]}``).
    include_torch : bool
        Keep the torch family (see :func:`is_torch_family`); left out by default.
    skip : iterable of str
        Projects not to download (the project itself, whose wheel is built).

    Returns
    -------
    list of str
        Sorted by name, one pin per project.
    """
    skipped = {canonical_name(s) for s in skip}
    pins: dict[str, str] = {}
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        name, version = canonical_name(meta["name"]), meta["version"]
        if name in skipped or (not include_torch and is_torch_family(name)):
            continue
        pins[name] = f"{name}=={version}"
    return [pins[n] for n in sorted(pins)]


def _target_options(python_version: str, platforms: Sequence[str]) -> list[str]:
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


# --------------------------------------------------------------------------- steps (pip)
def _run(command: list[str], what: str) -> None:
    print("+", " ".join(command), flush=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise SystemExit(f"build_dataset: {what} failed (pip exit {done.returncode}); see pip's output above")


def _setuptools_ok() -> bool:
    """Whether this Python can build the project without an isolated (downloaded) build environment."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = tuple(int(p) for p in re.findall(r"\d+", version("setuptools"))[:1])
    except PackageNotFoundError:
        return False
    return found >= _MIN_SETUPTOOLS


def _copy_sources(root: Path, dest: Path) -> None:
    """The files a wheel is built from: the build config, README/LICENSE and every top-level package."""
    for name in _SOURCE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)
    for path in root.iterdir():
        if path.is_file() and path.name.upper().startswith(("README", "LICENSE", "COPYING")):
            shutil.copy2(path, dest / path.name)
        elif path.is_dir() and not path.name.startswith(".") and (path / "__init__.py").is_file():
            shutil.copytree(path, dest / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def build_project_wheel(out: Path, *, root: Path = ROOT) -> Path:
    """Build the cellcls wheel into ``out`` (an older cellcls wheel there is removed); return its path."""
    for old in out.glob("cellcls-*.whl"):
        old.unlink()
    no_isolation = _setuptools_ok()
    if not no_isolation:
        print("build_dataset: setuptools>=77 is not installed here; pip builds in an isolated environment "
              "(needs PyPI)", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="cellcls-src-") as tmp:
        _copy_sources(root, Path(tmp))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
                   "-w", str(out), *(["--no-build-isolation"] if no_isolation else []), tmp]
        _run(command, "building the cellcls wheel")
    wheels = sorted(out.glob("cellcls-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"build_dataset: expected one cellcls wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def resolve(project_wheel: Path, *, python_version: str, platforms: Sequence[str],
            constraints: Path | None) -> dict:
    """pip's installation report for ``project_wheel`` and its dependencies on the target (metadata only)."""
    with tempfile.TemporaryDirectory(prefix="cellcls-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "-q",
                   "--disable-pip-version-check", "--report", str(report), "--target", str(Path(tmp) / "t"),
                   *_target_options(python_version, platforms)]
        if constraints is not None:
            command += ["-c", str(constraints)]
        _run([*command, str(project_wheel)], "resolving the dependencies")
        return json.loads(report.read_text(encoding="utf-8"))


def download(pins: Sequence[str], out: Path, *, python_version: str, platforms: Sequence[str]) -> None:
    """``pip download --no-deps`` of exactly ``pins`` into ``out`` for the target interpreter."""
    if pins:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
              "-d", str(out), *_target_options(python_version, platforms), *pins], "downloading the wheels")


def write_dataset_metadata(out: Path, *, user: str, slug: str = DEFAULT_SLUG, title: str = DEFAULT_TITLE) -> Path:
    """``dataset-metadata.json`` for ``kaggle datasets create -p out``."""
    metadata = {"title": title, "id": f"{user}/{slug}", "licenses": [{"name": "other"}],
                "subtitle": "cellcls and its dependency wheels for offline pip install"}
    path = out / "dataset-metadata.json"
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_dataset.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python kaggle_kernel/build_dataset.py --out dist/cellcls-wheels --user jdoe\n"
               "  python kaggle_kernel/build_dataset.py --out /tmp/w --no-deps     # the cellcls wheel only")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write (created)")
    parser.add_argument("--python-version", default=DEFAULT_PYTHON, metavar="X.Y",
                        help=f"the kernel's Python (default {DEFAULT_PYTHON}; see python --version in a notebook)")
    parser.add_argument("--platform", action="append", metavar="TAG",
                        help="pip platform tag, repeatable (default: manylinux tags up to glibc "
                        f"{KAGGLE_GLIBC[0]}.{KAGGLE_GLIBC[1]}, the Kaggle image; e.g. manylinux2014_x86_64)")
    parser.add_argument("--no-deps", action="store_true", help="only the cellcls wheel and the metadata")
    parser.add_argument("--include-torch", action="store_true",
                        help="also ship torch/torchvision and their CUDA wheels (several GB; Kaggle has its own)")
    parser.add_argument("--no-constraints", action="store_true",
                        help="resolve the newest versions in cellcls's ranges instead of constraints.txt's pins")
    parser.add_argument("--user", default=PLACEHOLDER_USER, help="Kaggle user name for the dataset id")
    parser.add_argument("--slug", default=DEFAULT_SLUG, help=f"dataset slug (default {DEFAULT_SLUG})")
    parser.add_argument("--title", default=DEFAULT_TITLE, help=f"dataset title (default {DEFAULT_TITLE!r})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    wheel = build_project_wheel(out)
    print(f"cellcls wheel: {wheel}")
    if not args.no_deps:
        platforms = args.platform or kaggle_platforms()
        constraints = None if args.no_constraints else ROOT / "constraints.txt"
        report = resolve(wheel, python_version=args.python_version, platforms=platforms,
                         constraints=constraints if constraints and constraints.is_file() else None)
        pins = select_downloads(report, include_torch=args.include_torch)
        print(f"{len(pins)} dependency wheel(s) for Python {args.python_version}"
              + ("" if args.include_torch else " (torch family left out)"))
        download(pins, out, python_version=args.python_version, platforms=platforms)
    metadata = write_dataset_metadata(out, user=args.user, slug=args.slug, title=args.title)
    if args.user == PLACEHOLDER_USER:
        print(f"note: {metadata} has the placeholder user {PLACEHOLDER_USER!r}; pass --user or edit it "
              "before 'kaggle datasets create'", file=sys.stderr)
    size = sum(p.stat().st_size for p in out.glob("*.whl")) / 2**20
    print(f"dataset folder: {out} ({len(list(out.glob('*.whl')))} wheels, {size:.1f} MiB)")
    print(f"next: kaggle datasets create -p {out}   (a new version later: kaggle datasets version -p {out} -m MSG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
