"""The HPA-Cell-Segmentation network, rebuilt so the published weight files load as they are.

``DPNUnet`` is ``DPNUnet(3, 3, 'dpn92')`` of hpacellseg's ``pytorch_zoo`` (the haoxusci fork), with the
same 595 state-dict names, shapes and dtypes, so ``dpn_unet_nuclei_v1.pth`` and
``dpn_unet_cell_3ch_v1.pth`` load strictly without any key renaming. It is proven equal to the original
by ``tests/test_network.py`` against a fixture made with the original code.

Encoder: timm's DPN-92 (``timm.create_model('dpn92', features_only=True)``, never pretrained) IS the
original encoder block for block; its modules are regrouped here into ``encoder_stages[0..4]`` with the
original's indices, and the closing BatchNorm(2688, eps 1e-3) + ReLU the original has after the last
stage (``encoder_stages.4.3.bn``) is added. Decoder: U-Net with nearest x2 upsampling, 3x3 convs with bias
and ReLU, no normalisation.

Speed: the decoder holds ~88% of the multiply-adds (~255 of ~290 G per 512² image). At inference
(no autograd) on CPU each upsample + 3x3 conv runs as four 2x2 convolutions of the un-upsampled input,
and the deep layers by Winograd (``segment.fastconv``): the same function up to float rounding, with
about half the multiply-adds (1.4-1.95x faster forwards on 2 cores). Which devices get these forms by
default is :func:`fast_decoder_default`: CPU only, because they have never been measured on a GPU,
where cuDNN picks its own algorithms for the literal layers. ``DPNUnet.set_fast_decoder(True)`` opts in
on any device (on CUDA: the phase form of the upsampling convolutions; Winograd stays CPU-only),
``set_fast_decoder(False)`` forces the literal computation (the benchmark's re-enactment of the
original uses it), ``set_fast_decoder(None)`` returns to the per-device default.

Shapes: input ``(N, 3, H, W)`` float, H and W multiples of 32 (the caller pads); output ``(N, 3, H, W)``
logits. hpacellseg takes ``softmax`` over dim 1 (``DPNUnet.predict_proba``); channel 2 is the interior,
channel 1 the border, channel 0 unused. Input normalisation happens outside the network:
``(x - (124, 117, 104) / 255) / (1 / (0.0167 * 255))`` per channel on values in [0, 1].
"""
from __future__ import annotations

import logging
import os
import re
from typing import NamedTuple

import torch
from torch import nn

from segment import fastconv

__all__ = [
    "DPNUnet",
    "NETWORK_STRIDE",
    "ENCODER_CHANNELS",
    "DPNUnetOutputs",
    "FAST_DECODER_DEVICE_TYPES",
    "create_dpn_unet",
    "fast_decoder_default",
    "load_dpn_unet",
]

logger = logging.getLogger(__name__)

#: H and W of the input must be multiples of this (five stride-2 stages).
NETWORK_STRIDE = 32
#: Channels of the five encoder outputs (skips), at strides 2, 4, 8, 16 and 32.
ENCODER_CHANNELS = (64, 336, 704, 1552, 2688)
# DPN-92 blocks per stage (k_sec); stage 1 also holds the stem's max-pool at index 0.
_BLOCKS_PER_STAGE = (3, 4, 20, 3)
_NUM_LOGITS = 3
_IN_CHANNELS = 3
_BN_EPS = 1e-3
# On CPU, decoder layers with at least this many input channels use the Winograd forms: the deep
# layers, where few pixels and many channels make the transforms cheap next to the products. From
# benchmarks/bench_fastconv.py on 2 cores (512² input): 1.3-2.5x faster than the direct or phase
# convolution from 672 input channels; tied at 336, slower at 128 and 64.
_CPU_WINOGRAD_MIN_CHANNELS = 512
#: Device types whose decoder runs the derived-kernel forms unless told otherwise: where they were
#: measured faster (CPU, 2 cores: 1.4-1.95x per forward). CUDA is not among them until a GPU
#: measurement says so: its default is the literal layers, which cuDNN runs with its own algorithms.
FAST_DECODER_DEVICE_TYPES = frozenset({"cpu"})


def fast_decoder_default(device_type: str) -> bool:
    """Whether the decoder uses its derived-kernel forms on ``device_type`` ("cpu", "cuda", ...) by default.

    True for the types of :data:`FAST_DECODER_DEVICE_TYPES` (CPU), False elsewhere; the
    ``set_fast_decoder`` of :class:`DPNUnet` overrides it for one network.
    """
    return device_type in FAST_DECODER_DEVICE_TYPES


def _fast_forms(setting: bool | None, x: torch.Tensor) -> bool:
    """A block's ``phase_upsample`` / ``winograd`` setting resolved for input ``x`` (None: per device)."""
    return fast_decoder_default(x.device.type) if setting is None else setting


class DPNUnetOutputs(NamedTuple):
    """What ``DPNUnet.forward_intermediates`` returns (all NCHW, the input's dtype).

    ``skips``: the 5 encoder outputs, channels ``ENCODER_CHANNELS`` at H/2 .. H/32 (residual and dense
    paths concatenated, residual first). ``bottlenecks``: the 4 bottleneck outputs, channels
    1552, 704, 336, 64 at H/16 .. H/2. ``logits``: ``(N, 3, H, W)``.
    """

    skips: list[torch.Tensor]
    bottlenecks: list[torch.Tensor]
    logits: torch.Tensor


class _CatBnAct(nn.Module):
    """Closing BatchNorm + ReLU over the last stage's concatenated paths (``encoder_stages.4.3``)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_channels, eps=_BN_EPS)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


def _inference_path(weight: torch.Tensor, x: torch.Tensor) -> bool:
    """True when no autograd graph is wanted, so the derived-kernel forms may run."""
    return not (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))


def _cpu_winograd(x: torch.Tensor) -> bool:
    """Winograd forms for deep layers on CPU, outside autocast.

    On CUDA cuDNN picks its own algorithms, and autocast would change the products' dtypes.
    """
    return (
        x.device.type == "cpu"
        and x.shape[1] >= _CPU_WINOGRAD_MIN_CHANNELS
        and not torch.is_autocast_enabled("cpu")
    )


class _UpConvBlock(nn.Module):
    """Nearest x2 upsample, 3x3 conv with bias, ReLU; the original's ``UnetDecoderBlock`` (``layer.1``).

    At inference (no autograd) it runs as four 2x2 convolutions of the input
    (``segment.fastconv.phase_upsample_conv``): equal up to float rounding, 2.25x fewer multiply-adds, no
    upsampled copy; on CPU the deep ones compute those by Winograd F(2x2, 2x2). The kernels are derived
    from ``layer.1.weight`` on first use and kept outside the state dict (rebuilt when the weight
    changes). ``phase_upsample``: None (default) decides per device (:func:`fast_decoder_default`),
    True always takes the phase form, False the literal upsample-then-convolve computation.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.phase_upsample: bool | None = None
        self._kernels = fastconv.DerivedKernels(
            lambda w: fastconv.phase_kernels(w).contiguous(memory_format=torch.channels_last)
        )
        self._winograd_kernels = fastconv.DerivedKernels(
            lambda w: fastconv.winograd_phase_kernels(fastconv.phase_kernels(w))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_concat(x, None)

    def forward_concat(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        """``cat([block(x), skip], dim=1)`` (just ``block(x)`` when ``skip`` is None).

        On the phase path the block writes straight into the concatenated tensor, saving a copy.
        """
        conv = self.layer[1]
        if not (_fast_forms(self.phase_upsample, x) and _inference_path(conv.weight, x)):
            out = self.layer(x)
            return out if skip is None else torch.cat([out, skip], dim=1)
        bias = conv.bias.repeat(4)
        if _cpu_winograd(x):
            return fastconv.phase_upsample_conv(
                x, None, bias, skip=skip, form="winograd", winograd=self._winograd_kernels.get(conv.weight)
            )
        return fastconv.phase_upsample_conv(x, self._kernels.get(conv.weight), bias, skip=skip)


class _ConvBottleneck(nn.Module):
    """3x3 conv with bias + ReLU over ``[decoder output, skip]``; the original's ``ConvBottleneck``.

    At inference on CPU the deep ones (``_CPU_WINOGRAD_MIN_CHANNELS`` and more input channels) run as
    Winograd F(4x4, 3x3) (``segment.fastconv.winograd_conv3x3``), equal up to float rounding.
    ``winograd``: None (default) decides per device (:func:`fast_decoder_default`), False never.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.winograd: bool | None = None
        self._kernels = fastconv.DerivedKernels(fastconv.winograd_kernels)

    def forward(self, decoded: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Decoder output first: the weights were trained with this channel order.
        return self.forward_concatenated(torch.cat([decoded, skip], dim=1))

    def forward_concatenated(self, x: torch.Tensor) -> torch.Tensor:
        """The block on the already concatenated ``[decoder output, skip]``."""
        conv = self.seq[0]
        if _fast_forms(self.winograd, x) and _inference_path(conv.weight, x) and _cpu_winograd(x):
            return fastconv.winograd_conv3x3(x, self._kernels.get(conv.weight), conv.bias, relu=True)
        return self.seq(x)


def _timm_dpn92_stages() -> nn.ModuleList:
    """timm's DPN-92 modules regrouped into the original's ``encoder_stages`` layout.

    Stage 0 = stem conv 7x7/2 + BN-ReLU (timm keeps BN and ReLU in one ``BatchNormAct2d``, so the
    original's parameter-free ``encoder_stages.0.2`` ReLU has no own index here); stage 1 = max-pool +
    conv2_1..3; stages 2-4 = the DPN blocks of conv3/conv4/conv5, plus the closing BN-ReLU in stage 4.
    """
    import timm  # heavy import, only when a network is built

    # pretrained=False: never touch the network; the encoder weights come from the HPA files.
    features = timm.create_model("dpn92", pretrained=False, features_only=True)
    children = dict(features.named_children())
    # features_only flattens timm's `features` Sequential into `features_<name>` children.
    by_name = {re.sub(r"^features[._]", "", name): module for name, module in children.items()}

    def take(name: str) -> nn.Module:
        try:
            return by_name.pop(name)
        except KeyError:
            raise RuntimeError(
                f"timm's dpn92 has no module {name!r} (found {sorted(by_name)}); this code expects the "
                "layout of timm 1.0.x: pin timm as in constraints.txt"
            ) from None

    stem = take("conv1_1")
    stages: list[nn.Module] = [nn.Sequential(stem.conv, stem.bn)]
    for stage_index, num_blocks in enumerate(_BLOCKS_PER_STAGE, start=2):
        blocks = [take(f"conv{stage_index}_{j}") for j in range(1, num_blocks + 1)]
        if stage_index == 2:
            blocks.insert(0, take("conv1_pool"))
        if stage_index == 5:
            blocks.append(_CatBnAct(ENCODER_CHANNELS[-1]))
        stages.append(nn.Sequential(*blocks))
    if by_name:
        raise RuntimeError(f"timm's dpn92 has modules this code does not place: {sorted(by_name)}")
    return nn.ModuleList(stages)


class DPNUnet(nn.Module):
    """U-Net with a DPN-92 encoder: 3 input channels, 3 output logits, same state dict as hpacellseg's.

    Build it with ``create_dpn_unet()`` (random weights) or ``load_dpn_unet(path)`` (published weights).
    ``forward(x)``: ``x`` float ``(N, 3, H, W)`` (already normalised, see the module docstring), H and W
    multiples of 32; returns logits ``(N, 3, H, W)`` in ``x``'s dtype. Device-agnostic; no op depends on
    the dtype, so it runs under ``torch.autocast``.
    """

    def __init__(self) -> None:
        super().__init__()
        filters = ENCODER_CHANNELS
        # Registration order (decoder first) mirrors the original's, so state_dict() lists keys in the
        # published order; only the key set matters for loading.
        self.bottlenecks = nn.ModuleList(
            _ConvBottleneck(2 * filters[i], filters[i]) for i in reversed(range(len(filters) - 1))
        )
        self.decoder_stages = nn.ModuleList(
            _UpConvBlock(filters[i + 1], filters[i]) for i in range(len(filters) - 1)
        )
        self.last_upsample = _UpConvBlock(filters[0], filters[0])
        self.final = nn.Sequential(nn.Conv2d(filters[0], _NUM_LOGITS, kernel_size=3, padding=1))
        self.encoder_stages = _timm_dpn92_stages()

    @staticmethod
    def _check_input(x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != _IN_CHANNELS:
            raise ValueError(
                f"DPNUnet expects a (N, {_IN_CHANNELS}, H, W) tensor, got shape {tuple(x.shape)}"
            )
        height, width = x.shape[-2:]
        if height % NETWORK_STRIDE or width % NETWORK_STRIDE:
            padded = tuple(-(-s // NETWORK_STRIDE) * NETWORK_STRIDE for s in (height, width))
            raise ValueError(
                f"DPNUnet needs H and W divisible by {NETWORK_STRIDE}, got {height}x{width}; "
                f"pad the input to {padded[0]}x{padded[1]} and crop the output back"
            )

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The 5 encoder outputs (skips) for ``x`` ``(N, 3, H, W)``; see ``DPNUnetOutputs.skips``."""
        self._check_input(x)
        skips = []
        for stage in self.encoder_stages:
            x = stage(x)
            skips.append(x)
        return skips

    def _decode(self, skips: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = skips[-1]
        bottleneck_outputs = []
        for i, bottleneck in enumerate(self.bottlenecks):
            level = len(skips) - 2 - i  # 3, 2, 1, 0: the skip one level up
            # Decoder output first, then the skip: the order the weights were trained with.
            x = bottleneck.forward_concatenated(self.decoder_stages[level].forward_concat(x, skips[level]))
            bottleneck_outputs.append(x)
        x = self.last_upsample(x)
        return bottleneck_outputs, self.final(x)

    def set_fast_decoder(self, enabled: bool | None) -> DPNUnet:
        """Use the derived-kernel forms of the decoder at inference: True, False, or None (per device).

        They compute the same function up to float rounding (``segment.fastconv``). None, the
        default, uses them where :func:`fast_decoder_default` says (CPU, not CUDA); True opts in on
        every device (on CUDA the phase form of the upsampling convolutions; Winograd is CPU-only);
        False gives the literal computation of the original (nearest upsample, then direct 3x3
        convolutions). Returns ``self``.
        """
        setting = None if enabled is None else bool(enabled)
        for module in self.modules():
            if isinstance(module, _UpConvBlock):
                module.phase_upsample = setting
            elif isinstance(module, _ConvBottleneck):
                module.winograd = setting
        return self

    def forward_intermediates(self, x: torch.Tensor) -> DPNUnetOutputs:
        """Skips, bottleneck outputs and logits in one pass (for inspection and tests)."""
        skips = self.encode(x)
        bottleneck_outputs, logits = self._decode(skips)
        return DPNUnetOutputs(skips, bottleneck_outputs, logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 3, H, W)`` for ``x`` ``(N, 3, H, W)``."""
        return self._decode(self.encode(x))[1]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the 3 logits, ``(N, 3, H, W)`` in [0, 1]: what hpacellseg computes.

        Does not switch modes or gradients: call ``model.eval()`` and wrap in ``torch.inference_mode()``.
        """
        return torch.softmax(self(x), dim=1)


def create_dpn_unet() -> DPNUnet:
    """A ``DPNUnet`` with random (timm/PyTorch default) weights; nothing is read or downloaded."""
    return DPNUnet()


def load_dpn_unet(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> DPNUnet:
    """A ``DPNUnet`` in eval mode on ``device`` with the weights of ``path`` loaded strictly.

    ``path`` is a published hpacellseg file (whole pickled module, read through the restricted
    unpickler of ``segment.weights``) or a state-dict file. Raises ``WeightsError`` (missing or unexpected
    keys, wrong shapes), ``UnsafeWeightsError`` (a pickle global outside the allowlist) or
    ``FileNotFoundError``.
    """
    from segment.weights import load_weights_into

    # Built on the meta device and filled by assignment: random initialisation of 139 M parameters
    # would take seconds only to be overwritten.
    with torch.device("meta"):
        model = DPNUnet()
    load_weights_into(model, path, assign=True)
    left_on_meta = [name for name, t in model.state_dict().items() if t.is_meta]
    if left_on_meta:  # would mean a tensor outside the state dict; a bug here, not in the file
        raise RuntimeError(f"DPNUnet tensors not filled from {path}: {left_on_meta[:5]}")
    return model.to(device).eval()
