"""The Kaggle kernel bundle: metadata Kaggle accepts, and wheels that install with no network.

What a user relies on: ``kernel-metadata.json`` asks for a GPU and NO internet and attaches the
competition and the three datasets; the dataset builder's wheels install into a fresh environment
with ``pip install --no-index``; the kernel script finds the attached wheels folder itself, installs
from it, and says where it looked when there is none.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "kaggle_kernel"
COMPETITION = "hpa-single-cell-image-classification"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"kaggle_bundle_{name}", BUNDLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kernel = _load("kernel")
build_dataset = _load("build_dataset")


def _flag(value) -> bool:
    """Kaggle's metadata booleans: JSON booleans or the strings "true"/"false"."""
    if isinstance(value, bool):
        return value
    assert value in ("true", "false"), f"not a Kaggle boolean: {value!r}"
    return value == "true"


# --------------------------------------------------------------------------- kernel-metadata.json
def test_kernel_metadata_has_the_fields_kaggle_needs_and_no_internet():
    meta = json.loads((BUNDLE / "kernel-metadata.json").read_text())
    required = {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu",
                "enable_internet", "dataset_sources", "competition_sources", "kernel_sources", "model_sources"}
    assert required <= set(meta)
    assert _flag(meta["enable_internet"]) is False  # the competition scores offline notebooks only
    assert _flag(meta["enable_gpu"]) is True and _flag(meta["is_private"]) is True
    assert meta["language"] == "python" and meta["kernel_type"] == "script"
    assert (BUNDLE / meta["code_file"]).is_file()
    assert meta["competition_sources"] == [COMPETITION]
    user, slug = meta["id"].split("/")
    assert slug == "cellcls-hpa-single-cell" and len(slug) >= 5
    # Kaggle derives the slug from the title (lowercased, spaces -> dashes): they must agree.
    assert re.sub(r"\s+", "-", meta["title"].strip().lower()) == slug
    sources = meta["dataset_sources"]
    assert len(sources) == 3 and len(set(sources)) == 3
    assert all(s.split("/")[0] == user for s in sources)
    assert f"{user}/{build_dataset.DEFAULT_SLUG}" in sources  # the builder's dataset is attached
    assert user == build_dataset.PLACEHOLDER_USER  # one placeholder, documented in the README
    assert meta["kernel_sources"] == [] and meta["model_sources"] == []


# --------------------------------------------------------------------------- dataset builder
def test_dependency_selection_leaves_out_torch_and_its_cuda_wheels():
    report = {"install": [
        {"metadata": {"name": name, "version": version}}
        for name, version in [("cellcls", "0.1.0"), ("torch", "2.14.1"), ("torchvision", "0.29.1"),
                              ("nvidia-cudnn-cu13", "9.1"), ("triton", "3.5"), ("cuda-bindings", "13.0"),
                              ("torchmetrics", "1.9.0"), ("Scikit_Image", "0.26.0"), ("numpy", "2.4.6")]
    ]}
    assert build_dataset.select_downloads(report) == [
        "numpy==2.4.6", "scikit-image==0.26.0", "torchmetrics==1.9.0"]
    with_torch = build_dataset.select_downloads(report, include_torch=True)
    assert "torch==2.14.1" in with_torch and "nvidia-cudnn-cu13==9.1" in with_torch
    assert not any(p.startswith("cellcls==") for p in with_torch)  # its wheel is built, not downloaded


def test_platform_tags_cover_every_manylinux_up_to_the_kaggle_glibc():
    tags = build_dataset.kaggle_platforms()
    assert tags[0] == "manylinux_2_35_x86_64"
    assert {"manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"} <= set(tags)
    assert len(tags) == len(set(tags)) == (35 - 17 + 1) + 3


# --------------------------------------------------------------------------- kernel.py
def test_kernel_finds_the_wheels_folder_one_or_two_levels_down(tmp_path):
    root = tmp_path / "input"
    (root / COMPETITION / "test").mkdir(parents=True)
    (root / "cellcls-models").mkdir()
    wheels = root / "cellcls-wheels" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "cellcls-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert kernel.find_wheel_dir(root) == wheels
    (root / "cellcls-wheels" / "cellcls-0.1.0-py3-none-any.whl").write_bytes(b"")
    assert kernel.find_wheel_dir(root) == root / "cellcls-wheels"  # the shallower one sorts first
    command = kernel.install_command(wheels, python="py")
    assert command[:4] == ["py", "-m", "pip", "install"]
    assert "--no-index" in command and command[command.index("--find-links") + 1] == str(wheels)
    assert kernel.inference_command(["--x", "1"], python="py") == ["py", "-m", "infer.kaggle", "--x", "1"]


def test_kernel_without_wheels_lists_where_it_looked(tmp_path, monkeypatch, capsys):
    root = tmp_path / "input"
    (root / COMPETITION / "test").mkdir(parents=True)
    (root / "cellcls-models" / "fold0").mkdir(parents=True)
    with pytest.raises(kernel.WheelFolderNotFound) as error:
        kernel.find_wheel_dir(root)
    for looked in (root / COMPETITION, root / COMPETITION / "test", root / "cellcls-models" / "fold0"):
        assert str(looked) in str(error.value)
    monkeypatch.setenv("CELLCLS_KAGGLE_INPUT", str(root))
    assert kernel.main([]) == 1  # nothing installed, nothing run
    assert "cellcls-*.whl" in capsys.readouterr().err
    monkeypatch.setenv("CELLCLS_KAGGLE_INPUT", str(tmp_path / "nowhere"))
    assert kernel.main([]) == 1
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- offline install
def _dependency_view(view: Path) -> Path:
    """This environment's site-packages without cellcls: symlinks to every other entry."""
    site = Path(sysconfig.get_paths()["purelib"])
    view.mkdir()
    for entry in site.iterdir():
        name = entry.name
        if name.startswith(("__editable__", "cellcls-", "cellcls.")) or name.endswith(".pth"):
            continue
        (view / name).symlink_to(entry, target_is_directory=entry.is_dir())
    return view


@pytest.mark.slow
def test_dataset_wheels_install_into_a_fresh_venv_with_no_index(tmp_path):
    """build_dataset --no-deps, then kernel.py installs cellcls offline into a fresh venv.

    The fresh venv sees this environment's packages, minus cellcls, through a .pth file (its
    dependencies are already here; downloading them is not the point), so pip must resolve them
    offline and install cellcls from the wheel alone.
    """
    wheels = tmp_path / "input" / "cellcls-wheels"
    subprocess.run([sys.executable, str(BUNDLE / "build_dataset.py"), "--out", str(wheels), "--no-deps"],
                   check=True, capture_output=True, text=True)
    assert [p.name for p in wheels.glob("cellcls-*.whl")] and (wheels / "dataset-metadata.json").is_file()

    fresh = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = str(fresh / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "deps.pth").write_text(str(_dependency_view(tmp_path / "deps")) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_FIND_LINKS")}
    env.update(CELLCLS_KAGGLE_INPUT=str(tmp_path / "input"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    before = subprocess.run([python, "-c", "import cellcls"], cwd=tmp_path, env=env, capture_output=True)
    assert before.returncode != 0  # the fresh venv really starts without cellcls

    run = subprocess.run([python, str(BUNDLE / "kernel.py"), "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert "Successfully installed cellcls" in output, output
    if (ROOT / "infer" / "kaggle.py").is_file():
        assert run.returncode == 0, output
    else:  # infer.kaggle is not written yet: the kernel got as far as running it
        assert run.returncode != 0 and "infer.kaggle" in output, output

    check = subprocess.run([python, "-c", "import cellcls, segment, train, infer; print(cellcls.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert Path(check.stdout.strip()).resolve().is_relative_to(Path(purelib).resolve())
