"""``python -m infer.kaggle`` end to end, offline, in a folder laid out like ``/kaggle/input``.

A synthetic world (cellcls synth) gives train and test images with per-cell truth. The train images
are segmented (classical backend), a tiny cell model is trained on them through the training stage
(soft per-cell labels taken from the world's truth, so that a few epochs learn something), and saved
as a deployable checkpoint (Lightning ``save_checkpoint(weights_only=True)``). The test set gets one
corrupt PNG and one image without its blue channel. Then the notebook runs with every socket
connection refused and must write a submission that passes check-submission, lists every ID, names
both bad images, and scores above the class-prior baseline.
"""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellcls.cli import main as cellcls_main

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, SIZE = 24, 6, 256


def _cell_labels(world: Path, masks: Path, out: Path) -> Path:
    """Soft labels of every segmented train cell: the labels of the true cell it overlaps most (else Negative)."""
    import cv2

    from cellcls.masks import MaskCache
    from cellcls.scores import score_frame, write_scores

    truth = pd.read_csv(world / "truth" / "cells.csv", dtype={"ID": str, "labels": str})
    labels = {(r.ID, int(r.cell_id)): [int(c) for c in str(r.labels).split("|")] for r in truth.itertuples()}
    reader = MaskCache(masks).reader()
    frames = []
    for image_id in reader.ids():
        entry = reader.read(image_id, upscale=True)
        cell_ids, targets = [], []
        true = cv2.imread(str(world / "truth" / f"{image_id}_cells.png"), cv2.IMREAD_UNCHANGED).astype(np.int64)
        for cell in np.unique(entry.cells[entry.cells > 0]).tolist():
            hits = true[entry.cells == cell]
            hits = hits[hits > 0]
            target = np.zeros(19, dtype=np.float32)
            best = int(np.bincount(hits).argmax()) if hits.size else 0
            for c in labels.get((image_id, best), [18]):
                target[c] = 1.0
            cell_ids.append(cell)
            targets.append(target)
        if cell_ids:
            frames.append(score_frame(image_id, cell_ids, np.stack(targets), mask_key=entry.mask_key, source="truth"))
    write_scores(pd.concat(frames, ignore_index=True), out)
    return out


def _train(tmp: Path, world: Path, masks: Path, cell_labels: Path) -> Path:
    from train.cli import build_cli, fit

    args = ["--out", str(tmp / "run"), "--seed_everything", "0", "--model.backbone", "resnet10t",
            "--model.lr", "3e-3", "--model.schedule", "constant", "--data.task", "cell",
            "--data.images", str(world / "train"), "--data.labels", str(world / "train.csv"),
            "--data.masks", str(masks), "--data.crop_size", "48", "--data.cell_labels", str(cell_labels),
            "--data.augment", "d4", "--data.batch_size", "16", "--data.num_workers", "0", "--data.full", "true",
            "--data.progress", "false", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.max_epochs", "6", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", "false"]
    cli = build_cli(args)
    fit(cli)
    path = tmp / "deploy.ckpt"
    cli.trainer.save_checkpoint(path, weights_only=True)
    return path


def _kaggle_layout(tmp: Path, world: Path, ckpt: Path) -> tuple[Path, list[str]]:
    root = tmp / "input"
    comp = root / "hpa-single-cell-image-classification"
    shutil.copytree(world / "test", comp / "test")
    shutil.copy(world / "sample_submission.csv", comp)
    shutil.copy(world / "world.json", comp)  # the synthetic images are quarter-size: segment them as they are
    (root / "my-models" / "fold0").mkdir(parents=True)
    shutil.copy(ckpt, root / "my-models" / "fold0" / "best-epoch05.ckpt")
    ids = pd.read_csv(world / "sample_submission.csv")["ID"].tolist()
    (comp / "test" / f"{ids[1]}_green.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (comp / "test" / f"{ids[2]}_blue.png").unlink()
    return root, [ids[1], ids[2]]


def test_kaggle_notebook_offline_end_to_end(tmp_path, monkeypatch, capsys):
    world = tmp_path / "world"
    assert cellcls_main(["synth", "--out", str(world), "--train", str(N_TRAIN), "--test", str(N_TEST),
                         "--size", str(SIZE), "--seed", "1", "--no-progress"]) == 0
    masks = tmp_path / "masks_train"
    assert cellcls_main(["segment", "--images", str(world / "train"), "--out", str(masks), "--backend",
                         "classical", "--no-progress"]) == 0
    ckpt = _train(tmp_path, world, masks, _cell_labels(world, masks, tmp_path / "cell_labels.csv"))
    root, bad = _kaggle_layout(tmp_path, world, ckpt)

    def refuse(*args, **kwargs):
        raise OSError("network access attempted during offline inference")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    from infer import kaggle

    out, scratch = tmp_path / "working" / "submission.csv", tmp_path / "temp"
    code = kaggle.main(["--input-root", str(root), "--out", str(out), "--scratch", str(scratch), "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "best-epoch05.ckpt" in printed and "not found (classical backend)" in printed
    assert "passes check-submission" in printed
    monkeypatch.undo()

    sample = pd.read_csv(world / "sample_submission.csv")
    written = pd.read_csv(out)
    assert written["ID"].tolist() == sample["ID"].tolist()
    summary = json.loads((scratch / "summary.json").read_text())
    assert sorted(summary["placeholders"]) == sorted(bad)
    for image_id in bad:
        assert image_id in printed

    from cellcls.metric import evaluate

    prior = tmp_path / "prior.csv"
    assert cellcls_main(["prior-submission", "--masks", str(scratch / "masks"), "--sample",
                         str(world / "sample_submission.csv"), "--labels", str(world / "train.csv"), "--out",
                         str(prior), "--no-progress"]) == 0
    ours, floor = evaluate(world / "solution.csv", out).map, evaluate(world / "solution.csv", prior).map
    print(f"mAP: model {ours:.4f}, prior {floor:.4f}")
    assert ours > floor
