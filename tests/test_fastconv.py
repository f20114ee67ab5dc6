"""segment.fastconv: the decoder's cheaper forms compute what the literal layers compute."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segment import fastconv
from segment.network import DPNUnet, _ConvBottleneck, _UpConvBlock, fast_decoder_default

TOL = dict(rtol=1e-5, atol=1e-5)


def literal_upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.relu(F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1))


@pytest.mark.parametrize("form", ["conv", "winograd"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("with_skip", [False, True], ids=["alone", "with-skip"])
def test_phase_upsample_conv_equals_upsample_then_conv(form, channels_last, with_skip):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 9, generator=g)  # batch of 2, non-square
    weight, bias = torch.randn(7, 5, 3, 3, generator=g), torch.randn(7, generator=g)
    skip = torch.randn(2, 4, 12, 18, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    expected = literal_upsample_conv(x, weight, bias)
    if with_skip:
        expected = torch.cat([expected, skip], dim=1)
    kernels = fastconv.phase_kernels(weight)
    got = fastconv.phase_upsample_conv(
        x, kernels, bias.repeat(4), skip=skip if with_skip else None, form=form,
        winograd=fastconv.winograd_phase_kernels(kernels),
    )
    assert got.shape == expected.shape == (2, 7 + 4 * with_skip, 12, 18)
    torch.testing.assert_close(got, expected, **TOL)


def test_phase_kernels_sum_the_taps_each_phase_reads():
    weight = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows (0 1 2), (3 4 5), (6 7 8)
    phases = fastconv.phase_kernels(weight)
    assert phases.shape == (4, 1, 2, 2)
    # Phase (0, 0) reads (previous, own) row and column: "own" merges the middle and last taps.
    torch.testing.assert_close(phases[0, 0], torch.tensor([[0.0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]]))
    # Phase (1, 1) reads (own, next): "own" merges the first and middle taps.
    torch.testing.assert_close(phases[3, 0], torch.tensor([[0 + 1 + 3 + 4, 2 + 5], [6 + 7.0, 8]]))
    assert phases.sum() == 4 * weight.sum()  # every tap lands once in each phase


@pytest.mark.parametrize("shape", [(1, 6, 8, 8), (3, 4, 2, 6), (2, 9, 10, 4), (1, 3, 7, 5)])
@pytest.mark.parametrize("output_tile", [2, 4])
@pytest.mark.parametrize("relu", [False, True])
def test_winograd_equals_a_3x3_convolution(shape, output_tile, relu):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    weight, bias = torch.randn(5, shape[1], 3, 3, generator=g), torch.randn(5, generator=g)
    expected = F.conv2d(x, weight, bias, padding=1)
    if relu:
        expected = torch.relu(expected)
    kernels = fastconv.winograd_kernels(weight, output_tile=output_tile)
    assert kernels.shape == ((output_tile + 2) ** 2, shape[1], 5)
    got = fastconv.winograd_conv3x3(x, kernels, bias, relu=relu)
    assert got.shape == expected.shape  # sizes that are not multiples of the tile: padded, cropped
    # F(4x4, 3x3) rounds more (its transforms multiply by up to 8 and divide by 24): ~1e-5 of the range.
    tol = TOL if output_tile == 2 else dict(rtol=0, atol=2e-5 * float(expected.abs().max()))
    torch.testing.assert_close(got, expected, **tol)


def test_bad_shapes_are_refused_with_the_shape():
    with pytest.raises(ValueError, match=r"\(O, I, 3, 3\).*\(1, 1, 2, 2\)"):
        fastconv.phase_kernels(torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\(O, I, 3, 3\).*\(4, 3, 5, 5\)"):
        fastconv.winograd_kernels(torch.zeros(4, 3, 5, 5))
    with pytest.raises(ValueError, match=r"\(O, I, 2, 2\).*\(4, 3, 3, 3\)"):
        fastconv.winograd_phase_kernels(torch.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match="output_tile must be one of"):
        fastconv.winograd_kernels(torch.zeros(4, 3, 3, 3), output_tile=3)
    with pytest.raises(ValueError, match=r"\(16 or 36, I, O\).*\(9, 3, 2\)"):
        fastconv.winograd_conv3x3(torch.zeros(1, 3, 4, 4), torch.zeros(9, 3, 2), None)
    with pytest.raises(ValueError, match="unknown form 'fft'"):
        fastconv.phase_upsample_conv(torch.zeros(1, 3, 4, 4), torch.zeros(8, 3, 2, 2), torch.zeros(8), form="fft")
    with pytest.raises(ValueError, match="needs the winograd kernels"):
        fastconv.phase_upsample_conv(torch.zeros(1, 3, 4, 4), None, torch.zeros(8), form="winograd")


def test_derived_kernels_follow_weight_changes():
    calls = []
    cache = fastconv.DerivedKernels(lambda w: (calls.append(1), w * 2)[1])
    weight = torch.nn.Parameter(torch.ones(3))
    torch.testing.assert_close(cache.get(weight), torch.full((3,), 2.0))
    cache.get(weight)
    assert len(calls) == 1  # cached
    with torch.no_grad():
        weight.mul_(5)  # in place, as an optimizer step or load_state_dict does
    torch.testing.assert_close(cache.get(weight), torch.full((3,), 10.0))
    assert len(calls) == 2


def test_derived_kernels_drop_a_freed_weight_and_miss_on_a_new_one_at_its_address():
    cache = fastconv.DerivedKernels(lambda w: w * 2)
    weight = torch.ones(4096)
    cache.get(weight)
    address = weight.data_ptr()
    del weight  # freed: its kernels must go with it, not wait for the next get()
    assert cache._value is None
    # Same size, same version (0): the allocator usually hands back the freed block, so only the
    # tensor's identity tells them apart.
    candidates = [torch.full((4096,), float(k)) for k in range(1, 9)]
    reused = [t for t in candidates if t.data_ptr() == address] or candidates[:1]
    for t in reused + candidates:
        torch.testing.assert_close(cache.get(t), t * 2)


def test_derived_kernels_follow_a_weight_moved_to_another_layout_or_dtype():
    conv = torch.nn.Conv2d(2, 3, 3)
    cache = fastconv.DerivedKernels(lambda w: w.clone())
    cache.get(conv.weight)
    conv.double()  # same Parameter object and version, new dtype and storage
    assert cache.get(conv.weight).dtype == torch.float64
    conv.to(memory_format=torch.channels_last)  # same object, dtype and version, new storage
    # clone keeps the layout it is given: channels_last only if derived again from the new storage.
    assert cache.get(conv.weight).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cache.get(conv.weight), conv.weight.detach())


def _literal_decoder_step(up: _UpConvBlock, bottleneck: _ConvBottleneck, x, skip):
    return bottleneck.seq(torch.cat([up.layer(x), skip], dim=1))


@pytest.mark.parametrize("winograd_min", [8, 10_000], ids=["winograd", "phase-conv"])
def test_reloaded_weights_with_assign_are_never_served_stale_kernels(monkeypatch, winograd_min):
    # load_state_dict(assign=True) swaps in new tensors. Loading twice between forwards frees the
    # weight the kernels were derived from, and the allocator mostly hands its address (version 0
    # like it) to the next state's weight: an address-keyed cache served stale kernels in about
    # 2 of 3 of these reloads.
    monkeypatch.setattr("segment.network._CPU_WINOGRAD_MIN_CHANNELS", winograd_min)
    up, bottleneck = _UpConvBlock(16, 8).eval(), _ConvBottleneck(16, 8).eval()
    g = torch.Generator().manual_seed(4)
    x, skip = torch.randn(2, 16, 4, 6, generator=g), torch.randn(2, 8, 8, 12, generator=g)

    def new_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        # In place: no temporary takes the freed address before the weight does.
        return {k: torch.randn(v.shape, generator=g).mul_(0.1) for k, v in module.state_dict().items()}

    for _ in range(12):
        for module in (up, bottleneck):
            for _ in range(2):
                module.load_state_dict(new_state(module), assign=True)
        with torch.no_grad():
            got = bottleneck.forward_concatenated(up.forward_concat(x, skip))
            expected = _literal_decoder_step(up, bottleneck, x, skip)
        torch.testing.assert_close(got, expected, **TOL)


@pytest.mark.parametrize("winograd_min, built", [(8, "winograd"), (10_000, "conv")])
def test_decoder_blocks_pick_their_cpu_form_and_stay_equal(monkeypatch, winograd_min, built):
    # Channel cut-off lowered (or raised) so each CPU form runs at test size.
    monkeypatch.setattr("segment.network._CPU_WINOGRAD_MIN_CHANNELS", winograd_min)
    torch.manual_seed(2)
    up, bottleneck = _UpConvBlock(8, 6).eval(), _ConvBottleneck(12, 6).eval()
    x, skip = torch.randn(2, 8, 4, 6), torch.randn(2, 6, 8, 12)
    with torch.no_grad():
        got = bottleneck.forward_concatenated(up.forward_concat(x, skip))
        expected = bottleneck.seq(torch.cat([up.layer(x), skip], dim=1))
    torch.testing.assert_close(got, expected, **TOL)
    assert (up._winograd_kernels._value is not None) == (built == "winograd")
    assert (up._kernels._value is not None) == (built == "conv")
    assert (bottleneck._kernels._value is not None) == (built == "winograd")


def test_training_with_autograd_uses_the_literal_layers():
    torch.manual_seed(3)
    up = _UpConvBlock(3, 4).train()
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    up(x).sum().backward()
    assert x.grad is not None and up.layer[1].weight.grad is not None
    assert up._kernels._value is None  # no derived kernels built for a training step


def _settings(blocks) -> set:
    return {m.phase_upsample if isinstance(m, _UpConvBlock) else m.winograd for m in blocks}


def test_set_fast_decoder_switches_every_decoder_block():
    with torch.device("meta"):
        model = DPNUnet()
    blocks = [m for m in model.modules() if isinstance(m, (_UpConvBlock, _ConvBottleneck))]
    assert len(blocks) == 9  # 4 decoder stages + last upsample, 4 bottlenecks
    assert _settings(blocks) == {None}  # built deciding per device
    model.set_fast_decoder(False)
    assert _settings(blocks) == {False}
    model.set_fast_decoder(True)
    assert _settings(blocks) == {True}
    model.set_fast_decoder(None)
    assert _settings(blocks) == {None}


def test_fast_decoder_is_the_default_on_cpu_only():
    # Measured 1.4-1.95x on CPU; never measured on a GPU, where the literal layers (cuDNN) stay default.
    assert fast_decoder_default("cpu") is True
    assert fast_decoder_default("cuda") is False
    assert fast_decoder_default("mps") is False


def _phase_kernels_built(up: _UpConvBlock, x: torch.Tensor) -> bool:
    up._kernels.clear()
    with torch.no_grad():
        up(x)
    return up._kernels._value is not None


def test_the_default_is_decided_by_the_input_device_and_explicit_settings_win():
    # "meta" stands in for a non-CPU device (no GPU needed): by default it runs the literal layers.
    up = _UpConvBlock(3, 4).eval()
    with torch.device("meta"):
        up_meta = _UpConvBlock(3, 4).eval()
        x_meta = torch.zeros(1, 3, 5, 5)
    x = torch.zeros(1, 3, 5, 5)
    assert _phase_kernels_built(up, x)
    assert not _phase_kernels_built(up_meta, x_meta)
    up_meta.phase_upsample = True  # explicit opt-in: the phase form on any device
    assert _phase_kernels_built(up_meta, x_meta)
    up.phase_upsample = False
    assert not _phase_kernels_built(up, x)
