"""Network inference (segment/predict.py): padding, orientation, TTA, batching, channels.

Most tests use tiny stand-in networks that share DPNUnet's contract (NCHW logits of the input's
size, H and W multiples of 32 asserted) so the pipeline logic is checked exactly and fast; one
test runs the real, randomly initialised DPNUnet at 64 px.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from segment.network import create_dpn_unet
from segment.predict import (
    NORMALIZE_MEAN,
    NORMALIZE_STD,
    TTA,
    Dihedral,
    HpaPredictor,
    cell_channels,
    nuclei_channels,
    pad_to_multiple,
    predict_maps,
    predict_probs,
)


class PixelNet(nn.Module):
    """Per-pixel network (a 1x1 conv): equivariant to every flip/transpose, so TTA must be a no-op.

    Asserts the multiple-of-32 contract of DPNUnet, so a missing pad fails loudly.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[0.1, 0.2, 0.3], [1.5, -0.7, 0.2], [-0.4, 1.1, 0.9]]).view(3, 3, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.1, -0.2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, x.shape
        return self.conv(x)


class ShiftNet(PixelNet):
    """Output pixel (i, j) sees input pixel (i + 2, j + 1): no flip or transpose leaves that offset unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 5, padding=2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            for c in range(3):
                self.conv.weight[c, c, 4, 3] = 2.0


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _reference_probs(net: nn.Module, img: np.ndarray) -> np.ndarray:
    """What the network sees and returns for one image, written out directly (no helpers)."""
    x = torch.from_numpy(img.astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = (x - torch.tensor(NORMALIZE_MEAN).view(1, 3, 1, 1)) / NORMALIZE_STD
    h, w = img.shape[:2]
    x = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect")
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1)[0, :, :h, :w]
    return p.permute(1, 2, 0).numpy()


def test_normalisation_constants_match_hpacellseg():
    assert NORMALIZE_STD == pytest.approx(0.2348, abs=1e-4)
    assert NORMALIZE_MEAN == pytest.approx((124 / 255, 117 / 255, 104 / 255))


@pytest.mark.parametrize("shape", [(432, 432), (96, 64), (64, 96), (512, 512), (33, 70)])
def test_output_size_equals_input_size(shape):
    img = _rgb(*shape)
    (m,) = predict_maps(PixelNet(), [img])
    assert m.shape == (*shape, 3) and m.dtype == np.uint8


def test_1728_image_at_quarter_scale_is_padded_and_cropped():
    # 1728 / 4 = 432 is not a multiple of 32: the original crashes here.
    img = _rgb(432, 432, seed=3)
    (m,) = predict_maps(PixelNet(), [img])
    assert m.shape == (432, 432, 3)
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    p = predict_probs(PixelNet(), x)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(p, _reference_probs(PixelNet(), img), atol=1e-6, rtol=0)
    # quantisation: round(p * 255), channel 0 zeroed
    assert np.abs(m[..., 1:].astype(float) - p[..., 1:] * 255).max() <= 0.5 + 1e-4
    assert (m[..., 0] == 0).all()


def test_pad_is_bottom_right_reflection_and_noop_on_multiples():
    x = torch.arange(2 * 3 * 40 * 33, dtype=torch.float32).view(2, 3, 40, 33)
    y = pad_to_multiple(x)
    assert y.shape == (2, 3, 64, 64)
    assert torch.equal(y[..., :40, :33], x)
    assert torch.equal(y[..., 40, :33], x[..., 38, :])  # mirrored about the last row
    z = torch.zeros(1, 3, 64, 96)
    assert pad_to_multiple(z) is z


def test_non_square_output_is_not_transposed():
    # A bright block in the top-right corner of a tall image must stay top-right.
    img = np.zeros((96, 64, 3), np.uint8)
    img[:20, 40:, :] = 255
    (m,) = predict_maps(PixelNet(), [img])
    assert m.shape == (96, 64, 3)
    inside, outside = m[5, 60], m[80, 5]
    assert not np.array_equal(inside, outside)
    np.testing.assert_array_equal(m[:20, 40:], np.broadcast_to(inside, (20, 24, 3)))
    np.testing.assert_array_equal(m[20:, :], np.broadcast_to(outside, (76, 64, 3)))


@pytest.mark.parametrize("name", ["flips", "d4"])
def test_tta_with_equivariant_net_equals_no_tta(name):
    img = _rgb(96, 64, seed=2)  # non-square: transposed views have swapped H, W
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    p0 = predict_probs(PixelNet(), x, tta="none")
    p8 = predict_probs(PixelNet(), x, tta=name)
    assert p8.shape == p0.shape == (1, 3, 96, 64)
    torch.testing.assert_close(p8, p0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", TTA.get("d4"))
def test_each_dihedral_inverse_is_exact(t: Dihedral):
    x = torch.randn(2, 3, 32, 64)
    assert torch.equal(t.inverse(t.forward(x)), x)
    # with a non-equivariant net, a single view differs from the plain prediction (so the views are really applied)
    if t != Dihedral():
        img = torch.from_numpy(_rgb(32, 64, seed=4)).permute(2, 0, 1)[None]
        assert not torch.allclose(predict_probs(ShiftNet(), img, tta=[t]), predict_probs(ShiftNet(), img))


def test_tta_names_are_registered():
    assert set(TTA.names()) >= {"none", "flips", "d4"}
    assert len(TTA.get("d4")) == 8 and len(set(TTA.get("d4"))) == 8


def test_batching_equals_one_at_a_time_with_mixed_sizes():
    imgs = [_rgb(64, 64, 0), _rgb(96, 64, 1), _rgb(64, 64, 2), _rgb(50, 64, 3), _rgb(64, 64, 4), _rgb(60, 60, 5)]
    net = ShiftNet()
    batched = predict_maps(net, imgs, batch_size=3)
    single = [predict_maps(net, [i], batch_size=1)[0] for i in imgs]
    assert [m.shape[:2] for m in batched] == [i.shape[:2] for i in imgs]
    for a, b in zip(batched, single):
        np.testing.assert_array_equal(a, b)


def test_uint16_and_float_inputs_give_the_same_maps_as_uint8():
    img8 = _rgb(64, 64, seed=6)
    img16 = img8.astype(np.uint16) * 257  # 255 -> 65535
    imgf = img8.astype(np.float32) / 255
    (m8,) = predict_maps(PixelNet(), [img8])
    (m16,) = predict_maps(PixelNet(), [img16])
    (mf,) = predict_maps(PixelNet(), [imgf])
    np.testing.assert_array_equal(m8, m16)
    np.testing.assert_array_equal(m8, mf)


def test_channel_selection_rgby():
    img = np.zeros((4, 5, 4), np.uint8)
    for c in range(4):
        img[..., c] = 10 * (c + 1)  # red 10, green 20, blue 30, yellow 40
    assert nuclei_channels(img)[0, 0].tolist() == [30, 30, 30]
    assert cell_channels(img)[0, 0].tolist() == [10, 40, 30]
    with pytest.raises(ValueError, match=r"\(h, w, 4\)"):
        nuclei_channels(img[..., :3])


class RecordingNet(PixelNet):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.train()

    def forward(self, x):
        self.seen.append(x.clone())
        assert not self.training, "predictor must put the network in eval mode"
        return super().forward(x)


def test_predictor_feeds_each_network_its_channels_in_eval_mode():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, size=(64, 96, 4), dtype=np.uint8)
    nuc, cell = RecordingNet(), RecordingNet()
    pred = HpaPredictor(nuc, cell, tta="d4")
    ((nmap, cmap),) = pred([img])
    assert nmap.shape == cmap.shape == (64, 96, 3)
    assert len(nuc.seen) == 1 and len(cell.seen) == 8  # TTA only on the cell network by default
    to_net = lambda a: ((torch.from_numpy(a).float() / 255 - torch.tensor(NORMALIZE_MEAN)) / NORMALIZE_STD).permute(2, 0, 1)  # noqa: E731
    torch.testing.assert_close(nuc.seen[0][0], to_net(img[..., [2, 2, 2]]))
    torch.testing.assert_close(cell.seen[0][0], to_net(img[..., [0, 3, 2]]))


@pytest.mark.slow
def test_real_dpn_unet_tiny_input_batched_and_padded():
    torch.manual_seed(0)
    net = create_dpn_unet().eval()
    imgs = [_rgb(64, 96, 0), _rgb(48, 64, 1), _rgb(64, 96, 2)]
    batched = predict_maps(net, imgs, batch_size=2, tta="none")
    assert [m.shape for m in batched] == [(64, 96, 3), (48, 64, 3), (64, 96, 3)]
    single = predict_maps(net, imgs[2:], batch_size=1)[0]
    # CPU kernels may pick a different algorithm per batch size: allow one quantisation step.
    assert np.abs(batched[2].astype(int) - single.astype(int)).max() <= 1
    assert (batched[0][..., 0] == 0).all() and batched[0][..., 1:].std() > 0


class FirstChannelNet(nn.Module):
    """Interior logit = 3 x the first normalised input channel: bright pixels are "interior"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0, x.shape
        zeros = torch.zeros_like(x[:, :1])
        return torch.cat([zeros, zeros - 2.0, 3.0 * x[:, :1]], dim=1)


def test_hpa_backend_feeds_blue_to_nuclei_and_red_to_cells_and_labels_at_scale():
    from segment.backends import HpaBackend
    from segment.labelling import LabelParams, label_cell

    # 4 cells (radius 18 px in red) each with a nucleus (radius 9 px in blue), at 1/4 HPA scale:
    # nuclei (~254 px) pass the 157 px cut-off, cells (~1000 px) the 344 px one; a nucleus-sized
    # cell would not, so swapping the networks' inputs finds no cells.
    yy, xx = np.mgrid[:100, :140]
    img = np.zeros((100, 140, 4), np.uint8)
    for cy, cx in [(25, 30), (25, 100), (72, 40), (75, 105)]:
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        img[r2 <= 18**2, 0] = 230
        img[r2 <= 9**2, 2] = 230
    backend = HpaBackend.from_networks(FirstChannelNet(), FirstChannelNet(), weights_id="test", scale=1.0,
                                       image_scale=0.25, batch_size=2)
    assert backend.label_params == LabelParams().scaled(0.25)
    (nuclei, cells), (nuclei2, cells2) = backend.segment([img, img])
    assert cells.shape == (100, 140) and cells.max() == 4
    assert np.array_equal(cells, cells2) and np.array_equal(nuclei, nuclei2)
    for k in range(1, 5):
        assert 700 < (cells == k).sum() < 1100 and 157 <= (nuclei == k).sum() < 300
    (n_map, c_map), = HpaPredictor(FirstChannelNet(), FirstChannelNet())([img])
    expected = label_cell(n_map, c_map, params=LabelParams().scaled(0.25))
    np.testing.assert_array_equal(nuclei, expected[0])
    np.testing.assert_array_equal(cells, expected[1])
