"""cellcls.models: timm factory, the 2019 heads, ArcMarginProduct, local pretrained weights."""
from __future__ import annotations

import dataclasses
import logging
import math
import socket

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from timm.models import adapt_input_conv

from cellcls.errors import RegistryError, UnsafeWeightsError, WeightsError, WeightsNotFoundError
from cellcls.models import (
    ArcMarginProduct,
    CellModel,
    create_model,
    list_heads,
    list_models,
    load_model_from_checkpoint,
    load_pretrained,
    model_config_from_hparams,
)

TINY = "resnet10t"  # 5 M parameters, deep stem 'conv1.0'


def _images(n: int = 2, size: int = 32, chans: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, chans, size, size, generator=torch.Generator().manual_seed(seed))


def _randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Every test here runs offline; any socket connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- factory --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head, features", [("timm", 512), ("bestfitting2019", 512), ("embedding2019", 512)])
def test_every_head_maps_images_to_class_outputs(head, features):
    model = create_model(TINY, head=head).eval()
    with torch.no_grad():
        out = model(_images())
        emb = model.embed(_images())
    assert isinstance(model, CellModel)
    assert out.shape == (2, 19) and out.dtype == torch.float32
    assert emb.shape == (2, features) == (2, model.num_features)
    assert torch.isfinite(out).all()
    assert set(list_heads()) == {"timm", "bestfitting2019", "embedding2019"}


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_atto", "densenet121"])
def test_other_timm_backbones_with_the_2019_head(name):
    model = create_model(name, head="bestfitting2019", in_chans=4, num_classes=7).eval()
    with torch.no_grad():
        out = model(_images())
    assert out.shape == (2, 7)
    feats = model.backbone.num_features
    assert model.head.trunk[0].num_features == 2 * feats  # BN over concat(avg, max)
    assert model.head.trunk[2].out_features == feats      # FC(2C -> C): 1024 for densenet121


def test_list_models_is_timms_name_list():
    assert list_models("resnet10t") == ["resnet10t"]
    assert "densenet121" in list_models("densenet*")


def test_wrong_input_channels_are_named():
    model = create_model(TINY, in_chans=4)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\).*\(2, 3, 32, 32\)"):
        model(_images(chans=3))


def test_unknown_names_list_the_choices():
    with pytest.raises(RegistryError, match="resnet18"):
        create_model("resnet18x")
    with pytest.raises(RegistryError, match="bestfitting2019, embedding2019, timm"):
        create_model(TINY, head="bestfitting")


def test_pretrained_true_is_refused_with_the_alternative():
    with pytest.raises(ValueError, match="pretrained_file="):
        create_model(TINY, pretrained=True)


def test_drop_rate_and_head_kwargs_reach_the_head():
    model = create_model(TINY, head="embedding2019", num_classes=5, drop_rate=0.3,
                         head_kwargs={"embedding_dim": 64})
    assert model.head.drop.p == 0.3 and model.head.arc.weight.shape == (5, 64)
    assert model.embed(_images()).shape == (2, 64)
    timm_model = create_model(TINY, head="timm", drop_rate=0.2, drop_path_rate=0.1)
    assert timm_model.backbone.drop_rate == 0.2
    assert timm_model.config["drop_path_rate"] == 0.1
    again = create_model(**timm_model.config)
    assert again.config == timm_model.config and again.backbone.drop_rate == 0.2


# --- the 2019 heads ---------------------------------------------------------------------------------------------

def test_bestfitting_head_is_the_2019_layout():
    model = create_model(TINY, head="bestfitting2019", num_classes=19).eval()
    head = model.head
    drops = [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.5, 0.5]
    _randomise_bn(head)
    fmap = torch.randn(3, 512, 2, 2, generator=torch.Generator().manual_seed(1))
    bn1, _, fc1, _, bn2 = head.trunk
    pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)  # avg first, then max
    hidden = torch.relu(fc1(bn1(pooled)))
    expected = head.fc(bn2(hidden))                                           # ReLU before the second BN
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(fmap), expected)
        torch.testing.assert_close(model.forward_head(fmap, pre_logits=True), bn2(hidden))


def test_embedding_head_is_the_2019_layout():
    model = create_model("resnet18", head="embedding2019", num_classes=11).eval()
    head = model.head
    drops = [m.p for m in head.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == [0.25, 0.5]
    assert (head.trunk[2].in_features, head.trunk[2].out_features) == (1024, 512)  # 1024x -> 512x, x = 1
    assert (head.fc.in_features, head.fc.out_features, head.bn.num_features) == (512, 512, 512)
    _randomise_bn(head)
    fmap = torch.randn(3, 512, 2, 2, generator=torch.Generator().manual_seed(2))
    bn1, _, fc1, _, bn2 = head.trunk
    pooled = torch.cat([fmap.mean(dim=(2, 3)), fmap.amax(dim=(2, 3))], dim=1)
    embedding = head.bn(head.fc(bn2(torch.relu(fc1(bn1(pooled))))))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(fmap, pre_logits=True), embedding)
        torch.testing.assert_close(model.forward_head(fmap), head.arc(embedding))


def test_head_dropout_is_on_in_training_and_off_in_eval():
    """The 2019 code left its embedding dropout on at test time; ours follows train()/eval()."""
    model = create_model(TINY, head="embedding2019", num_classes=4)
    fmap = torch.randn(4, 512, 2, 2, generator=torch.Generator().manual_seed(3))
    model.train()
    torch.manual_seed(0)
    a, b = model.forward_head(fmap, pre_logits=True), model.forward_head(fmap, pre_logits=True)
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model.forward_head(fmap, pre_logits=True), model.forward_head(fmap, pre_logits=True))


def test_2019_heads_refuse_token_features():
    model = create_model("vit_tiny_patch16_224", head="bestfitting2019", img_size=32, patch_size=16)
    with pytest.raises(ValueError, match="head='timm'"):
        model(_images(size=32))


# --- ArcMarginProduct ---------------------------------------------------------------------------------------------

def test_arc_margin_product_is_the_cosine_to_each_class_weight():
    torch.manual_seed(0)
    arc = ArcMarginProduct(16, 5)
    feats = torch.randn(7, 16) * 3.0
    w = arc.weight.detach().numpy().astype(np.float64)
    f = feats.numpy().astype(np.float64)
    literal = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    cos = arc(feats)
    assert cos.shape == (7, 5)
    np.testing.assert_allclose(cos.detach().numpy(), literal, atol=1e-6)


def test_arc_margin_cosines_stay_in_minus_one_one():
    torch.manual_seed(1)
    arc = ArcMarginProduct(512, 6)
    w = arc.weight.detach()
    feats = torch.cat([w * 7.0, -w * 1e-3, torch.randn(20, 512) * 1e4])  # +-1 exactly, and large inputs
    cos = arc(feats)
    assert cos.min() >= -1.0 and cos.max() <= 1.0
    torch.testing.assert_close(torch.diagonal(cos[:6]), torch.ones(6))
    torch.testing.assert_close(torch.diagonal(cos[6:12]), -torch.ones(6))


def test_arc_margin_weight_is_xavier_uniform():
    torch.manual_seed(2)
    w = ArcMarginProduct(512, 10).weight.detach()
    bound = math.sqrt(6.0 / (512 + 10))              # xavier: 0.107; the 2019 uniform: 1/sqrt(512) = 0.044
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.9 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound


# --- ImageNet files -------------------------------------------------------------------------------------------------

def _save_imagenet(name: str, path, fmt: str = "pth"):
    torch.manual_seed(123)
    src = timm.create_model(name, pretrained=False, in_chans=3, num_classes=1000)
    state = src.state_dict()
    if fmt == "safetensors":
        safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("name, head, fmt", [
    (TINY, "timm", "pth"),
    (TINY, "bestfitting2019", "safetensors"),
    ("mobilenetv3_small_050", "embedding2019", "bin"),
])
def test_imagenet_file_gives_body_adapted_stem_and_fresh_head(tmp_path, name, head, fmt):
    path = tmp_path / f"imagenet.{fmt}"
    src = _save_imagenet(name, path, "safetensors" if fmt == "safetensors" else "pth")
    torch.manual_seed(0)
    fresh = create_model(name, head=head, in_chans=4, num_classes=19)
    torch.manual_seed(0)
    model = create_model(name, head=head, in_chans=4, num_classes=19, pretrained_file=path)

    cfg = model.backbone.pretrained_cfg
    stem = cfg["first_conv"] + ".weight"
    classifier = {cfg["classifier"] + ".weight", cfg["classifier"] + ".bias"}
    body = model.backbone.state_dict()
    w3, w4 = src[stem], body[stem]
    assert w4.shape[1] == 4
    torch.testing.assert_close(w4, adapt_input_conv(4, w3, base_chans=3), rtol=0, atol=0)
    torch.testing.assert_close(w4[:, :3], w3 * 0.75)          # timm: repeat RGB, R again for Y, scale 3/4
    torch.testing.assert_close(w4[:, 3], w3[:, 0] * 0.75)
    for key, value in body.items():
        if key != stem and key not in classifier:
            torch.testing.assert_close(value, src[key], rtol=0, atol=0, msg=key)
    fresh_state = fresh.state_dict()
    for key, value in model.state_dict().items():      # classifier/head exactly as a fresh model's
        if key.startswith("head.") or key.removeprefix("backbone.") in classifier:
            torch.testing.assert_close(value, fresh_state[key], rtol=0, atol=0)
    with torch.no_grad():
        assert model.eval()(_images()).shape == (2, 19)


def test_pretrained_file_never_reaches_a_download_path(tmp_path, monkeypatch):
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("download path called")

    for attr in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(builder, attr, refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    path = tmp_path / "r10t.safetensors"
    _save_imagenet(TINY, path, "safetensors")
    with pytest.raises(AssertionError, match="network access"):  # the autouse guard is live
        socket.create_connection(("huggingface.co", 443))
    model = create_model(TINY, head="bestfitting2019", pretrained_file=path)
    assert model(_images()).shape == (2, 19)


def test_stem_of_a_deep_stem_model_is_adapted_and_others_untouched(tmp_path):
    path = tmp_path / "r10t.pth"
    src = _save_imagenet(TINY, path)
    model = create_model(TINY, in_chans=4, pretrained_file=path)
    torch.testing.assert_close(model.backbone.conv1[0].weight, adapt_input_conv(4, src["conv1.0.weight"]))
    torch.testing.assert_close(model.backbone.conv1[3].weight, src["conv1.3.weight"])  # 2nd stem conv as is


def test_three_channel_model_loads_the_stem_unchanged(tmp_path):
    path = tmp_path / "r10t.pth"
    src = _save_imagenet(TINY, path)
    model = create_model(TINY, in_chans=3, pretrained_file=path)
    torch.testing.assert_close(model.backbone.conv1[0].weight, src["conv1.0.weight"], rtol=0, atol=0)


def test_module_prefixed_and_wrapped_imagenet_files_load(tmp_path):
    path = tmp_path / "ddp.pth"
    src = _save_imagenet(TINY, tmp_path / "plain.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()}, "epoch": 3}, path)
    model = create_model(TINY, pretrained_file=path)
    torch.testing.assert_close(model.backbone.layer4[0].conv1.weight, src["layer4.0.conv1.weight"])


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "resnet.safetensors"
    with pytest.raises(WeightsNotFoundError, match=str(path.resolve())):
        create_model(TINY, pretrained_file=path)


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    lst, scalars, junk = tmp_path / "list.pth", tmp_path / "scalars.pth", tmp_path / "junk.pth"
    torch.save([torch.zeros(2)], lst)
    torch.save({"conv1.weight": 1.0}, scalars)
    junk.write_bytes(b"not a checkpoint")
    for path, pattern in ((lst, "does not hold a state dict"), (scalars, "conv1.weight"),
                          (junk, "not a readable PyTorch")):
        with pytest.raises(WeightsError, match=pattern) as err:
            create_model(TINY, pretrained_file=path)
        assert str(path) in str(err.value)


def test_a_file_for_another_architecture_is_refused_and_nothing_loaded(tmp_path):
    path = tmp_path / "r18.pth"
    _save_imagenet("resnet18", path)
    model = create_model(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_pretrained(model, path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatches" in msg and "layer2.0.downsample.1.weight" in msg
    assert "missing keys" in msg and "unexpected keys" in msg
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


# --- our checkpoints ------------------------------------------------------------------------------------------------

def _trained_like(model: CellModel) -> CellModel:
    """Give every parameter and buffer values unlike a fresh init (as training would)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + 0.9 if t.ndim == 1 else
                        torch.randn(t.shape, generator=g) * 0.05)
    return model


def _lightning_checkpoint(model: CellModel, path, hparams):
    import pytorch_lightning as pl

    class Nested(pl.LightningModule):
        """hparams {'model': CellModel.config, ...}."""

        def __init__(self, model: dict, lr: float = 1e-3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = create_model(**model)
            self.loss_weights = torch.nn.Parameter(torch.ones(3))  # non-network state is ignored

    class Flat(pl.LightningModule):
        """Flat hparams, as train/module.py keeps them (a pretrained_file that inference will not have)."""

        def __init__(self, backbone: str, head: str = "timm", in_chans: int = 4, num_classes: int = 19,
                     pretrained_file: str | None = None, drop_rate: float | None = None,
                     head_kwargs: dict | None = None, timm_kwargs: dict | None = None, lr: float = 1e-3) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = create_model(backbone, head=head, in_chans=in_chans, num_classes=num_classes,
                                      drop_rate=drop_rate, head_kwargs=head_kwargs, **(timm_kwargs or {}))

    module = (Nested if "model" in hparams else Flat)(**hparams)
    module.model.load_state_dict(model.state_dict())
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)


@pytest.mark.parametrize("head, layout", [("bestfitting2019", "nested"), ("embedding2019", "nested"),
                                          ("timm", "flat")])
def test_lightning_checkpoint_round_trip_gives_identical_predictions(tmp_path, head, layout):
    model = _trained_like(create_model(TINY, head=head, num_classes=6, drop_rate=0.1, drop_path_rate=0.05)).eval()
    path = tmp_path / "fold0.ckpt"
    if layout == "nested":
        saved = {"model": model.config, "lr": 0.01}
    else:
        saved = {"backbone": TINY, "head": head, "in_chans": 4, "num_classes": 6, "drop_rate": 0.1,
                 "pretrained_file": str(tmp_path / "gone.pth"), "head_kwargs": None,
                 "timm_kwargs": {"drop_path_rate": 0.05}, "lr": 0.01}
    _lightning_checkpoint(model, path, saved)
    images = _images(3)
    reloaded, hparams = load_model_from_checkpoint(path)
    assert not reloaded.training
    assert hparams == saved
    assert reloaded.config == model.config
    overlay = create_model(TINY, head=head, num_classes=6, drop_rate=0.1, drop_path_rate=0.05,
                           pretrained_file=path).eval()
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(reloaded(images), expected, rtol=0, atol=0)
        torch.testing.assert_close(overlay(images), expected, rtol=0, atol=0)


def test_plain_state_dict_of_our_model_with_module_prefix_loads(tmp_path):
    model = _trained_like(create_model(TINY, head="bestfitting2019")).eval()
    path = tmp_path / "ema.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    again = create_model(TINY, head="bestfitting2019", pretrained_file=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(_images()), model(_images()), rtol=0, atol=0)


def test_checkpoint_for_another_model_says_how_to_rebuild_it(tmp_path):
    model = create_model(TINY, head="bestfitting2019", num_classes=6)
    path = tmp_path / "fold0.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config}}, path)
    with pytest.raises(WeightsError, match=r"num_classes=6 \(asked 19\).*load_model_from_checkpoint"):
        create_model(TINY, head="bestfitting2019", pretrained_file=path)


def test_strict_loading_reports_missing_keys_and_lenient_loading_logs_them(tmp_path, caplog):
    model = _trained_like(create_model(TINY, head="bestfitting2019"))
    path = tmp_path / "partial.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.fc.")}
    torch.save({"state_dict": state, "hyper_parameters": {"model": model.config}}, path)
    with pytest.raises(WeightsError, match=r"missing keys \['head.fc.weight', 'head.fc.bias'\]"):
        load_model_from_checkpoint(path)
    target = create_model(TINY, head="bestfitting2019")
    with caplog.at_level(logging.WARNING, logger="cellcls.models.pretrained"):
        load_pretrained(target, path, strict=False)
    assert "head.fc.weight" in caplog.text
    torch.testing.assert_close(target.head.trunk[2].weight, model.head.trunk[2].weight)


@dataclasses.dataclass
class _Config:
    name: str = TINY


def test_checkpoint_with_pickled_objects_is_refused_with_the_contract(tmp_path):
    model = create_model(TINY)
    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": _Config()}}, path)
    with pytest.raises(UnsafeWeightsError, match="plain dicts"):
        load_model_from_checkpoint(path)


def test_checkpoint_without_model_keys_or_hparams_is_refused(tmp_path):
    model = create_model(TINY)
    no_model, no_hparams = tmp_path / "net.ckpt", tmp_path / "bare.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config}}, no_model)
    torch.save({"state_dict": model.state_dict()}, no_hparams)
    with pytest.raises(WeightsError, match="self.model"):
        load_model_from_checkpoint(no_model)
    with pytest.raises(WeightsError, match="not a Lightning checkpoint"):
        load_model_from_checkpoint(no_hparams)


def test_hparams_layouts_give_the_create_model_config():
    config = create_model(TINY, head="bestfitting2019", drop_path_rate=0.05).config
    assert model_config_from_hparams({"model": config, "lr": 1e-3}) == config
    with_file = {"model": {**config, "pretrained_file": "/kaggle/input/missing.pth"}}
    assert model_config_from_hparams(with_file) == config
    flat = {"backbone": "resnet18", "head": "timm", "num_classes": 3, "lr": 1e-3, "drop_rate": None,
            "pretrained_file": "/kaggle/input/missing.pth", "timm_kwargs": {"drop_path_rate": 0.1}}
    assert model_config_from_hparams(flat) == {"name": "resnet18", "head": "timm", "num_classes": 3,
                                               "drop_path_rate": 0.1}
    other_key = {"model_cfg": {"name": "resnet18", "head": "timm"}, "lr": 1e-3}
    assert model_config_from_hparams(other_key) == {"name": "resnet18", "head": "timm"}
    with pytest.raises(WeightsError, match="name no timm model"):
        model_config_from_hparams({"lr": 1e-3})
