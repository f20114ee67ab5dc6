"""``cellcls segment`` / ``python -m segment`` on a small synthetic world with the classical backend.

What a user relies on: one cache entry per image plus a manifest; re-runs skip what is done and
redo what changed or failed; a corrupt image is reported, skipped and listed as failed (exit 3);
a killed run resumes to the same cache as an uninterrupted one; the backend choice is explained;
the Lightning path writes the same cache as the plain one.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cellcls.cli import run_command
from cellcls.masks import MaskCache
from segment.backends import ClassicalBackend, HpaBackend, resolve_backend
from segment.command import SEGMENT
from segment.pipeline import EXIT_FAILURES, read_ids_csv, resolve_image_scale, run_segmentation

N_IMAGES = 12
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """12 train images of 320² at image scale 0.25 (world.json says so), read-only for the tests."""
    from cellcls.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=N_IMAGES, n_test=0, size_px=320, seed=3, progress=False)
    return out


@pytest.fixture()
def world_copy(world, tmp_path) -> Path:
    """A private copy of the world (for tests that damage files)."""
    dst = tmp_path / "world"
    shutil.copytree(world, dst)
    return dst


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
    """No HPA weights anywhere: the default folder is an empty temp folder, no env override."""
    import segment.weights

    monkeypatch.delenv("CELLCLS_SEG_WEIGHTS", raising=False)
    monkeypatch.setattr(segment.weights, "DEFAULT_WEIGHTS_DIR", tmp_path / "default_weights")


def segment_cli(*argv: str) -> int:
    return run_command(SEGMENT, ["--no-progress", *map(str, argv)], prog="python -m segment")


def classical(images: Path, out: Path, *extra: str) -> int:
    return segment_cli("--images", images, "--out", out, "--backend", "classical", "--scale", "1",
                       "--num-workers", "0", *extra)


def cache_arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = MaskCache(root)
    return {i: (e.cells, e.nuclei) for i in cache.ids() for e in [cache.read(i)]}


def test_writes_one_entry_per_image_and_the_manifest(world, tmp_path, capsys, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "masks"
    assert classical(world / "train", out) == 0
    manifest = MaskCache(out).manifest()
    assert len(manifest) == N_IMAGES and (manifest["status"] == "ok").all()
    assert (out / "manifest.csv").is_file()
    assert len(list(out.glob("*.npz"))) == N_IMAGES
    assert set(manifest["ID"]) == set(read_ids_csv(world / "train.csv"))
    assert (manifest[["seg_height", "seg_width", "original_height"]] == 320).all().all()
    assert manifest["n_cells"].sum() > N_IMAGES  # cells were found, not empty maps
    entry = MaskCache(out).read(manifest["ID"][0])
    assert entry.cells.shape == (320, 320) and entry.cells.max() == entry.n_cells
    assert f"segmented {N_IMAGES} image(s)" in capsys.readouterr().out
    assert "image scale 0.25" in caplog.text and "world.json" in caplog.text


@pytest.mark.slow
def test_rerun_skips_everything_and_a_changed_parameter_redoes(world, tmp_path, capsys):
    out = tmp_path / "masks"
    assert classical(world / "train", out) == 0
    sidecars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    capsys.readouterr()

    assert classical(world / "train", out) == 0
    assert f"segmented 0 image(s), skipped {N_IMAGES} already cached" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == sidecars

    assert classical(world / "train", out, "--image-scale", "0.3") == 0  # other size cut-offs: other key
    assert f"segmented {N_IMAGES} image(s), skipped 0" in capsys.readouterr().out

    assert segment_cli("--images", world / "train", "--out", out, "--backend", "classical", "--scale", "0.5",
                       "--num-workers", "0") == 0
    manifest = MaskCache(out).manifest()
    assert (manifest["seg_height"] == 160).all() and (manifest["scale"] == 0.5).all()

    assert classical(world / "train", out, "--overwrite") == 0
    assert f"segmented {N_IMAGES} image(s), skipped 0" in capsys.readouterr().out


def test_ids_csv_limits_the_run(world, tmp_path):
    ids = read_ids_csv(world / "train.csv")[:3]
    csv = tmp_path / "subset.csv"
    csv.write_text("ID,ImageWidth,ImageHeight,PredictionString\n" + "".join(f"{i},320,320,\n" for i in ids))
    out = tmp_path / "masks"
    assert classical(world / "train", out, "--ids", csv) == 0
    assert MaskCache(out).ids() == sorted(ids)


def test_corrupt_png_is_reported_skipped_and_listed_as_failed(world_copy, tmp_path, capsys, caplog):
    images = world_copy / "train"
    bad_id = read_ids_csv(world_copy / "train.csv")[4]
    bad_file = images / f"{bad_id}_yellow.png"
    good_bytes = bad_file.read_bytes()
    bad_file.write_bytes(good_bytes[: len(good_bytes) // 2])  # truncated download
    out = tmp_path / "masks"

    assert classical(images, out) == EXIT_FAILURES == 3
    assert bad_id in caplog.text and str(bad_file) in caplog.text
    printed = capsys.readouterr().out
    assert f"segmented {N_IMAGES - 1} image(s)" in printed and "failed 1" in printed and bad_id in printed
    manifest = MaskCache(out).manifest().set_index("ID")
    assert manifest.loc[bad_id, "status"] == "failed" and "truncated" in manifest.loc[bad_id, "error"]
    assert (manifest.drop(index=bad_id)["status"] == "ok").all()

    bad_file.write_bytes(good_bytes)  # fixed: the re-run redoes only that image
    assert classical(images, out) == 0
    assert f"segmented 1 image(s), skipped {N_IMAGES - 1}" in capsys.readouterr().out
    assert (MaskCache(out).manifest()["status"] == "ok").all()


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_cache(world, tmp_path):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    argv = ["--images", str(world / "train"), "--backend", "classical", "--scale", "1", "--batch-size", "1",
            "--num-workers", "0", "--no-progress", "-q"]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("CELLCLS_SEG_WEIGHTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "segment", *argv, "--out", str(interrupted)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(interrupted.glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    n_before = len(list(interrupted.glob("*.json")))
    assert 1 <= n_before < N_IMAGES
    assert not (interrupted / "manifest.csv").exists()

    assert classical(world / "train", interrupted, "--batch-size", "1") == 0
    assert classical(world / "train", reference, "--batch-size", "4") == 0
    got, expected = cache_arrays(interrupted), cache_arrays(reference)
    assert sorted(got) == sorted(expected) and len(got) == N_IMAGES
    for image_id, (cells, nuclei) in expected.items():
        np.testing.assert_array_equal(got[image_id][0], cells)
        np.testing.assert_array_equal(got[image_id][1], nuclei)
    columns = ["ID", "status", "n_cells", "params_hash", "seg_height"]
    assert MaskCache(interrupted).manifest()[columns].equals(MaskCache(reference).manifest()[columns])


def test_backend_hpa_without_weights_fails_listing_the_places(world, tmp_path, capsys):
    weights_dir = tmp_path / "my_weights"
    code = segment_cli("--images", world / "train", "--out", tmp_path / "masks", "--backend", "hpa",
                       "--weights-dir", weights_dir)
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("error:")
    assert str(weights_dir / "dpn_unet_nuclei_v1.pth") in err
    assert str(tmp_path / "default_weights") in err
    assert not (tmp_path / "masks").exists()


def test_backend_auto_says_it_used_classical(world, tmp_path, capsys):
    assert segment_cli("--images", world / "train", "--out", tmp_path / "masks", "--scale", "1",
                       "--num-workers", "0", "--ids", world / "train.csv") == 0
    out = capsys.readouterr().out
    assert "using classical backend" in out and str(tmp_path / "default_weights") in out
    assert (MaskCache(tmp_path / "masks").manifest()["backend"] == "classical").all()


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as exc:
        segment_cli("--help")
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and "cellcls segment --images" in text and "--devices" in text
    assert "Exit codes" in text


@pytest.mark.slow
def test_lightning_path_and_label_workers_write_the_same_cache_as_the_plain_path(world, tmp_path):
    from segment.lightning import run_segmentation_lightning

    backend = ClassicalBackend(scale=1.0, image_scale=0.25)
    plain = run_segmentation(world / "train", tmp_path / "plain", backend, num_workers=0, progress=False)
    lit = run_segmentation_lightning(world / "train", tmp_path / "lightning", backend, num_workers=0,
                                     batch_size=3, accelerator="cpu", devices=1, progress=False)
    pool = run_segmentation(world / "train", tmp_path / "pool", backend, num_workers=1, label_workers=2,
                            batch_size=5, progress=False)
    assert lit is not None and lit.done == plain.done == pool.done == N_IMAGES and lit.failed == pool.failed == 0
    expected = cache_arrays(tmp_path / "plain")
    for other in ("lightning", "pool"):
        got = cache_arrays(tmp_path / other)
        assert sorted(got) == sorted(expected)
        for image_id, (cells, nuclei) in expected.items():
            np.testing.assert_array_equal(got[image_id][0], cells)
            np.testing.assert_array_equal(got[image_id][1], nuclei)
        assert (tmp_path / other / "manifest.csv").is_file()


# ----------------------------------------------------------------------------- small pieces


def test_image_scale_auto_reads_world_json(world, tmp_path):
    assert resolve_image_scale(world / "train", "auto")[0] == 0.25
    assert resolve_image_scale(tmp_path, "auto") == (1.0, "default (no world.json: real HPA pixel size)")
    assert resolve_image_scale(world / "train", 0.5)[0] == 0.5


def test_read_ids_csv_takes_the_id_column_in_order_without_duplicates(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ID,Label\nb,0|1\na,3\nb,0|1\n")
    assert read_ids_csv(path) == ["b", "a"]
    tsv = tmp_path / "kaggle_2021.tsv"
    tsv.write_text("Image\tLabel\n10005_921_B9_1\t0\n")
    assert read_ids_csv(tsv) == ["10005_921_B9_1"]
    (tmp_path / "bad.csv").write_text("Name\nx\n")
    from cellcls.errors import BadLabelRowError

    with pytest.raises(BadLabelRowError, match="no ID column"):
        read_ids_csv(tmp_path / "bad.csv")


def test_cache_key_ingredients():
    from torch import nn

    from segment.labelling import LabelParams

    base = ClassicalBackend(scale=1.0, image_scale=0.25)
    assert base.params_hash() == ClassicalBackend(scale=1.0, image_scale=0.25).params_hash()
    assert base.params_hash() != ClassicalBackend(scale=0.5, image_scale=0.5).params_hash()  # same effective scale
    assert base.params_hash() != ClassicalBackend(scale=1.0, image_scale=0.3).params_hash()

    def hpa(**kw):
        options = dict(weights_id="a", scale=0.25, image_scale=1.0)
        options.update(kw)
        return HpaBackend.from_networks(nn.Identity(), nn.Identity(), **options)

    a = hpa()
    assert a.label_params == LabelParams().scaled(0.25)
    assert hpa(scale=1.0, image_scale=0.25).label_params == a.label_params
    assert a.params_hash() == hpa().params_hash()
    assert len({a.params_hash(), hpa(weights_id="b").params_hash(), hpa(tta="d4").params_hash(),
                hpa(scale=0.5).params_hash(), base.params_hash()}) == 5


def test_resolve_backend_auto_without_weights(tmp_path):
    name, reason = resolve_backend("auto", weights_dir=tmp_path)
    assert name == "classical" and str(tmp_path / "dpn_unet_nuclei_v1.pth") in reason
    assert resolve_backend("hpa")[0] == "hpa"
    from cellcls.errors import RegistryError

    with pytest.raises(RegistryError, match="classical"):
        resolve_backend("cellpose")


def test_execution_defaults_follow_backend_and_device():
    import os

    from segment.command import execution_defaults

    workers = min(4, os.cpu_count() or 1)
    # Networks on CPU: batch 1, decode in the main process (bigger batches and forked workers measured slower).
    assert execution_defaults("hpa", "cpu", None, None) == (1, 0)
    assert execution_defaults("hpa", "cuda", None, None) == (8, workers)
    assert execution_defaults("classical", "cpu", None, None) == (8, workers)
    # The user's values always win.
    assert execution_defaults("hpa", "cpu", 4, 2) == (4, 2)
    assert execution_defaults("hpa", "cuda", 24, 0) == (24, 0)
