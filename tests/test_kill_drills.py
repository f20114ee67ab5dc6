"""Kill drills: ``kill -9`` in the middle of ``segment``, ``train`` and ``predict``, rerun, compare.

Each drill starts the real command as a child process (``python -m cellcls ...``), waits until the
output folder shows partial progress (polled against a deadline, never a fixed sleep), sends SIGKILL,
checks what the killed run left, reruns the same command to completion and compares the result with
an uninterrupted run of the same command in another folder:

* segment: the entries the killed run committed read back intact; after the rerun every ID is "ok",
  every label map equals the uninterrupted run's (``np.array_equal``) and the manifest lists exactly
  the IDs (temp files of the killed writer are ignored);
* train: killed after the first epoch's checkpoint, ``--resume last`` finishes the run; the final
  ``last.ckpt`` loads, has the uninterrupted run's ``global_step`` and bit-identical weights (CPU,
  ``num_workers 0``, no augmentation, ``seed_everything``; see ``train/resume.py`` for what makes
  that hold, and what does not: augmented runs repeat when uninterrupted, but a resume restarts
  the augmentation streams);
* predict: after the kill the submission and the score table are absent or complete, never a part
  (both are published by rename) and the submission writer's spill folder is left; the rerun removes
  it (nothing of it reaches the output) and its submission is byte-identical to the uninterrupted one.

Plus the bad-files drill of ``python -m infer.kaggle``: a corrupt PNG, a missing channel and a
zero-byte file among the test images; the submission still has every sample ID, the three get the
empty placeholder row and are named, with the reason, in the printed summary and ``summary.json``.

One small synthetic world (``cellcls synth``) serves every drill; the uninterrupted runs and the
reruns go in-process, only the runs to kill are child processes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from cellcls.cli import main as cellcls_main

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.name != "posix", reason="the drills send SIGKILL")]

N_TRAIN, N_TEST, SIZE, EPOCHS = 16, 8, 256, 2
#: Ample for a loaded 2-core machine: the child must import torch before it makes any progress.
DEADLINE_S = 600.0


# ----------------------------------------------------------------------------- helpers
def _kill_when(argv: list[str], ready: Callable[[], bool], *, cwd: Path, log: Path) -> None:
    """Run ``python -m cellcls ARGV``; SIGKILL it as soon as ``ready()``; fail if it ended on its own first."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "cellcls", *argv], cwd=cwd, stdout=out,
                                 stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + DEADLINE_S
            while not ready() and child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            child.send_signal(signal.SIGKILL)  # a no-op when it has already exited
        finally:
            child.kill()
            child.wait()
    tail = log.read_text(errors="replace")[-3000:]
    assert ready(), f"no partial progress within {DEADLINE_S:.0f} s (exit code {child.returncode}):\n{tail}"
    assert child.returncode == -signal.SIGKILL, f"the run ended before the kill (exit {child.returncode}):\n{tail}"


def _entries(cache_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    from cellcls.masks import MaskCache

    cache = MaskCache(cache_dir)
    out = {}
    for image_id in cache.ids():
        entry = cache.read(image_id)
        out[image_id] = (entry.cells, entry.nuclei, entry.mask_key)
    return out


def _state(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------- the world
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drill_world")
    assert cellcls_main(["synth", "--out", str(root / "w"), "--train", str(N_TRAIN), "--test", str(N_TEST),
                         "--size", str(SIZE), "--seed", "3", "--no-progress"]) == 0
    return root / "w"


def _segment_argv(images: Path, out: Path) -> list[str]:
    # batch 1: every image is committed on its own, so the kill lands between images of one run
    return ["segment", "--images", str(images), "--out", str(out), "--backend", "classical", "--batch-size", "1",
            "--num-workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def train_masks(world) -> Path:
    """The uninterrupted segmentation of the train images (also what the training drill reads)."""
    out = world.parent / "masks_train"
    assert cellcls_main(_segment_argv(world / "train", out)) == 0
    return out


@pytest.fixture(scope="module")
def test_masks(world) -> Path:
    out = world.parent / "masks_test"
    assert cellcls_main(_segment_argv(world / "test", out)) == 0
    return out


def _train_argv(world: Path, masks: Path, out: Path) -> list[str]:
    # The monitored metric is constant (the class prior's F1): only epoch 0 is ever "best", so last.ckpt
    # must follow the run on its own (Lightning 2.6 stopped writing it without a new best).
    return ["train", "--out", str(out), "--seed_everything", "0", "--model.backbone", "resnet10t",
            "--model.lr", "3e-3", "--model.schedule", "constant", "--data.task", "cell",
            "--data.images", str(world / "train"), "--data.labels", str(world / "train.csv"),
            "--data.masks", str(masks), "--data.crop_size", "32", "--data.augment", "none",
            "--data.batch_size", "8", "--data.num_workers", "0", "--data.progress", "false",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", str(EPOCHS),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--checkpoint.monitor", "val/prior_macro_f1", "--checkpoint.mode", "max"]


@pytest.fixture(scope="module")
def clean_run(world, train_masks) -> Path:
    out = world.parent / "run_clean"
    assert cellcls_main(_train_argv(world, train_masks, out)) == 0
    return out


# ----------------------------------------------------------------------------- segment
def test_segment_killed_and_rerun_equals_uninterrupted(world, train_masks, tmp_path):
    from cellcls.masks import MaskCache

    out = tmp_path / "masks"
    argv = _segment_argv(world / "train", out)
    _kill_when(argv, lambda: any(out.glob("*.json")), cwd=tmp_path, log=tmp_path / "killed.log")

    cache, clean = MaskCache(out), _entries(train_masks)
    ids = sorted(clean)
    key = MaskCache(train_masks).read(ids[0]).params_hash
    statuses = {i: cache.status(i, key) for i in ids}
    assert set(statuses.values()) <= {"ok", "missing"}, statuses  # nothing half-written reads as an entry
    done = [i for i, s in statuses.items() if s == "ok"]
    assert 0 < len(done) < len(ids), statuses  # killed mid-run, after some images
    for image_id in done:  # what the killed run committed is intact
        entry = cache.read(image_id)
        assert np.array_equal(entry.cells, clean[image_id][0]) and np.array_equal(entry.nuclei, clean[image_id][1])

    assert cellcls_main(argv) == 0
    drilled = _entries(out)
    assert sorted(drilled) == ids
    for image_id in ids:
        assert np.array_equal(drilled[image_id][0], clean[image_id][0]), image_id
        assert np.array_equal(drilled[image_id][1], clean[image_id][1]), image_id
        assert drilled[image_id][2] == clean[image_id][2]
    manifest = pd.read_csv(out / "manifest.csv")
    assert sorted(manifest["ID"]) == ids and set(manifest["status"]) == {"ok"}
    # Anything else in the folder is a temp file of the killed writer: dot-named, never an entry.
    names = {p.name for p in out.iterdir()} - {f"{i}{s}" for i in ids for s in (".json", ".npz")} - {"manifest.csv"}
    assert all(n.startswith(".") and n.endswith(".tmp") for n in names), names


# ----------------------------------------------------------------------------- train
def test_train_killed_after_an_epoch_resumes_to_the_uninterrupted_weights(world, train_masks, clean_run, tmp_path):
    """Kill after epoch 0's ``last.ckpt``, ``--resume last``: same final step and bit-identical weights.

    Exact equality holds because the checkpoint carries the RNG states the next epoch's shuffle draws
    from (train.resume.RngState) and last.ckpt is rewritten every epoch (train.resume.LatestCheckpoint).
    """
    import torch

    from cellcls.models import load_model_from_checkpoint

    out = tmp_path / "run"
    argv = _train_argv(world, train_masks, out)
    last = out / "checkpoints" / "last.ckpt"
    _kill_when(argv, last.is_file, cwd=tmp_path, log=tmp_path / "killed.log")

    clean_last = _state(clean_run / "checkpoints" / "last.ckpt")
    per_epoch = _state(clean_run / "checkpoints" / "best-epoch00.ckpt")["global_step"]  # the only "best"
    final_step = per_epoch * EPOCHS
    assert clean_last["global_step"] == final_step > 0, "last.ckpt of the uninterrupted run is not its final state"
    left = _state(last)["global_step"]
    assert left % per_epoch == 0 and 0 < left < final_step  # an epoch-end checkpoint, run not finished

    assert cellcls_main([*argv, "--resume", "last"]) == 0
    resumed = _state(last)
    assert resumed["global_step"] == final_step
    assert resumed["state_dict"].keys() == clean_last["state_dict"].keys()
    for name, value in clean_last["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        sorted(p.name for p in (clean_run / "checkpoints").iterdir())
    model, _ = load_model_from_checkpoint(last)
    reference, _ = load_model_from_checkpoint(clean_run / "checkpoints" / "last.ckpt")
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


# ----------------------------------------------------------------------------- predict
def _predict_argv(world: Path, masks: Path, ckpt: Path, out: Path) -> list[str]:
    return ["predict", "--images", str(world / "test"), "--masks", str(masks), "--checkpoint", str(ckpt),
            "--sample", str(world / "sample_submission.csv"), "--out", str(out / "submission.csv"),
            "--scores", str(out / "scores.parquet"), "--tta", "d4", "--device", "cpu", "--no-segment",
            "--no-progress"]


def test_predict_killed_publishes_nothing_and_rerun_is_byte_identical(world, test_masks, clean_run, tmp_path):
    ckpt = clean_run / "checkpoints" / "last.ckpt"
    clean, drill = tmp_path / "clean", tmp_path / "drill"
    code = cellcls_main(_predict_argv(world, test_masks, ckpt, clean))
    assert code in (0, 3)

    argv = _predict_argv(world, test_masks, ckpt, drill)

    def spills() -> list[Path]:
        return sorted(drill.glob(".submission.csv.spill-*")) if drill.is_dir() else []

    # Killed as soon as the submission writer has made its spill folder (before the first image).
    _kill_when(argv, lambda: bool(spills()), cwd=tmp_path, log=tmp_path / "killed.log")
    for name in ("submission.csv", "scores.parquet"):  # absent, or complete: never a part of one
        assert not (drill / name).exists() or (drill / name).read_bytes() == (clean / name).read_bytes(), name
    left = spills()
    assert left  # what the drill is about: the killed run's spill folder
    (left[0] / "000000000").write_text("STALE,1,1,0 1 eNoLAAAA\n")  # were it drained, the output would differ

    assert cellcls_main(argv) == code
    assert spills() == []  # the rerun removed the killed run's spill folder (and its own)
    assert (drill / "submission.csv").read_bytes() == (clean / "submission.csv").read_bytes()
    assert (drill / "scores.parquet").read_bytes() == (clean / "scores.parquet").read_bytes()
    assert not list(drill.glob("*.partial"))  # the rerun replaced the killed run's partial files
    assert sorted(p.name for p in drill.iterdir()) == sorted(p.name for p in clean.iterdir())


# ----------------------------------------------------------------------------- bad files, infer.kaggle
def test_kaggle_notebook_names_and_placeholders_bad_test_files(world, clean_run, tmp_path, capsys, monkeypatch):
    from cellcls.submission import NO_PREDICTION
    from infer import kaggle

    root = tmp_path / "input"
    comp = root / kaggle.COMPETITION
    shutil.copytree(world / "test", comp / "test")
    shutil.copy(world / "sample_submission.csv", comp)
    shutil.copy(world / "world.json", comp)  # quarter-size synthetic images: segment them as they are
    (root / "my-models").mkdir(parents=True)
    shutil.copy(clean_run / "checkpoints" / "last.ckpt", root / "my-models" / "last.ckpt")
    ids = pd.read_csv(world / "sample_submission.csv")["ID"].tolist()
    bad = {ids[0]: f"{ids[0]}_green.png", ids[3]: f"{ids[3]}_blue.png", ids[5]: f"{ids[5]}_yellow.png"}
    (comp / "test" / bad[ids[0]]).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # corrupt PNG
    (comp / "test" / bad[ids[3]]).unlink()                                                    # missing channel
    (comp / "test" / bad[ids[5]]).write_bytes(b"")                                            # zero-byte file

    out, scratch = tmp_path / "working" / "submission.csv", tmp_path / "temp"
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))),
                                                         real_replace(src, dst))[1])
    code = kaggle.main(["--input-root", str(root), "--out", str(out), "--scratch", str(scratch), "--device", "cpu",
                        "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "passes check-submission" in printed

    written = pd.read_csv(out)
    assert written["ID"].tolist() == ids  # complete: every sample ID, in sample order
    rows = dict(zip(written["ID"], written["PredictionString"]))
    placeholders = json.loads((scratch / "summary.json").read_text())["placeholders"]
    # summary.json appears whole: renamed from a temp file in its own folder, nothing else left there
    assert [src.parent for src, dst in replaced if dst == scratch / "summary.json"] == [scratch]
    assert not [p for p in scratch.iterdir() if p.name.startswith(".summary.json")]
    assert sorted(placeholders) == sorted(bad)
    assert "3 image(s) got the empty placeholder row" in printed
    for image_id, file_name in bad.items():
        assert rows[image_id] == NO_PREDICTION
        assert file_name in placeholders[image_id]  # the reason names the bad file
        assert f"{image_id}: " in printed
    assert all(rows[i] != NO_PREDICTION for i in ids if i not in bad)
    assert "empty file (0 bytes)" in placeholders[ids[5]]  # not the PNG decoder's "bad signature"
