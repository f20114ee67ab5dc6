"""The checkpoint contract (cellcls.checkpoints) and the model-input conversion (cellcls.normalize).

Both are checked against the training stage's own code: the metadata a ``CellClassifier`` writes must
read back here, and inference inputs must equal the training pipeline's evaluation inputs bit for bit.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cellcls.checkpoints import CHECKPOINT_KEY, FORMAT_VERSION, read_inference_checkpoint, read_inference_meta
from cellcls.errors import WeightsError
from cellcls.normalize import image_to_model_input, to_model_input

MEAN = [0.11, 0.23, 0.07, 0.31]
STD = [0.05, 0.19, 0.33, 0.02]


def make_checkpoint(path: Path, *, task: str = "cell", backbone: str = "resnet10t", crop_size: int = 32,
                    image_size: int = 48, fold: int = 0, full: bool = False, seed: int = 0,
                    crop_mode: str = "masked", stats: bool = True) -> Path:
    """A checkpoint laid out as ``cellcls train`` saves it, built from the training classes themselves.

    The metadata comes from ``CellClassifier.inference_metadata`` over
    ``HpaDataModule.inference_metadata`` (so the test follows the training stage's keys), the
    datamodule hyper-parameters carry the fold, the weights are the module's (random, seeded).
    """
    import pytorch_lightning as pl

    from train.data import HpaDataModule
    from train.module import CellClassifier

    torch.manual_seed(seed)
    module = CellClassifier(backbone=backbone)
    data = HpaDataModule(images="images", labels="train.csv", task=task, folds="folds.csv", fold=fold, full=full,
                         masks="masks" if task == "cell" else None, crop_mode=crop_mode, crop_size=crop_size,
                         image_size=image_size, augment="none")
    if stats:
        data.mean, data.std = list(MEAN), list(STD)
    data.mask_key = "abc123" if task == "cell" else None
    module.data_meta = data.inference_metadata()
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in module.model.state_dict().items()},
        "hyper_parameters": dict(module.hparams),
        "datamodule_hyper_parameters": dict(data.hparams),
        "pytorch-lightning_version": pl.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_key_and_version_are_the_training_stages():
    from train import module

    assert CHECKPOINT_KEY == module.CHECKPOINT_KEY
    assert FORMAT_VERSION == module.FORMAT_VERSION


def test_cell_checkpoint_reads_back_with_model_and_meta(tmp_path):
    path = make_checkpoint(tmp_path / "c.ckpt", crop_size=40, fold=2, crop_mode="context")
    model, meta = read_inference_checkpoint(path)
    assert (meta.task, meta.crop_mode, meta.crop_size, meta.crop_margin) == ("cell", "context", 40, 0.1)
    assert meta.fold == 2 and not meta.full and meta.input_size == 40
    assert meta.mean == pytest.approx(MEAN) and meta.std == pytest.approx(STD)
    assert meta.mask_key == "abc123" and meta.model_name == "resnet10t" and len(meta.classes) == 19
    raw = torch.load(path, weights_only=True)
    x = torch.randn(2, 4, 40, 40)
    from cellcls.models import create_model

    reference = create_model(**meta.model_config).eval()
    reference.load_state_dict({k[6:]: v for k, v in raw["state_dict"].items()})
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)


def test_image_checkpoint_records_its_size_and_full_runs(tmp_path):
    meta = read_inference_meta(make_checkpoint(tmp_path / "i.ckpt", task="image", image_size=56, full=True,
                                               stats=False))
    assert (meta.task, meta.image_size, meta.crop_size, meta.input_size) == ("image", 56, None, 56)
    assert meta.full and meta.mean is None and meta.std is None


def test_missing_or_newer_section_is_a_clear_error(tmp_path):
    path = make_checkpoint(tmp_path / "c.ckpt")
    raw = torch.load(path, weights_only=True)
    old = dict(raw)
    del old[CHECKPOINT_KEY]
    torch.save(old, tmp_path / "old.ckpt")
    with pytest.raises(WeightsError, match="cellcls train"):
        read_inference_checkpoint(tmp_path / "old.ckpt")
    newer = dict(raw)
    newer[CHECKPOINT_KEY] = {**raw[CHECKPOINT_KEY], "format_version": FORMAT_VERSION + 1}
    torch.save(newer, tmp_path / "new.ckpt")
    with pytest.raises(WeightsError, match="upgrade cellcls"):
        read_inference_checkpoint(tmp_path / "new.ckpt")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_crop_input_equals_the_training_pipeline(dtype):
    from cellcls.io import to_float01
    from train.augment import build_transform

    top = np.iinfo(dtype).max
    crops = np.random.default_rng(0).integers(0, top, size=(3, 4, 24, 24), endpoint=True).astype(dtype)
    transform = build_transform("none", train=False, size=24, mean=MEAN, std=STD)
    expected = np.stack([transform(to_float01(np.ascontiguousarray(c.transpose(1, 2, 0)))) for c in crops])
    got = to_model_input(crops, MEAN, STD).numpy()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_whole_image_input_equals_the_training_pipeline(dtype):
    from cellcls.io import to_float01
    from train.augment import build_transform

    image = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, size=(70, 90, 4)).astype(dtype)
    expected = build_transform("none", train=False, size=32, mean=MEAN, std=STD)(to_float01(image))
    np.testing.assert_array_equal(image_to_model_input(image, 32, MEAN, STD), expected)


def test_no_stats_means_plain_unit_scaling():
    crops = np.full((1, 4, 2, 2), 51, dtype=np.uint8)
    np.testing.assert_allclose(to_model_input(crops).numpy(), 0.2, rtol=1e-6)


def _with_section(path: Path, out: Path, **changes) -> Path:
    raw = torch.load(path, weights_only=True)
    section = {**raw[CHECKPOINT_KEY], **changes}
    torch.save({**raw, CHECKPOINT_KEY: {k: v for k, v in section.items() if v is not None}}, out)
    return out


def test_one_reader_for_classifiers_and_embedding_networks_each_caller_its_kind(tmp_path):
    from cellcls.checkpoints import EMBEDDING_TASKS, TASKS

    clf = make_checkpoint(tmp_path / "c.ckpt", crop_size=40)
    with pytest.raises(WeightsError, match="task 'cell', not 'arcface'.*cellcls predict"):
        read_inference_checkpoint(clf, tasks=EMBEDDING_TASKS)
    cells = _with_section(clf, tmp_path / "a.ckpt", task="arcface", groups=["HPA1", "HPA2"], embedding_dim=512,
                          embedding_unit="cell_mean", cell_labels=None)
    with pytest.raises(WeightsError, match="task 'arcface', not 'image' or 'cell'.*cellcls embed"):
        read_inference_meta(cells)  # the default: scorers never take an embedding network
    meta = read_inference_meta(cells, tasks=EMBEDDING_TASKS)
    assert (meta.task, meta.embedding_unit, meta.crop_mode, meta.crop_size, meta.image_size) == (
        "arcface", "cell_mean", "masked", 40, None)
    assert meta.groups == ("HPA1", "HPA2") and meta.embedding_dim == 512 and meta.uses_crops and meta.input_size == 40
    assert read_inference_meta(cells, tasks=TASKS).task == "arcface"
    # a whole-image arcface checkpoint written before embedding_unit existed: image, at its image_size
    whole = _with_section(clf, tmp_path / "w.ckpt", task="arcface", groups=["HPA1"], embedding_dim=64,
                          crop_mode=None, crop_size=None, crop_margin=None, image_size=96)
    meta = read_inference_meta(whole, tasks=EMBEDDING_TASKS)
    assert (meta.embedding_unit, meta.image_size, meta.crop_mode, meta.input_size) == ("image", 96, None, 96)
    for bad, match in [({"groups": None}, "groups"), ({"embedding_dim": 0}, "embedding_dim"),
                       ({"embedding_unit": "cells"}, "embedding_unit"), ({"crop_mode": None}, "crop_mode")]:
        path = _with_section(cells, tmp_path / "bad.ckpt", **bad)
        with pytest.raises(WeightsError, match=match):
            read_inference_meta(path, tasks=EMBEDDING_TASKS)
