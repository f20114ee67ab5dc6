"""infer.predict: per-cell scores aligned by cell id, placeholders, ensembles, image-task models, OOF, budget.

A hand-made world: 64 x 64 images with square cells of different content, label maps stored at
half scale (32 x 32) in a mask cache, and random-weight checkpoints built like ``cellcls train``'s
(tests/test_checkpoints.py). Random weights give every distinct crop its own scores, which is all
these tests need: they check WHICH scores land on which cell, not whether they are good.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cellcls import rle
from cellcls.io import write_image
from cellcls.masks import MaskCache
from cellcls.scores import read_scores, score_matrix
from cellcls.submission import NO_PREDICTION, SampleRow, parse_prediction_string, read_submission
from test_checkpoints import make_checkpoint

SIZE = 64
IDS = ["a", "b", "c"]


def _labels(k: int) -> np.ndarray:
    """A 32 x 32 map (half scale) with cells 3, 7 and 12 (gaps on purpose) placed per image."""
    labels = np.zeros((32, 32), dtype=np.uint16)
    labels[2 + k:12 + k, 2:12] = 3
    labels[16:28, 4:14] = 7
    labels[5:20, 18:30 - k] = 12
    return labels


def _world(root: Path, ids=IDS) -> dict:
    rng = np.random.default_rng(0)
    cache = MaskCache(root / "masks")
    for k, image_id in enumerate(ids):
        image = rng.integers(0, 255, size=(SIZE, SIZE, 4)).astype(np.uint8)
        write_image(root / "images", image_id, image)
        labels = _labels(k)
        cache.write(image_id, labels, labels, original_shape=(SIZE, SIZE), scale=0.5, backend="test",
                    params_hash="test-masks")
    cache.write_manifest()
    sample = [SampleRow(i, SIZE, SIZE) for i in ids]
    return {"images": root / "images", "masks": root / "masks", "sample": sample, "cache": cache}


def _run(world, tmp_path, ckpts, *, config=None, ids=None, fold_of=None, budget=None, name="run"):
    from infer.config import InferConfig
    from infer.predict import load_models, predict_images

    config = config or InferConfig(tta="none", num_workers=0)
    models = load_models(ckpts, config)
    reader = world["cache"].reader()
    sub = None if fold_of is not None else tmp_path / f"{name}.csv"
    summary = predict_images(ids or [r.id for r in world["sample"]], images_dir=world["images"], reader=reader,
                             models=models, config=config, sample=world["sample"], submission_path=sub,
                             scores_path=tmp_path / f"{name}.parquet", fold_of=fold_of, budget=budget, progress=False)
    return summary, read_scores(tmp_path / f"{name}.parquet"), sub


def _direct(world, ckpt, image_id, *, mode=None, size=None, whole=False) -> dict[int, np.ndarray]:
    """cell id -> sigmoid(model(crop)) computed one cell at a time, straight from the parts."""
    from cellcls.checkpoints import read_inference_checkpoint
    from cellcls.crops import crop_cells
    from cellcls.io import read_image
    from cellcls.masks.table import cell_table
    from cellcls.normalize import image_to_model_input, to_model_input

    model, meta = read_inference_checkpoint(ckpt)
    entry = world["cache"].read(image_id)
    image = read_image(world["images"], image_id)
    rows = cell_table(entry.cells, entry.nuclei, image_id=image_id, original_shape=entry.original_shape,
                      mask_key=entry.mask_key)
    out = {}
    with torch.no_grad():
        if whole:
            x = torch.from_numpy(image_to_model_input(image, meta.image_size, meta.mean, meta.std))[None]
            p = torch.sigmoid(model(x))[0].numpy()
            return {int(c): p for c in rows["cell_id"]}
        for i in range(len(rows)):
            one = rows.iloc[[i]]
            crop = crop_cells(image, entry.cells, one, mode=mode or meta.crop_mode, size=size or meta.crop_size,
                              margin=meta.crop_margin if meta.crop_margin is not None else 0.1)
            out[int(one["cell_id"].iloc[0])] = torch.sigmoid(model(to_model_input(crop, meta.mean, meta.std)))[0].numpy()
    return out


def _by_cell(frame, image_id) -> dict[int, np.ndarray]:
    rows = frame[frame["ID"] == image_id]
    return dict(zip(rows["cell_id"].tolist(), score_matrix(rows)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {
        "cell0": make_checkpoint(root / "cell0.ckpt", crop_size=32, fold=0, seed=0),
        "cell1": make_checkpoint(root / "cell1.ckpt", crop_size=24, fold=1, seed=1),
        "image": make_checkpoint(root / "image.ckpt", task="image", image_size=48, fold=0, seed=2),
    }


def test_every_cell_gets_the_scores_of_its_own_crop_in_table_and_submission(world, ckpts, tmp_path):
    summary, table, sub = _run(world, tmp_path, [ckpts["cell0"]])
    assert summary.n_scored == 3 and summary.n_cells == 9 and not summary.placeholders
    written = {row.id: row for row in read_submission(sub)}
    for image_id in IDS:
        expected = _direct(world, ckpts["cell0"], image_id)
        got = _by_cell(table, image_id)
        assert sorted(got) == [3, 7, 12]
        entry = world["cache"].read(image_id)
        assert set(table.loc[table["ID"] == image_id, "mask_key"]) == {entry.mask_key}
        masks = rle.encode_label_map(entry.cells, out_shape=(SIZE, SIZE))
        triplets = parse_prediction_string(written[image_id].prediction_string, image_id=image_id)
        for cell, scores in expected.items():
            np.testing.assert_allclose(got[cell], scores, atol=1e-6)
            from_file = {t.class_id: t.confidence for t in triplets if t.mask == masks[cell]}
            assert sorted(from_file) == list(range(19))
            np.testing.assert_allclose([from_file[c] for c in range(19)], scores, atol=1e-4)
    assert not np.allclose(_by_cell(table, "a")[3], _by_cell(table, "a")[7])  # the check above can fail


def test_bad_images_get_the_placeholder_and_are_named(tmp_path, ckpts):
    ids = ["ok", "corrupt", "nochannel", "nocells", "nomask"]
    world = _world(tmp_path, ids[:4])
    (world["images"] / "corrupt_green.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    (world["images"] / "nochannel_yellow.png").unlink()
    empty = np.zeros((32, 32), dtype=np.uint16)
    world["cache"].write("nocells", empty, empty, original_shape=(SIZE, SIZE), scale=0.5, backend="test",
                         params_hash="test-masks")
    world["sample"] = [SampleRow(i, SIZE, SIZE) for i in ids]
    summary, table, sub = _run(world, tmp_path, [ckpts["cell0"]], ids=ids)
    assert set(summary.placeholders) == {"corrupt", "nochannel", "nocells", "nomask"}
    assert "unreadable" in summary.placeholders["corrupt"] and "no cells" in summary.placeholders["nocells"]
    assert "mask" in summary.placeholders["nomask"]
    rows = {row.id: row.prediction_string for row in read_submission(sub)}
    assert list(rows) == ids
    assert rows["ok"] != NO_PREDICTION and all(rows[i] == NO_PREDICTION for i in ids[1:])
    assert set(table["ID"]) == {"ok"}


def test_ensemble_is_the_weighted_mean_of_its_members(world, ckpts, tmp_path):
    from infer.config import InferConfig, ModelOptions

    members = [ckpts["cell0"], ckpts["cell1"]]
    _, one, _ = _run(world, tmp_path, members[:1], name="one")
    _, two, _ = _run(world, tmp_path, members[1:], name="two")
    config = InferConfig(tta="none", num_workers=0, models=(ModelOptions(str(members[0]), weight=3.0),))
    _, both, _ = _run(world, tmp_path, members, config=config, name="both")
    for image_id in IDS:
        a, b, m = _by_cell(one, image_id), _by_cell(two, image_id), _by_cell(both, image_id)
        for cell in a:
            np.testing.assert_allclose(m[cell], (3 * a[cell] + b[cell]) / 4, atol=1e-6)


def test_image_task_checkpoint_scores_crops_or_the_whole_image(world, ckpts, tmp_path):
    from infer.config import InferConfig

    config = InferConfig(tta="none", num_workers=0, image_crop_size=40)
    _, on_crops, _ = _run(world, tmp_path, [ckpts["image"]], config=config, name="crops")
    expected = _direct(world, ckpts["image"], "b", mode="masked", size=40)
    for cell, scores in _by_cell(on_crops, "b").items():
        np.testing.assert_allclose(scores, expected[cell], atol=1e-6)
    config = InferConfig(tta="none", num_workers=0, image_on_crops=False)
    _, whole, _ = _run(world, tmp_path, [ckpts["image"]], config=config, name="whole")
    expected = _direct(world, ckpts["image"], "b", whole=True)
    for cell, scores in _by_cell(whole, "b").items():
        np.testing.assert_allclose(scores, expected[cell], atol=1e-6)


def test_mean_blend_mixes_cell_and_image_models(world, ckpts, tmp_path):
    from infer.config import InferConfig

    config = InferConfig(tta="none", num_workers=0, blend="mean:w=0.7")
    _, blended, _ = _run(world, tmp_path, [ckpts["cell0"], ckpts["image"]], config=config, name="mean")
    cell = _direct(world, ckpts["cell0"], "c")
    image = _direct(world, ckpts["image"], "c", whole=True)
    for c, scores in _by_cell(blended, "c").items():
        np.testing.assert_allclose(scores, 0.7 * cell[c] + 0.3 * image[c], atol=1e-6)


def test_dark_blend_reads_each_cells_protein_signal_from_its_image(world, ckpts, tmp_path):
    from cellcls.io import read_image
    from infer.config import InferConfig

    config = InferConfig(tta="none", num_workers=0, blend="cell+dark")
    _, blended, _ = _run(world, tmp_path, [ckpts["cell0"]], config=config, name="dark")
    cell = _direct(world, ckpts["cell0"], "b")
    # the plain path: the half-scale map repeated 2 x 2, each cell's 99th percentile of green minus the
    # background median, against the 90th percentile of the image's cells
    cells = np.kron(_labels(1), np.ones((2, 2), np.uint16))
    green = read_image(world["images"], "b")[..., 1].astype(np.float64)
    ids = [3, 7, 12]
    signal = np.array([np.percentile(green[cells == c], 99) for c in ids]) - np.median(green[cells == 0])
    darkness = np.clip(1 - signal / np.percentile(signal, 90), 0, 1)
    got = _by_cell(blended, "b")
    for c, d in zip(ids, darkness):
        np.testing.assert_allclose(got[c][:18], cell[c][:18] * (1 - d), atol=1e-6)
        np.testing.assert_allclose(got[c][18], 0.5 * (cell[c][18] + d), atol=1e-6)
    assert darkness.max() > 0  # the random images do differ between cells


def test_out_of_fold_uses_only_the_checkpoint_of_each_images_fold(world, ckpts, tmp_path):
    fold_of = {"a": 0, "b": 1, "c": 0}
    _, oof, _ = _run(world, tmp_path, [ckpts["cell0"], ckpts["cell1"]], fold_of=fold_of, name="oof")
    for image_id, fold in fold_of.items():
        expected = _direct(world, ckpts[f"cell{fold}"], image_id)
        for cell, scores in _by_cell(oof, image_id).items():
            np.testing.assert_allclose(scores, expected[cell], atol=1e-6)


def test_a_spent_time_budget_sheds_tta_first(world, ckpts, tmp_path):
    from infer.config import InferConfig
    from infer.predict import TimeBudget

    config = InferConfig(tta="d4", num_workers=0, max_group_images=1)
    summary, table, _ = _run(world, tmp_path, [ckpts["cell0"], ckpts["cell1"]], config=config,
                             budget=TimeBudget(seconds=0.0), name="budget")
    assert summary.degraded[0].startswith("TTA switched to 'none'")
    assert any("dropped 1 model" in step for step in summary.degraded)
    assert "tta=none" in table.loc[table["ID"] == "c", "source"].iloc[0]
    assert summary.n_scored == 3


def test_predict_command_summary_appears_whole(world, ckpts, tmp_path, monkeypatch):
    """``--summary`` is renamed into place from a temp file in its own folder (old file or new, never a part)."""
    import json
    import os

    from cellcls.cli import main as cellcls_main

    sample = tmp_path / "sample.csv"
    sample.write_text("ID,ImageWidth,ImageHeight,PredictionString\n"
                      + "".join(f"{i},{SIZE},{SIZE},0 1 {rle.EMPTY_MASK_FULL_FRAME}\n" for i in IDS))
    summary = tmp_path / "out" / "summary.json"
    summary.parent.mkdir()
    summary.write_text("an earlier run's summary")
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((Path(src), Path(dst))),
                                                         real_replace(src, dst))[1])
    code = cellcls_main(["predict", "--images", str(world["images"]), "--masks", str(world["masks"]),
                         "--checkpoint", str(ckpts["cell0"]), "--sample", str(sample), "--out",
                         str(tmp_path / "sub.csv"), "--summary", str(summary), "--tta", "none", "--device", "cpu",
                         "--no-segment", "--no-progress"])
    assert code == 0
    assert [src.parent for src, dst in replaced if dst == summary] == [summary.parent]
    written = json.loads(summary.read_text())
    assert written["n_scored"] == 3 and written["n_cells"] == 9 and written["placeholders"] == {}
    assert sorted(p.name for p in summary.parent.iterdir()) == ["summary.json"]
