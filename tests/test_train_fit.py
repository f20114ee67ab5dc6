"""Training stage end to end on a tiny world made here: learning, resume, reload, errors, DDP, cell task.

The world: 48x48 images of 4 square "cells" (2x2 grid). Classes 0, 1, 2 each light one channel of a
cell (red, yellow, green); an image carries the union of its cells' classes. Learnable in a few
steps from scratch, so a 2-epoch run must beat the input-blind prior.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch

from cellcls.errors import CacheError, CellclsError, MissingChannelError
from cellcls.io import write_image
from cellcls.masks.cache import MaskCache

SIZE = 48
CHANNEL_OF_CLASS = {0: 0, 1: 3, 2: 1}  # class -> channel index (red, yellow, green)


def _cell_map() -> np.ndarray:
    cells = np.zeros((SIZE, SIZE), dtype=np.uint16)
    for k, (r, c) in enumerate([(2, 2), (2, 26), (26, 2), (26, 26)], start=1):
        cells[r:r + 20, c:c + 20] = k
    return cells


def make_world(root: Path, *, n: int = 48, seed: int = 0, bits: int = 8, masks: bool = False) -> dict[str, Path]:
    """Images, train.csv (with antibody groups), folds.csv, stats.json, solution/cell truth; optional mask cache."""
    from cellcls.rle import encode_label_map

    rng = np.random.default_rng(seed)
    cells = _cell_map()
    top = 255 if bits == 8 else 65535
    rows, cell_rows, solution = [], [], []
    images = root / "train"
    cache = MaskCache(root / "masks") if masks else None
    strings = encode_label_map(cells)
    for i in range(n):
        image_id = f"img{i:03d}"
        image = np.zeros((SIZE, SIZE, 4), dtype=np.uint8 if bits == 8 else np.uint16)
        image[..., 2] = np.where(cells > 0, top // 3, 0)  # nuclei-ish blue everywhere in cells
        labels = set()
        triplets = []
        for k in range(1, 5):
            cls = int(rng.integers(0, 3))
            labels.add(cls)
            channel = CHANNEL_OF_CLASS[cls]
            image[..., channel] = np.where(cells == k, top * 3 // 4, image[..., channel])
            cell_rows.append((image_id, k, str(cls)))
            triplets.append(f"{cls} 1 {strings[k]}")
        write_image(images, image_id, image)
        rows.append((image_id, "|".join(str(c) for c in sorted(labels)), f"HPA{i // 2:03d}"))
        solution.append((image_id, SIZE, SIZE, " ".join(triplets)))
        if cache is not None:
            cache.write(image_id, cells, cells, original_shape=(SIZE, SIZE), scale=1.0, backend="test",
                        params_hash="test-masks")
    if cache is not None:
        cache.write_manifest()
    labels = root / "train.csv"
    pd.DataFrame(rows, columns=["ID", "Label", "group"]).to_csv(labels, index=False)
    folds = root / "folds.csv"
    pd.DataFrame({"ID": [r[0] for r in rows], "fold": [int(r[2][3:]) % 4 for r in rows]}).to_csv(folds, index=False)
    stats = root / "stats.json"
    stats.write_text(json.dumps({"channels": ["red", "green", "blue", "yellow"], "mean": [0.2, 0.2, 0.2, 0.2],
                                 "std": [0.3, 0.3, 0.3, 0.3], "n_images": n, "n_pixels": n * SIZE * SIZE,
                                 "size": None}))
    sol = root / "solution_train.csv"
    pd.DataFrame(solution, columns=["ID", "ImageWidth", "ImageHeight", "PredictionString"]).to_csv(sol, index=False)
    return {"images": images, "labels": labels, "folds": folds, "stats": stats, "masks": root / "masks",
            "solution": sol, "root": root}


def _args(world: dict[str, Path], out: Path, *extra: str, task: str = "image") -> list[str]:
    args = [
        "--out", str(out), "--seed_everything", "0",
        "--model.backbone", "resnet10t", "--model.lr", "3e-3", "--model.schedule", "constant",
        "--data.task", task, "--data.images", str(world["images"]), "--data.labels", str(world["labels"]),
        "--data.folds", str(world["folds"]), "--data.stats", str(world["stats"]), "--data.augment", "none",
        "--data.batch_size", "8", "--data.num_workers", "0", "--data.progress", "false",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
    ]
    if task == "image":
        args += ["--data.image_size", str(SIZE)]
    else:
        args += ["--data.masks", str(world["masks"]), "--data.crop_size", "24", "--data.solution",
                 str(world["solution"])]
    return args + list(extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("world"), masks=True)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    """One 2-epoch image-task run shared by the learning, checkpoint and resume tests."""
    from train.cli import build_cli, fit

    out = tmp_path_factory.mktemp("run")
    cli = build_cli(_args(world, out))
    cli.datamodule.setup("fit")
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    cli = build_cli(_args(world, out))  # fresh trainer: validate() above counted no training steps
    result = fit(cli)
    return {"cli": cli, "result": result, "before": before, "out": out}


@pytest.mark.slow
def test_two_epochs_learn(trained):
    metrics, before = trained["result"]["metrics"], trained["before"]
    assert metrics["val/loss"] < before["val/loss"]
    assert metrics["val/macro_f1"] > metrics["val/prior_macro_f1"]
    frame = pd.read_csv(Path(trained["cli"].trainer.loggers[0].log_dir) / "metrics.csv")
    assert frame["val/focal"].dropna().size == 2  # CSV log: one validation row per epoch
    assert any(Path(trained["out"], "tb").rglob("events.out.tfevents.*"))  # TensorBoard


@pytest.mark.slow
def test_checkpoint_is_self_contained_and_reloads_identically(trained, world):
    from cellcls.models import load_model_from_checkpoint
    from train.module import CHECKPOINT_KEY

    last = Path(trained["result"]["last"])
    raw = torch.load(last, map_location="cpu", weights_only=True)  # plain types only
    meta = raw[CHECKPOINT_KEY]
    assert meta["task"] == "image" and meta["image_size"] == SIZE
    assert len(meta["classes"]) == 19 and len(meta["thresholds"]) == 19
    assert meta["stats"]["mean"] == [0.2] * 4 and meta["model"]["name"] == "resnet10t"
    model, hparams = load_model_from_checkpoint(last)
    assert hparams["backbone"] == "resnet10t"
    module = trained["cli"].model.eval()
    x = torch.randn(3, 4, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(model(x), module.model(x))


@pytest.mark.slow
def test_resume_continues_from_saved_step(trained, world, tmp_path):
    from train.cli import build_cli, fit

    saved = torch.load(trained["result"]["last"], map_location="cpu", weights_only=True)["global_step"]
    assert saved == trained["result"]["global_step"] > 0
    cli = build_cli(_args(world, trained["out"], "--resume", "last", "--max-epochs", "3"))
    result = fit(cli)
    assert result["global_step"] > saved
    assert result["global_step"] - saved == saved // 2  # exactly one more epoch, not a restart


def test_missing_image_is_one_clear_error(tmp_path):
    from train.data import HpaDataModule

    world = make_world(tmp_path, n=8)
    (world["images"] / "img003_green.png").unlink()
    dm = HpaDataModule(images=str(world["images"]), labels=str(world["labels"]), folds=str(world["folds"]))
    with pytest.raises(MissingChannelError, match=r"img003.*green") as info:
        dm.setup("fit")
    assert str(world["images"]) in str(info.value) and "1 of the 8 images" in str(info.value)


def test_missing_mask_entry_is_one_clear_error(tmp_path):
    from train.data import HpaDataModule

    world = make_world(tmp_path, n=8, masks=True)
    os.remove(MaskCache(world["masks"]).sidecar_path("img005"))
    dm = HpaDataModule(images=str(world["images"]), labels=str(world["labels"]), folds=str(world["folds"]),
                       task="cell", masks=str(world["masks"]), crop_size=24)
    with pytest.raises(CacheError, match="img005"):
        dm.setup("fit")


def test_sixteen_bit_inputs_give_the_eight_bit_samples(tmp_path):
    from train.data import HpaDataModule

    samples = []
    for bits in (8, 16):
        world = make_world(tmp_path / str(bits), n=8, bits=bits, masks=True)
        dm = HpaDataModule(images=str(world["images"]), labels=str(world["labels"]), folds=str(world["folds"]),
                           stats=str(world["stats"]), task="cell", masks=str(world["masks"]), crop_size=24,
                           augment="none", progress=False)
        dm.setup("fit")
        assert dm.train_set.crops.dtype == (np.uint8 if bits == 8 else np.uint16)
        samples.append(dm.val_set[0][0].numpy())
    np.testing.assert_allclose(samples[0], samples[1], atol=2e-2)  # 191/255 vs 49151/65535


def test_cell_task_broadcast_and_soft_labels(world, tmp_path):
    from train.data import HpaDataModule

    common = dict(images=str(world["images"]), labels=str(world["labels"]), folds=str(world["folds"]),
                  task="cell", masks=str(world["masks"]), crop_size=24, progress=False)
    weak = HpaDataModule(**common)
    weak.setup("fit")
    table = pd.read_csv(world["labels"])
    n_train_images = len(table) - (pd.read_csv(world["folds"])["fold"] == 0).sum()
    assert len(weak.train_set) == 4 * n_train_images  # every cell of every train image
    labels = dict(zip(table["ID"], table["Label"]))
    first = weak.train_set.targets[0]
    assert first.sum() == len(str(labels[weak.train_cells[0][0]]).split("|"))  # image labels broadcast
    from cellcls.masks import MaskCache
    from cellcls.scores import score_frame

    rng = np.random.default_rng(0)
    soft_values = rng.random((len(weak.train_cells), 19)).astype(np.float32)
    cache = MaskCache(world["masks"])
    ids = np.array([i for i, _ in weak.train_cells])
    cell_ids = np.array([c for _, c in weak.train_cells])
    scores = pd.concat([score_frame(i, cell_ids[ids == i], soft_values[ids == i], mask_key=cache.read(i).mask_key,
                                    source="test") for i in dict.fromkeys(ids)], ignore_index=True)
    path = tmp_path / "scores.parquet"
    scores.sample(frac=1.0, random_state=0).to_parquet(path)  # row order must not matter
    soft = HpaDataModule(**common, cell_labels=str(path))
    soft.setup("fit")
    np.testing.assert_allclose(soft.train_set.targets, soft_values)
    np.testing.assert_array_equal(soft.val_set.targets, weak.val_set.targets)  # validation stays on image labels
    scores.iloc[1:].to_parquet(path)
    with pytest.raises(CellclsError, match=f"ID {weak.train_cells[0][0]}, cell {weak.train_cells[0][1]}"):
        HpaDataModule(**common, cell_labels=str(path)).setup("fit")
    other_masks = scores.assign(mask_key=np.where(scores["ID"] == ids[0], "0" * 12 + "-" + "1" * 12, scores["mask_key"]))
    other_masks.to_parquet(path)
    with pytest.raises(CellclsError, match=f"image {ids[0]} has mask_key"):
        HpaDataModule(**common, cell_labels=str(path)).setup("fit")


def test_dark_negative_teaches_cells_without_green_signal_negative(world, tmp_path):
    """In this world only class 2 lights the green channel: with dark_negative, the other cells of an
    image that has a class-2 cell lose their image's labels to Negative; an image without any green
    signal has nothing to compare with and keeps its broadcast labels."""
    from cellcls.signal import dark_cell_targets
    from train.data import HpaDataModule

    common = dict(images=str(world["images"]), labels=str(world["labels"]), folds=str(world["folds"]),
                  task="cell", masks=str(world["masks"]), crop_size=24, progress=False)
    weak, dark = HpaDataModule(**common), HpaDataModule(**common, dark_negative=True)
    weak.setup("fit")
    dark.setup("fit")
    from cellcls.io import read_image

    cells = _cell_map()
    green = {cell: read_image(world["images"], cell[0])[..., 1][cells == cell[1]].max() > 0 for cell in dark.train_cells}
    green_images = {image_id for (image_id, _), lit in green.items() if lit}
    seen = set()
    for cell, broadcast, target in zip(dark.train_cells, weak.train_set.targets, dark.train_set.targets):
        if cell[0] not in green_images:
            np.testing.assert_array_equal(target, broadcast)
            seen.add("no green")
        elif green[cell]:
            np.testing.assert_array_equal(target, broadcast)   # the bright cell: darkness 0
            seen.add("bright")
        else:
            assert target[18] == 1.0 and target[:18].sum() == 0.0  # a dark cell of a green image
            seen.add("dark")
    assert seen == {"no green", "bright", "dark"}
    np.testing.assert_array_equal(dark.val_set.targets, weak.val_set.targets)  # validation stays on image labels
    assert dark.inference_metadata()["dark_negative"] is True
    assert weak.inference_metadata()["dark_negative"] is False
    darkness = np.array([dark.cell_darkness[c] for c in dark.train_cells])
    np.testing.assert_array_equal(dark.train_set.targets, dark_cell_targets(weak.train_set.targets, darkness))


@pytest.mark.slow
def test_cell_task_fit_reports_cell_map_and_mask_key(world, tmp_path):
    from train.cli import build_cli, fit
    from train.module import CHECKPOINT_KEY

    result = fit(build_cli(_args(world, tmp_path, "--max-epochs", "1", task="cell")))
    assert 0.0 <= result["metrics"]["val/cell_map"] <= 1.0
    meta = torch.load(result["last"], map_location="cpu", weights_only=True)[CHECKPOINT_KEY]
    entry = MaskCache(world["masks"]).read("img000")
    assert meta["task"] == "cell" and meta["crop_mode"] == "masked" and meta["crop_size"] == 24
    assert meta["mask_key"] == entry.mask_key.split("-")[0]


class ParameterChecksum(pl.Callback):
    """Each rank writes the sum of its parameters after training (module level: ddp_spawn pickles it)."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module) -> None:
        total = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        (self.out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"sum": total, "step": trainer.global_step, "world": trainer.world_size}))


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(world, tmp_path):
    from train.cli import build_cli

    cli = build_cli(_args(world, tmp_path, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn",
                          "--trainer.max_steps", "2", "--trainer.max_epochs", "1",
                          "--trainer.limit_val_batches", "2"))
    cli.trainer.callbacks.append(ParameterChecksum(tmp_path))
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["sum"] == ranks[1]["sum"]
