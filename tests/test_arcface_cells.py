"""Metric learning on cell crops: ``cellcls train --task arcface --data.masks MASKDIR`` and ``cellcls embed --masks``.

The world is test_train_fit's (48 px images of 4 square cells, a mask cache, groups of 2 images).
A 2-step run checks the machinery a user relies on: the split keeps every cell of a held-out image
in validation; the checkpoint records the crop recipe, the groups and that an image embedding is
the mean of its cells', and the one checkpoint reader reads it; ``cellcls embed`` gives one unit row
per image equal to the normalised mean of its cells' embeddings computed here by hand from the
network on the crops, and the precision@1 recomputed from its file is the logged one. How well it
learns is measured in benchmarks/README.md ("Metric learning (issue 12)").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellcls.errors import CellclsError, WeightsError
from test_train_fit import make_world

CROP = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    return make_world(tmp_path_factory.mktemp("cellworld"), n=16, masks=True)


def _args(world: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--out", str(out), "--seed_everything", "0", "--task", "arcface", "--group-col", "group",
        "--model.backbone", "resnet10t", "--model.lr", "3e-3", "--model.schedule", "constant",
        "--data.images", str(world["images"]), "--data.labels", str(world["labels"]),
        "--data.stats", str(world["stats"]), "--data.masks", str(world["masks"]), "--data.crop_size", str(CROP),
        "--data.crop_mode", "context", "--data.crop_margin", "0.2", "--data.augment", "none",
        "--data.batch_size", "8", "--data.num_workers", "0", "--data.progress", "false",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0", *extra,
    ]


def test_split_puts_every_cell_of_a_held_out_image_in_validation(world, tmp_path):
    from train.arcface import arcface_split
    from train.cli import build_cli

    cli = build_cli(_args(world, tmp_path / "run", "--trainer.logger", "false"))
    data = cli.datamodule
    data.setup("fit")
    table = pd.read_csv(world["labels"])
    train, val = arcface_split(table["group"].tolist(), fold=0)
    held = set(table["ID"][val])
    assert data.val_queries == len(held) == 8  # one image of each of the 8 groups
    train_images = {image_id for image_id, _ in data.train_cells}
    assert train_images == set(table["ID"][train]) and not train_images & held  # no held-out cell is trained on
    n_query_cells = 4 * len(held)
    assert {image_id for image_id, _ in data.val_cell_index[:n_query_cells]} == held  # all 4 cells of each, first
    assert len(data.val_set) == 4 * len(table)  # then every training image's cells, to be retrieved
    image_of_cell = data.val_set.image_of_cell
    assert np.array_equal(np.bincount(image_of_cell), np.full(len(table), 4))
    groups = sorted(set(table["group"]))
    group_of = dict(zip(table["ID"], table["group"]))
    assert [groups[g] for g in data.val_set.groups] == [group_of[i] for i, _ in data.val_cell_index]
    assert data.train_set[0][0].shape == (4, CROP, CROP) and data.train_set[0][1].dtype == torch.int64


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    from train.cli import build_cli, fit

    out = tmp_path_factory.mktemp("cellrun")
    cli = build_cli(_args(world, out))
    return {"cli": cli, "result": fit(cli), "out": out}


def test_checkpoint_records_the_crop_recipe_and_the_one_reader_reads_it(trained, world):
    from cellcls.checkpoints import EMBEDDING_TASKS, read_inference_checkpoint, read_inference_meta

    assert trained["cli"].trainer.global_step == 2
    last = trained["result"]["last"]
    model, meta = read_inference_checkpoint(last, tasks=EMBEDDING_TASKS)
    assert (meta.task, meta.embedding_unit, meta.crop_mode, meta.crop_size, meta.crop_margin) == (
        "arcface", "cell_mean", "context", CROP, 0.2)
    assert meta.image_size is None and meta.uses_crops and meta.input_size == CROP
    assert meta.groups == tuple(sorted(set(pd.read_csv(world["labels"])["group"]))) and meta.embedding_dim == 512
    assert meta.mask_key and meta.mean == pytest.approx([0.2] * 4)
    assert model.embed(torch.zeros(2, 4, CROP, CROP)).shape == (2, 512)
    with pytest.raises(WeightsError, match="task 'arcface'.*cellcls embed"):
        read_inference_meta(last)  # the classifiers' default: predict never takes an embedding network


def _by_hand(last: str, world: dict[str, Path], ids: list[str]) -> np.ndarray:
    """Image embeddings computed here: crops of every cell -> model.embed -> unit rows -> mean -> unit."""
    from cellcls.checkpoints import EMBEDDING_TASKS, read_inference_checkpoint
    from cellcls.crops import crop_cells
    from cellcls.io import read_image
    from cellcls.masks.cache import MaskCache
    from cellcls.masks.table import cell_table
    from cellcls.normalize import to_model_input

    model, meta = read_inference_checkpoint(last, tasks=EMBEDDING_TASKS)
    reader = MaskCache(world["masks"]).reader()
    out = []
    for image_id in ids:
        entry = reader.read(image_id)
        rows = cell_table(entry.cells, entry.nuclei, image_id=image_id, original_shape=entry.original_shape,
                          mask_key=entry.mask_key)
        crops = crop_cells(read_image(world["images"], image_id), entry.cells, rows, mode="context", size=CROP,
                           margin=0.2)
        with torch.no_grad():
            cells = model.embed(to_model_input(crops, meta.mean, meta.std)).numpy().astype(np.float64)
        mean = (cells / np.linalg.norm(cells, axis=1, keepdims=True)).mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
    return np.stack(out)


def test_embed_gives_the_normalised_mean_of_the_cells_and_reproduces_validation(trained, world, tmp_path):
    from cellcls.cli import main
    from cellcls.embeddings import read_embeddings
    from train.arcface import arcface_split, retrieval_precision_at_1

    last = trained["result"]["last"]
    emb = tmp_path / "emb.npz"
    assert main(["embed", "--checkpoint", last, "--images", str(world["images"]), "--masks", str(world["masks"]),
                 "--labels", str(world["labels"]), "--out", str(emb), "--no-progress", "-q", "--device", "cpu"]) == 0
    stored = read_embeddings(emb)
    table = pd.read_csv(world["labels"])
    assert stored.embeddings.shape == (len(table), 512) and sorted(stored.ids) == sorted(table["ID"])
    np.testing.assert_allclose(np.linalg.norm(stored.embeddings, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(stored.embeddings, _by_hand(last, world, list(stored.ids)), atol=1e-5)

    order = {i: k for k, i in enumerate(stored.ids)}
    x = stored.embeddings[[order[i] for i in table["ID"]]]
    groups = sorted(set(table["group"]))
    code = np.array([groups.index(g) for g in table["group"]])
    train, val = arcface_split(table["group"].tolist(), fold=0)
    precision, chance = retrieval_precision_at_1(x[val], code[val], x[train], code[train])
    metrics = trained["result"]["metrics"]
    assert precision == pytest.approx(metrics["val/precision_at_1"], abs=1e-6)
    assert chance == pytest.approx(metrics["val/precision_at_1_chance"])


def test_embed_of_a_cell_checkpoint_without_masks_names_the_checkpoint(trained, world, tmp_path, capsys):
    from cellcls.cli import main
    from infer.embed import embed_images, read_arcface_checkpoint

    last = trained["result"]["last"]
    with pytest.raises(CellclsError, match=f"checkpoint {last}.*mean of its cells.*--masks"):
        embed_images(read_arcface_checkpoint(last), world["images"], ["img000"], progress=False)
    assert main(["embed", "--checkpoint", last, "--images", str(world["images"]), "--out",
                 str(tmp_path / "e.npz"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert last in err and "--masks" in err and not (tmp_path / "e.npz").exists()


def test_the_cells_demo_config_builds_a_cell_crop_embedder(world, tmp_path):
    from train.arcface import ArcFaceEmbedder
    from train.cli import build_cli

    config = Path(__file__).resolve().parent.parent / "configs" / "arcface_cells_demo.yaml"
    cli = build_cli(["--config", str(config), "--data.labels", str(world["labels"]), "--data.masks",
                     str(world["masks"]), "--trainer.logger", "false", "--out", str(tmp_path)])
    assert isinstance(cli.model, ArcFaceEmbedder) and cli.model.hparams.num_classes == 8  # linked: the groups
    assert cli.datamodule.uses_crops() and cli.datamodule.hparams.crop_size == 48
    assert cli.trainer.checkpoint_callback.monitor == "val/precision_at_1"
