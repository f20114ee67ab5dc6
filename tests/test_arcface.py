"""Metric learning: the arcface split, retrieval precision@1, ``cellcls train --task arcface`` and ``cellcls embed``.

The end-to-end test trains a tiny network (resnet10t, 32 px) for 3 epochs on a synthetic world
(``cellcls synth``: each group is one protein, i.e. one pattern set and style). That is too short
to learn groups reliably on 2 CPU cores, so it checks the machinery: the training loss falls, the
checkpoint carries what ``cellcls embed`` needs, and ``cellcls embed`` reproduces the validation
embeddings (so the precision@1 recomputed from its file is the logged ``val/precision_at_1``).
The learned figure is in benchmarks/README.md ("Metric learning (issue 12)").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellcls.errors import CellclsError, LabelError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIZE = 32


# ----------------------------------------------------------------------------- split and metric
def test_split_holds_out_one_image_of_each_repeated_group_and_keeps_it_in_training():
    from train.arcface import arcface_split

    groups = ["a", "a", "a", "b", "c", "c", "d"]
    train, val = arcface_split(groups, fold=0)
    assert not (train & val).any() and (train | val).all()
    held = [groups[i] for i in np.flatnonzero(val)]
    assert sorted(held) == ["a", "c"]  # one per group of >= 2; singletons b, d train only
    assert {groups[i] for i in np.flatnonzero(train)} == {"a", "b", "c", "d"}  # every class is trained on
    others = {tuple(np.flatnonzero(arcface_split(groups, fold=f)[1])) for f in range(3)}
    assert len(others) > 1  # other folds hold out other images
    assert np.array_equal(arcface_split(groups, fold=0)[1], val)  # deterministic


def test_precision_at_1_on_hand_made_embeddings():
    from train.arcface import retrieval_precision_at_1

    index = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0.9, 0.1]], dtype=np.float32)
    index_groups = np.array([0, 1, 2, 1])
    query = np.array([[0.9, 0.1, 0], [0.1, 0, 1], [0, 0.2, 3.0]], dtype=np.float32)  # nearest: rows 0, 2, 2
    precision, chance = retrieval_precision_at_1(query, np.array([0, 1, 2]), index, index_groups)
    assert precision == pytest.approx(2 / 3)
    assert chance == pytest.approx((1 / 4 + 2 / 4 + 1 / 4) / 3)


def test_missing_group_value_names_the_row():
    from train.arcface import group_names

    assert group_names(["b", "a", "b"]) == ["a", "b"]
    with pytest.raises(LabelError, match="row 2"):
        group_names(["a", float("nan")], where="train.csv")


@pytest.mark.parametrize("dtype,shape", [(np.uint8, (40, 40)), (np.uint16, (37, 52))])
def test_embed_input_is_the_training_validation_input_bit_for_bit(dtype, shape):
    """infer's preprocessing (cellcls.normalize) equals train's evaluation transform."""
    from cellcls.io import to_float01
    from cellcls.normalize import image_to_model_input
    from train.augment import build_transform

    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, size=(*shape, 4), dtype=dtype)
    mean, std = [0.1, 0.2, 0.3, 0.05], [0.2, 0.1, 0.3, 0.07]
    expected = build_transform("d4", train=False, size=SIZE, mean=mean, std=std)(to_float01(image))
    np.testing.assert_array_equal(image_to_model_input(image, SIZE, mean, std), expected)


# ----------------------------------------------------------------------------- configuration
def _labels(tmp_path: Path, groups) -> Path:
    path = tmp_path / "train.csv"
    pd.DataFrame({"ID": [f"i{k}" for k in range(len(groups))], "Label": "0", "antibody": groups}).to_csv(path, index=False)
    return path


def test_config_and_short_forms_build_the_embedding_model(tmp_path):
    from train.arcface import ArcFaceEmbedder
    from train.cli import build_cli

    labels = _labels(tmp_path, ["x", "y", "y", "z"])
    cpu = ["--trainer.logger", "false", "--data.labels", str(labels), "--out", str(tmp_path)]
    cli = build_cli(["--config", str(CONFIGS / "arcface_demo.yaml"), "--data.group_col", "antibody", *cpu])
    assert isinstance(cli.model, ArcFaceEmbedder) and cli.model.hparams.num_classes == 3  # linked: the groups
    assert cli.model.model.head.arc.weight.shape[0] == 3 and cli.model.hparams.head == "embedding2019"
    assert cli.trainer.checkpoint_callback.monitor == "val/precision_at_1"
    short = build_cli(["--task", "arcface", "--group-col", "antibody", "--data.images", "x", "--model.backbone",
                       "resnet10t", *cpu])
    assert isinstance(short.model, ArcFaceEmbedder) and short.datamodule.hparams.group_col == "antibody"
    assert short.model.hparams.loss == "arcface" and short.model.hparams.num_classes == 3


def test_wrong_head_and_missing_group_column_are_clear_errors(tmp_path):
    from train.cli import build_cli

    labels = _labels(tmp_path, ["x", "y"])
    base = ["--task", "arcface", "--data.images", "x", "--data.labels", str(labels), "--trainer.logger", "false",
            "--model.backbone", "resnet10t"]
    with pytest.raises(LabelError, match="no column 'group'.*--data.group_col"):
        build_cli(base)
    with pytest.raises(CellclsError, match="embedding2019"):
        build_cli([*base, "--group-col", "antibody", "--model.head", "timm"])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from cellcls.cli import main

    root = tmp_path_factory.mktemp("arcworld")
    assert main(["synth", "--out", str(root), "--train", "28", "--test", "6", "--size", "48", "--seed", "3",
                 "--no-progress", "-q"]) == 0
    assert main(["stats", "--images", str(root / "train"), "--out", str(root / "stats.json"), "--no-progress",
                 "-q"]) == 0
    return root


@pytest.mark.slow
def test_train_arcface_then_embed_reproduces_validation(world, tmp_path):
    from cellcls.cli import main
    from cellcls.embeddings import read_embeddings
    from train.arcface import arcface_split, retrieval_precision_at_1
    from train.cli import build_cli, fit

    out = tmp_path / "run"
    cli = build_cli([
        "--out", str(out), "--seed_everything", "0", "--task", "arcface", "--group-col", "group",
        "--model.backbone", "resnet10t", "--model.lr", "3e-3", "--model.optimizer", "adamw",
        "--model.schedule", "constant", "--data.images", str(world / "train"), "--data.labels",
        str(world / "train.csv"), "--data.stats", str(world / "stats.json"), "--data.image_size", str(SIZE),
        "--data.augment", "none", "--data.batch_size", "8", "--data.num_workers", "0", "--data.progress", "false",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.max_epochs", "3",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
    ])
    result = fit(cli)
    frame = pd.read_csv(Path(cli.trainer.loggers[0].log_dir) / "metrics.csv")
    train_loss = frame["train/loss_epoch"].dropna().to_numpy()
    assert len(train_loss) == 3 and train_loss[-1] < train_loss[0]  # it fits its training groups
    assert frame["val/precision_at_1"].dropna().size == 3

    last = Path(result["last"])
    meta = torch.load(last, map_location="cpu", weights_only=True)["cellcls"]
    table = pd.read_csv(world / "train.csv")
    groups = sorted(set(table["group"]))
    assert meta["task"] == "arcface" and meta["groups"] == groups and meta["embedding_dim"] == 512
    assert meta["image_size"] == SIZE and len(meta["stats"]["mean"]) == 4 and meta["model"]["num_classes"] == len(groups)

    emb = tmp_path / "train_emb.npz"
    assert main(["embed", "--checkpoint", str(last), "--images", str(world / "train"), "--labels",
                 str(world / "train.csv"), "--out", str(emb), "--no-progress", "-q", "--device", "cpu"]) == 0
    stored = read_embeddings(emb)
    assert stored.embeddings.shape == (len(table), 512) and stored.labels.shape == (len(table), 19)
    order = {i: k for k, i in enumerate(stored.ids)}
    rows = [order[i] for i in table["ID"]]
    x, code = stored.embeddings[rows], np.array([groups.index(g) for g in table["group"]])
    train, val = arcface_split(table["group"].astype(str).tolist(), fold=0)
    precision, _ = retrieval_precision_at_1(x[val], code[val], x[train], code[train])
    assert precision == pytest.approx(result["metrics"]["val/precision_at_1"], abs=1e-6)

    flips = tmp_path / "test_emb.npz"
    assert main(["embed", "--checkpoint", str(last), "--images", str(world / "test"), "--tta", "flips",
                 "--out", str(flips), "--no-progress", "-q", "--device", "cpu"]) == 0
    test = read_embeddings(flips)
    assert test.labels is None and np.allclose(np.linalg.norm(test.embeddings, axis=1), 1, atol=1e-5)


def test_embed_refuses_a_classifier_checkpoint(tmp_path):
    from cellcls.errors import WeightsError
    from infer.embed import read_arcface_checkpoint
    from train.module import CellClassifier

    module = CellClassifier(backbone="resnet10t")
    path = tmp_path / "clf.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "cellcls": {"format_version": 1, "task": "image", "image_size": 32}}, path)
    with pytest.raises(WeightsError, match="task 'image', not 'arcface'.*cellcls predict"):
        read_arcface_checkpoint(path)
