"""Cheaper forms of the decoder's convolutions, equal to them up to float rounding.

DPNUnet's decoder holds ~88% of the network's multiply-adds at 512² (~255 of ~290 G), in two kinds of
layer, and both can be computed with fewer:

- nearest x2 upsample followed by a 3x3 convolution (``UnetDecoderBlock``): after upsampling, the 3x3
  window of output pixel ``(2i + a, 2j + b)`` covers only 2x2 distinct input pixels, so each of the four
  output phases ``(a, b)`` is a 2x2 convolution of the input itself (:func:`phase_kernels`,
  :func:`phase_upsample_conv`): 16 instead of 36 multiply-adds per input pixel and channel pair, and
  no upsampled copy. On CPU the deep ones go further with Winograd F(2x2, 2x2): 9 instead of 16;
- 3x3 convolutions over many channels (the ``ConvBottleneck`` layers): Winograd F(4x4, 3x3)
  (:func:`winograd_kernels`, :func:`winograd_conv3x3`) computes each 4x4 output tile with 36 instead
  of 144 multiply-adds per channel pair, as 36 batched matrix products (F(2x2, 3x3) also available).

oneDNN's CPU convolutions do none of this themselves; cuDNN chooses Winograd-like algorithms on its
own, so the network uses the Winograd forms on CPU only, and the phase form too by default only on
CPU, where it was measured (``segment.network.fast_decoder_default``).

Everything here is a pure function of tensors. Kernels are derived once per weight tensor (see
:class:`DerivedKernels`, which follows the tensor's identity and version); the Winograd ones take
4x the memory of the weights they stand for (about 1.6 GB per DPNUnet on CPU). float32 results
differ from the direct computation by rounding only: ~1e-5 of the output's range for F(4x4, 3x3),
~3e-6 for the others (bench_fastconv prints them).
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "DerivedKernels",
    "phase_kernels",
    "phase_upsample_conv",
    "winograd_kernels",
    "winograd_phase_kernels",
    "winograd_conv3x3",
]


def _check_3x3(weight: torch.Tensor) -> None:
    if weight.ndim != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"expected a (O, I, 3, 3) kernel, got shape {tuple(weight.shape)}")


# ----------------------------------------------------------------------------- upsample + conv


def phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """Kernels that give ``conv3x3(upsample_nearest_x2(x))`` from ``x`` itself.

    Output pixel ``(2i + a, 2j + b)`` of a 3x3 convolution (padding 1) of the upsampled image sees
    input rows ``i - 1 + a .. i + a`` and columns ``j - 1 + b .. j + b`` only: taps that land on the
    same input pixel are summed into one.

    Parameters
    ----------
    weight : Tensor (O, I, 3, 3)
        The 3x3 kernel of the convolution that follows the upsampling.

    Returns
    -------
    Tensor (4 * O, I, 2, 2)
        The phase kernels stacked on the output axis in the order (0, 0), (0, 1), (1, 0), (1, 1).
    """
    _check_3x3(weight)

    def merge(w: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        first, middle, last = w.unbind(dim)
        # phase 0 reads (previous, own) pixel: taps (0) and (1 + 2); phase 1 reads (own, next): (0 + 1), (2).
        return torch.stack([first, middle + last], dim), torch.stack([first + middle, last], dim)

    return torch.cat([tap for row in merge(weight, 2) for tap in merge(row, 3)], 0)


def phase_upsample_conv(
    x: torch.Tensor,
    kernels: torch.Tensor | None,
    bias: torch.Tensor,
    *,
    skip: torch.Tensor | None = None,
    relu: bool = True,
    form: str = "conv",
    winograd: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[relu](conv3x3(upsample_nearest_x2(x)) + bias)``, concatenated with ``skip`` on channels.

    Parameters
    ----------
    x : Tensor (N, I, H, W)
    kernels : Tensor (4 * O, I, 2, 2)
        From :func:`phase_kernels` (may be None for ``form="winograd"``).
    bias : Tensor (4 * O,)
        The convolution's bias repeated 4 times (once per phase).
    skip : Tensor (N, S, 2H, 2W), optional
        Appended after the O output channels; the result is written into one buffer, so this costs
        one copy of ``skip`` instead of ``torch.cat``'s copy of both.
    relu : bool
        Apply ReLU (the decoder block's activation).
    form : {"conv", "winograd"}
        How the 2x2 phase convolution is computed (same values up to rounding): a convolution, or
        Winograd F(2x2, 2x2), 9 instead of 16 multiply-adds per pixel and channel pair, which needs
        ``winograd``. Which is faster depends on the layer and the device
        (``benchmarks/bench_fastconv.py``).
    winograd : Tensor (9, I, 4 * O), optional
        :func:`winograd_phase_kernels` of ``kernels``, for ``form="winograd"``.

    Returns
    -------
    Tensor (N, O [+ S], 2H, 2W), channels_last, ``x``'s dtype after any autocast.
    """
    n, _, height, width = x.shape
    out_channels = bias.shape[0] // 4
    if form == "winograd":
        if winograd is None:
            raise ValueError("form='winograd' needs the winograd kernels (winograd_phase_kernels)")
        # (H+1) x (W+1) outputs are read; an odd count is rounded up to whole tiles (extra unread).
        phases = _winograd_padded(x, winograd, _F22_MATRICES, 2, (height + 1, width + 1)).add_(bias)
    elif form == "conv":  # (N, 4O, H+1, W+1) -> NHWC view
        phases = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels, bias).permute(0, 2, 3, 1)
    else:
        raise ValueError(f"unknown form {form!r}: expected 'conv' or 'winograd'")
    if relu:
        phases = torch.relu_(phases)
    total = out_channels + (0 if skip is None else skip.shape[1])
    out = torch.empty(
        (n, total, 2 * height, 2 * width), dtype=phases.dtype, device=phases.device,
        memory_format=torch.channels_last,
    )
    # NHWC view with row and column phases split out: (N, H, 2, W, 2, C); phase (a, b) is channel
    # block 2a+b of `phases`, read at offset (a, b).
    grid = out.permute(0, 2, 3, 1).view(n, height, 2, width, 2, total)
    for a in (0, 1):
        for b in (0, 1):
            block = (2 * a + b) * out_channels
            grid[:, :, a, :, b, :out_channels] = phases[
                :, a : a + height, b : b + width, block : block + out_channels
            ]
    if skip is not None:
        out[:, out_channels:] = skip
    return out


# ----------------------------------------------------------------------------- Winograd

# Winograd minimal filtering (Lavin & Gray 2016) with 2 outputs per tile and axis. F(2, 3): 4-pixel
# input tiles, 3-tap kernels; F(2, 2): 3-pixel input tiles, 2-tap kernels. Y = A^T [(G g G^T) * (B^T d B)] A.
_F23_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))
_F23_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_F23_AT = ((1, 1, 1, 0), (0, 1, -1, -1))
_F22_G = ((1.0, 0.0), (1.0, 1.0), (0.0, 1.0))
_F22_BT = ((1, -1, 0), (0, 1, 0), (0, -1, 1))
_F22_AT = ((1, 1, 0), (0, 1, 1))
_F22_MATRICES = (_F22_G, _F22_BT, _F22_AT)
# F(4, 3): 6-pixel input tiles, interpolation points 0, +-1, +-2 (Lavin & Gray's choice).
_F43_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)
_F43_BT = (
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_F43_AT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))
# (G, B^T, A^T) of the 3x3 algorithms by output tile size.
_F3_MATRICES = {2: (_F23_G, _F23_BT, _F23_AT), 4: (_F43_G, _F43_BT, _F43_AT)}


def _transform_kernels(weight: torch.Tensor, g_matrix: tuple) -> torch.Tensor:
    """``G w G^T`` per (output, input) channel pair, as (P*P, I, O) matrices for batched products."""
    g = torch.tensor(g_matrix, dtype=weight.dtype, device=weight.device)
    transformed = torch.einsum("ak,oikl,bl->abio", g, weight, g)
    tile = len(g_matrix)
    return transformed.reshape(tile * tile, weight.shape[1], weight.shape[0]).contiguous()


def winograd_kernels(weight: torch.Tensor, *, output_tile: int = 4) -> torch.Tensor:
    """Winograd transform ``G w G^T`` of a 3x3 kernel for F(2x2, 3x3) or F(4x4, 3x3).

    Parameters
    ----------
    weight : Tensor (O, I, 3, 3)
    output_tile : {2, 4}
        Output pixels per tile side. 4 needs 2.25 multiply-adds per output pixel and channel pair
        (direct: 9; 2: 4) with float32 errors ~1e-5 of the output's range (2: ~2e-6), and 4x the
        weights' memory (2: 16/9).

    Returns
    -------
    Tensor ((output_tile + 2)², I, O)
        One ``I x O`` matrix per position of the transformed tile (row-major).
    """
    _check_3x3(weight)
    if output_tile not in _F3_MATRICES:
        raise ValueError(f"output_tile must be one of {sorted(_F3_MATRICES)}, got {output_tile}")
    return _transform_kernels(weight, _F3_MATRICES[output_tile][0])


def winograd_phase_kernels(kernels: torch.Tensor) -> torch.Tensor:
    """Winograd F(2x2, 2x2) transform of 2x2 kernels (such as :func:`phase_kernels`' output).

    Parameters
    ----------
    kernels : Tensor (O, I, 2, 2)

    Returns
    -------
    Tensor (9, I, O)
    """
    if kernels.ndim != 4 or tuple(kernels.shape[-2:]) != (2, 2):
        raise ValueError(f"expected (O, I, 2, 2) kernels, got shape {tuple(kernels.shape)}")
    return _transform_kernels(kernels, _F22_MATRICES[0])


def _combine(coefficients: tuple[float, ...], sources: list[torch.Tensor], out: torch.Tensor) -> None:
    """``out = sum(c * s)`` over the non-zero coefficients, without temporaries."""
    terms = [(c, s) for c, s in zip(coefficients, sources) if c]
    (c0, s0), rest = terms[0], terms[1:]
    if rest and c0 == 1:
        (c1, s1), rest = rest[0], rest[1:]
        torch.add(s0, s1, alpha=c1, out=out)
    elif rest and c0 == -1 and rest[0][0] == 1:
        (_, s1), rest = rest[0], rest[1:]
        torch.sub(s1, s0, out=out)
    elif c0 == 1:
        out.copy_(s0)
    else:
        torch.mul(s0, c0, out=out)
    for c, s in rest:
        out.add_(s, alpha=c)


def _input_transform(src: torch.Tensor, dim: int, bt: tuple, step: int, out: torch.Tensor) -> None:
    """``B^T`` over overlapping tiles (``step`` apart) along ``dim`` of ``src`` into ``out[k]``."""
    tiles = out.shape[dim + 1]
    index = (slice(None),) * dim + (slice(None, None, step),)
    taps = [src.narrow(dim, r, step * (tiles - 1) + 1)[index] for r in range(len(bt))]
    for k, row in enumerate(bt):
        _combine(row, taps, out[k])


def _winograd_nhwc(
    padded: torch.Tensor, kernels: torch.Tensor, bt: tuple, at: tuple, out_hw: tuple[int, int]
) -> torch.Tensor:
    """Valid convolution of NHWC ``padded`` by Winograd -> contiguous NHWC ``(N, *out_hw, O)``.

    Output tiles are ``len(at)`` pixels a side, input tiles ``len(bt)``; ``out_hw`` must be multiples
    of the output tile and ``padded`` (N, Hp, Wp, I) must hold every input tile.
    """
    n, _, padded_w, channels = padded.shape
    tile, step = len(bt), len(at)
    out_h, out_w = out_hw
    tiles_h, tiles_w = out_h // step, out_w // step
    rows = padded.new_empty((tile, n, tiles_h, padded_w, channels))
    _input_transform(padded, 1, bt, step, rows)
    tiles = padded.new_empty((tile, tile, n, tiles_h, tiles_w, channels))
    for r in range(tile):
        _input_transform(rows[r], 2, bt, step, tiles[r])
    del rows
    out_channels = kernels.shape[2]
    products = torch.bmm(tiles.view(tile * tile, -1, channels), kernels)
    del tiles
    m = list(products.view(tile, tile, n, tiles_h, tiles_w, out_channels).unbind(0))
    out = padded.new_empty((n, tiles_h, step, tiles_w, step, out_channels))
    row = products.new_empty((tile, n, tiles_h, tiles_w, out_channels))
    for a, coefficients in enumerate(at):
        _combine(coefficients, m, row)
        for b, column_coefficients in enumerate(at):
            _combine(column_coefficients, list(row.unbind(0)), out[:, :, a, :, b, :])
    return out.view(n, out_h, out_w, out_channels)


def _winograd_padded(
    x: torch.Tensor, kernels: torch.Tensor, matrices: tuple, kernel_px: int, needed_hw: tuple[int, int]
) -> torch.Tensor:
    """Convolution of ``x`` (NCHW) zero-padded by 1 on top and left, by Winograd -> NHWC.

    Gives at least ``needed_hw`` outputs: rounded up to whole output tiles, with as much zero padding
    at the bottom and right as those tiles read (a ``kernel_px``-tap kernel reads ``kernel_px - 1``
    pixels past its output).
    """
    _, bt, at = matrices
    step = len(at)
    out_h, out_w = (-(-size // step) * step for size in needed_hw)
    height, width = x.shape[-2:]
    past = kernel_px - 2  # rows read past the last output, beyond the top padding's shift
    padded = F.pad(x, (1, out_w + past - width, 1, out_h + past - height)).permute(0, 2, 3, 1)
    return _winograd_nhwc(padded, kernels, bt, at, (out_h, out_w))


def winograd_conv3x3(
    x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None, *, relu: bool = False
) -> torch.Tensor:
    """``[relu](conv2d(x, w, bias, padding=1))`` for a 3x3 kernel, by Winograd.

    Parameters
    ----------
    x : Tensor (N, I, H, W)
    kernels : Tensor (16 or 36, I, O)
        From :func:`winograd_kernels` (16: F(2x2, 3x3); 36: F(4x4, 3x3)), same dtype and device as ``x``.
    bias : Tensor (O,) or None
    relu : bool

    Returns
    -------
    Tensor (N, O, H, W), channels_last.

    Cost: (tile)² products of ``(N*H*W/out_tile², I) x (I, O)`` plus memory-bound transforms of a few
    times the input; worth it when I and O are large next to H*W (``benchmarks/bench_fastconv.py``).
    H and W that are not multiples of the output tile are padded up and cropped back.
    """
    output_tile = {16: 2, 36: 4}.get(kernels.shape[0])
    if output_tile is None or kernels.ndim != 3:
        raise ValueError(f"expected (16 or 36, I, O) kernels from winograd_kernels, got {tuple(kernels.shape)}")
    height, width = x.shape[-2:]
    out = _winograd_padded(x, kernels, _F3_MATRICES[output_tile], 3, (height, width))[:, :height, :width]
    if bias is not None:
        out.add_(bias)
    if relu:
        out.relu_()
    return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last strides


# ----------------------------------------------------------------------------- kernel cache


class DerivedKernels:
    """Kernels derived from one weight tensor, rebuilt when the weight is another or has changed.

    A cached value belongs to one tensor OBJECT (held by a weak reference and compared with ``is``)
    in one state: its storage address, shape, version counter (bumped by in-place updates such as
    ``load_state_dict`` without ``assign`` or an optimizer step), dtype and device. So a weight
    replaced by a new tensor (``load_state_dict(..., assign=True)``, ``module.weight = ...``) is a
    miss even when the new tensor lands at the freed one's address with the same version, and the
    kernels of a freed weight are dropped as soon as it is freed. Changes made in place through
    ``.data`` bypass the version counter and are NOT seen: call :meth:`clear` after such edits.
    """

    def __init__(self, derive: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self._derive = derive
        self._source: weakref.ref | None = None
        self._state: tuple | None = None
        self._value: torch.Tensor | None = None

    @staticmethod
    def _state_of(weight: torch.Tensor) -> tuple:
        try:
            version = weight._version
        except RuntimeError:  # inference tensors keep no version counter (and cannot change in place)
            version = None
        return (weight.data_ptr(), tuple(weight.shape), version, weight.dtype, weight.device)

    def _holds(self, weight: torch.Tensor) -> bool:
        return (
            self._value is not None
            and self._source is not None
            and self._source() is weight
            and self._state == self._state_of(weight)
        )

    def get(self, weight: torch.Tensor) -> torch.Tensor:
        """The derived kernels of ``weight``, built on first use and whenever it is replaced or changed."""
        if not self._holds(weight):
            self.clear()  # free the old kernels before building new ones
            with torch.no_grad():
                value = self._derive(weight.detach())
            self._source = weakref.ref(weight, _forgetter(weakref.ref(self)))
            self._state = self._state_of(weight)
            self._value = value
        return self._value

    def clear(self) -> None:
        """Drop the cached kernels (the next :meth:`get` rebuilds them)."""
        self._source = self._state = self._value = None


def _forgetter(owner: weakref.ref) -> Callable[[weakref.ref], None]:
    """Weak-reference callback: clear ``owner``'s entry when the tensor it was derived from is freed.

    It holds the cache only weakly, so the cache and its kernels are not kept alive by the tensor.
    """

    def forget(ref: weakref.ref) -> None:
        cache = owner()
        if cache is not None and cache._source is ref:
            cache.clear()

    return forget
