"""infer.tta: named TTAs and predict_tta (mean of sigmoids over views, chunking-independent)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cellcls.errors import ParameterError, RegistryError
from infer.tta import Transform, get_tta, predict_tta, tta_names


def _gap_linear(seed: int = 0, channels: int = 4, classes: int = 19) -> nn.Module:
    """Global average pool + linear: exactly invariant to every flip and rotation of the crop."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


def _asymmetric(seed: int = 0, channels: int = 4, classes: int = 19) -> nn.Module:
    """A conv net whose pooled grid keeps position: not invariant to flips."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(channels, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)),
                         nn.Flatten(), nn.Linear(24, classes))


def _crops(n: int = 7, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((n, 4, size, size), dtype=np.float32))


def _close(a: np.ndarray, b: np.ndarray, atol: float = 1e-6) -> None:
    np.testing.assert_allclose(a, b, rtol=0, atol=atol)


def test_registered_names_and_view_counts():
    assert {"none", "flips", "d4", "seed002"} <= set(tta_names())
    counts = {name: len(get_tta(name)) for name in ("none", "flips", "d4", "seed002")}
    assert counts == {"none": 1, "flips": 4, "d4": 8, "seed002": 4}
    assert [t.name for t in get_tta("seed002")][:2] == ["hflip", "vflip"]
    assert "identity" not in [t.name for t in get_tta("seed002")]  # "4x" = the four named views


def test_unknown_tta_lists_the_choices():
    with pytest.raises(RegistryError, match="d4"):
        get_tta("d8")


@pytest.mark.parametrize("name", ["flips", "d4"])
def test_invariant_model_scores_the_same_under_every_dihedral_tta(name):
    model, x = _gap_linear(), _crops()
    _close(predict_tta(model, x, name), predict_tta(model, x, "none"))


def test_seed002_on_a_constant_crop_equals_no_tta():
    # resizing keeps a constant image constant, and the GAP model sees only means
    model = _gap_linear()
    x = torch.rand(5, 4, 1, 1).expand(5, 4, 20, 20).contiguous()
    _close(predict_tta(model, x, "seed002"), predict_tta(model, x, "none"))


def test_d4_equals_the_manual_mean_over_the_eight_symmetries():
    model, x = _asymmetric(), _crops()
    views = []
    for k in range(4):
        rotated = torch.rot90(x, k, dims=(2, 3))
        views += [rotated, rotated.transpose(2, 3)]
    with torch.no_grad():
        expected = torch.stack([torch.sigmoid(model(v)) for v in views]).mean(0).numpy()
    got = predict_tta(model, x, "d4")
    _close(got, expected)
    assert np.abs(got - predict_tta(model, x, "none")).max() > 1e-3  # the model is really not invariant


def test_d4_views_are_the_eight_distinct_symmetries_of_the_square():
    image = np.arange(25, dtype=np.float32).reshape(5, 5)
    expected = {np.ascontiguousarray(a).tobytes() for k in range(4)
                for a in (np.rot90(image, k), np.rot90(image, k).T)}
    got = {view(torch.from_numpy(image)[None, None]).numpy()[0, 0].copy().tobytes() for view in get_tta("d4")}
    assert len(got) == 8 and got == expected


@pytest.mark.parametrize("name", ["none", "d4", "seed002"])
def test_chunking_does_not_change_the_result(name):
    model, x = _asymmetric(), _crops(n=11)
    whole = predict_tta(model, x, name, chunk=64)
    for chunk in (1, 3, 5):
        _close(predict_tta(model, x, name, chunk=chunk), whole)
    assert whole.shape == (11, 19) and whole.dtype == np.float32


def test_views_are_averaged_as_probabilities_not_logits():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3, bias=False))
    triple = Transform("x3", lambda t: 3 * t)
    x = _crops(n=4)
    with torch.no_grad():
        logits = model(x)
    got = predict_tta(model, x, [Transform("id", lambda t: t), triple])
    _close(got, ((torch.sigmoid(logits) + torch.sigmoid(3 * logits)) / 2).numpy())
    assert np.abs(got - torch.sigmoid(2 * logits).numpy()).max() > 1e-4


def test_resize_views_change_the_size_unless_keep_size():
    x = torch.ones(2, 4, 256, 256)
    assert [tuple(v(x).shape[-2:]) for v in get_tta("seed002")] == [(256, 256), (256, 256), (205, 205), (307, 307)]
    kept = get_tta("seed002", keep_size=True)
    assert all(tuple(v(x).shape[-2:]) == (256, 256) for v in kept)
    small, large = kept[2](x), kept[3](x)
    assert small[0, 0, 0, 0] == 0 and small[0, 0, 128, 128] == 1  # shrunk content, zero border
    assert torch.all(large == 1)  # enlarged content, centre-cropped


def test_fixed_size_model_needs_keep_size():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 16 * 16, 19))
    x = _crops(n=3, size=16)
    assert predict_tta(model, x, "seed002", keep_size=True).shape == (3, 19)
    with pytest.raises(RuntimeError):
        predict_tta(model, x, "seed002")


def test_model_runs_in_eval_mode_and_gets_its_mode_back():
    torch.manual_seed(0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 19))
    model.train()
    x = _crops()
    first, second = predict_tta(model, x, "flips"), predict_tta(model, x, "flips")
    np.testing.assert_array_equal(first, second)  # dropout off
    assert model.training


def test_input_is_not_modified_and_bad_inputs_raise():
    model, x = _asymmetric(), _crops()
    before = x.clone()
    predict_tta(model, x, "d4")
    assert torch.equal(x, before)
    with pytest.raises(ParameterError, match="torch.Tensor"):
        predict_tta(model, x.numpy(), "none")
    with pytest.raises(ParameterError, match="chunk"):
        predict_tta(model, x, "none", chunk=0)
    assert predict_tta(model, x[:0], "d4").shape == (0, 19)
