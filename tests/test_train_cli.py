"""``cellcls train`` configuration: shipped configs parse and build, wrong keys get one clear error."""
from __future__ import annotations

from pathlib import Path

import pytest

from cellcls.errors import CellclsError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Tiny CPU overrides so a GPU recipe builds here; everything else comes from the file.
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
       "--trainer.strategy", "auto", "--trainer.logger", "false"]


@pytest.mark.parametrize("name,backbone,head,task", [
    ("demo_cell.yaml", "resnet18", "timm", "cell"),
    ("seed002_efficientnet_b0.yaml", "efficientnet_b0", "timm", "image"),
    ("seed002_seresnext26d.yaml", "seresnext26d_32x4d", "timm", "image"),
    ("bestfitting2019_densenet121.yaml", "densenet121", "bestfitting2019", "image"),
])
def test_shipped_configs_parse_and_build(name, backbone, head, task, tmp_path):
    from train.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / name), "--out", str(tmp_path), *CPU])
    assert cli.model.hparams.backbone == backbone and cli.model.hparams.head == head
    assert cli.datamodule.hparams.task == task
    assert (type(cli.model.model.head).__name__ == "BestfittingHead2019") == (head == "bestfitting2019")
    assert cli.trainer.max_epochs >= 2


def test_bestfitting2019_recipe_is_the_2019_one(tmp_path):
    from train.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "bestfitting2019_densenet121.yaml"), "--out", str(tmp_path), *CPU])
    hp, data = cli.model.hparams, cli.datamodule.hparams
    assert (hp.loss, hp.optimizer, hp.schedule) == ("bestfitting2019", "adam", "bestfitting2019")
    assert (data.image_size, data.train_crop, data.augment) == (768, 512, "bestfitting2019")


def test_dotted_overrides_and_short_forms(tmp_path):
    from train.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "demo_cell.yaml"), "--out", str(tmp_path), "--model.lr", "0.01",
                     "--fold", "2", "--full", "--max-epochs", "3", "--trainer.accumulate_grad_batches", "4",
                     "--model.loss", "{name: focal, gamma: 1.0}", *CPU])
    assert cli.model.hparams.lr == 0.01 and cli.model.hparams.loss == {"name": "focal", "gamma": 1.0}
    assert cli.datamodule.hparams.fold == 2 and cli.datamodule.hparams.full is True
    assert cli.trainer.max_epochs == 3 and cli.trainer.accumulate_grad_batches == 4
    assert cli.trainer.checkpoint_callback.dirpath == str(tmp_path / "checkpoints")


def test_wrong_key_on_the_command_line_lists_the_valid_keys(tmp_path):
    from train.cli import build_cli

    with pytest.raises(CellclsError) as info:
        build_cli(["--config", str(CONFIGS / "demo_cell.yaml"), "--model.lrr", "0.1"])
    message = str(info.value)
    assert "'model.lrr'" in message and "command line" in message and "Did you mean 'model.lr'" in message
    assert "backbone" in message and "weight_decay" in message


def test_wrong_key_in_a_config_file_names_the_file(tmp_path):
    from train.cli import build_cli

    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "demo_cell.yaml").read_text().replace("crop_size:", "crop_sise:"))
    with pytest.raises(CellclsError, match=r"'data\.crop_sise' \(in .*bad\.yaml\).*crop_size"):
        build_cli(["--config", str(bad)])
    bad.write_text("modle:\n  lr: 1\n")
    with pytest.raises(CellclsError, match="'modle'.*top-level keys"):
        build_cli(["--config", str(bad)])


def test_cellcls_train_exits_1_with_one_line_on_a_wrong_key(capsys):
    from cellcls.cli import main

    code = main(["train", "--config", str(CONFIGS / "demo_cell.yaml"), "--data.crop_sise", "64"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: unknown config key 'data.crop_sise'") and err.count("\n") == 1


def test_unknown_names_are_refused_with_the_choices(tmp_path):
    from cellcls.errors import RegistryError
    from train.data import HpaDataModule

    with pytest.raises(RegistryError, match="bestfitting2019.*seed002"):
        HpaDataModule(images="x", labels="y", augment="flipz")
    with pytest.raises(CellclsError, match="mask cache"):
        HpaDataModule(images="x", labels="y", task="cell")
