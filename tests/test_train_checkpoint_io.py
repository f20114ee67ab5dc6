"""Checkpoints of ``cellcls train`` are written beside their target and renamed into place.

Lightning's own writer (fsspec's transaction) writes the temp file to the SYSTEM temp folder and then
moves it: across file systems that move is a copy, and a kill during it leaves a truncated
``last.ckpt`` (a torch zip error on ``--resume``). The trainer ``cellcls train`` builds must write the
temp file in the checkpoint's own folder and :func:`os.replace` it over the target.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
       "--trainer.strategy", "auto", "--trainer.logger", "false", "--model.backbone", "resnet10t"]


@pytest.fixture
def checkpoint_io(tmp_path):
    from train.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "demo_cell.yaml"), "--out", str(tmp_path / "run"), *CPU])
    return cli.trainer.strategy.checkpoint_io


def test_checkpoint_temp_file_is_in_the_checkpoint_folder(checkpoint_io, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system_tmp"  # stands for another file system
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    made = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        made.append(Path(name))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"state_dict": {"w": torch.arange(4.0)}, "global_step": 3}, target)

    assert made and all(p.parent == target.parent for p in made), made  # never the system temp folder
    loaded = torch.load(target, weights_only=True)
    assert loaded["global_step"] == 3 and torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # no temp file left
    assert list(system_tmp.iterdir()) == []


def test_failed_checkpoint_write_keeps_the_previous_file(checkpoint_io, tmp_path):
    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"global_step": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):
        checkpoint_io.save_checkpoint({"global_step": 2, "bad": lambda: None}, target)  # cannot be pickled
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_first_save_removes_the_temp_file_a_killed_save_left_and_keeps_a_fresh_one(checkpoint_io, tmp_path):
    import os
    import time

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    stale = folder / ".last.ckpt.k1ll3d.tmp"  # what atomic_file leaves when the process dies mid-save
    fresh = folder / ".best.ckpt.l1v3.tmp"  # another writer's, still being written
    for path in (stale, fresh):
        path.write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    checkpoint_io.save_checkpoint({"global_step": 1}, folder / "last.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == [".best.ckpt.l1v3.tmp", "last.ckpt"]
