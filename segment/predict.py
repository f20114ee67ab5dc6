"""Network inference of the two HPA segmentation U-Nets: images in, probability maps out.

Everything here is array in, array out; nothing touches the disk. The flow for one batch:

1. channels: nuclei input = (blue, blue, blue), cell input = (red, yellow, blue), from the
   RGBY ``(h, w, 4)`` image already area-resized to the segmentation scale by the reader;
2. to float in [0, 1] ON THE DEVICE (uint8 / uint16 travel to the GPU at their own width);
3. normalise like hpacellseg: ``(x - (124, 117, 104) / 255) / (1 / (0.0167 * 255))``
   (std = 0.2348);
4. pad the bottom and right edges by reflection up to a multiple of 32 (see :func:`pad_to_multiple`);
5. forward in eval mode, ``torch.autocast`` float16 on CUDA, optional dihedral TTA (softmax of
   each transformed view mapped back and averaged);
6. crop back, quantise ``round(softmax * 255)`` to uint8, zero channel 0 (as hpacellseg does).

Images of different sizes may share a call: they are grouped by padded size and each group is
cut into batches. Non-square images keep their orientation (the original returns them
transposed; this module does not).

Map layout (both networks): ``(h, w, 3)`` uint8, channel 1 = border/touching probability x 255,
channel 2 = interior probability x 255, channel 0 = 0. These feed ``segment.labelling.label_cell``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellcls.registry import Registry

__all__ = [
    "PREPROCESS_VERSION",
    "NORMALIZE_MEAN",
    "NORMALIZE_STD",
    "PAD_MULTIPLE",
    "TTA",
    "Dihedral",
    "nuclei_channels",
    "cell_channels",
    "pad_to_multiple",
    "probs_to_uint8",
    "predict_probs",
    "predict_maps",
    "HpaPredictor",
]

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 1
"""Version of the steps between the stored image and the probability maps: the reader's INTER_AREA
resize (``cellcls.io.read_image_resized``), channel choice, unit scaling, normalisation, padding,
TTA merge and uint8 quantisation. Part of the hpa backend's cache key: bump it whenever one of them
changes its output, so caches made before are redone."""

# hpacellseg normalises with these per-channel means and one std for all channels.
NORMALIZE_MEAN: tuple[float, float, float] = (124 / 255, 117 / 255, 104 / 255)
NORMALIZE_STD: float = 1 / (0.0167 * 255)
# DPNUnet downsamples 5 times: H and W must be multiples of 2**5.
PAD_MULTIPLE = 32

# RGBY channel indices (cellcls.classes.CHANNELS order).
_RED, _GREEN, _BLUE, _YELLOW = 0, 1, 2, 3


# --------------------------------------------------------------------------- channels


def nuclei_channels(image: np.ndarray) -> np.ndarray:
    """Nuclei-network input ``(h, w, 3)`` = (blue, blue, blue) of an RGBY ``(h, w, 4)`` image (same dtype)."""
    _check_rgby(image)
    return image[..., [_BLUE, _BLUE, _BLUE]]


def cell_channels(image: np.ndarray) -> np.ndarray:
    """Cell-network input ``(h, w, 3)`` = (red, yellow, blue) of an RGBY ``(h, w, 4)`` image (same dtype)."""
    _check_rgby(image)
    return image[..., [_RED, _YELLOW, _BLUE]]


def _check_rgby(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 4:
        raise ValueError(f"expected an RGBY image of shape (h, w, 4), got shape {image.shape}")


# --------------------------------------------------------------------------- TTA


@dataclass(frozen=True)
class Dihedral:
    """One of the 8 symmetries of the square acting on the last two axes of an NCHW tensor.

    ``forward`` transposes (if ``transpose``) and then flips rows / columns; ``inverse`` undoes
    it, so ``inverse(forward(x)) == x`` exactly, for non-square tensors too.
    """

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transpose:
            x = x.transpose(-2, -1)
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        return x.flip(dims) if dims else x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        dims = [d for d, on in ((-2, self.flip_rows), (-1, self.flip_cols)) if on]
        if dims:
            y = y.flip(dims)
        return y.transpose(-2, -1) if self.transpose else y


TTA: Registry[tuple[Dihedral, ...]] = Registry("tta")
TTA.add("none", (Dihedral(),))
TTA.add("flips", tuple(Dihedral(False, r, c) for r in (False, True) for c in (False, True)))
TTA.add("d4", tuple(Dihedral(t, r, c) for t in (False, True) for r in (False, True) for c in (False, True)))


# --------------------------------------------------------------------------- tensor steps


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Pad the bottom and right of an NCHW tensor by reflection up to multiples of ``multiple``.

    Why reflection: a zero pad after normalisation is a flat value the network never saw inside
    an image, and a hard edge next to cut cells; mirroring continues the local texture so the
    probabilities near the border look like those of an interior region, which is also why
    U-Net tiling traditionally mirrors. Why bottom/right only: images that are already multiples
    of 32 (2048 at 1/4 = 512) are not shifted, so their stride-32 grid and outputs equal the
    unpadded run. A pad wider than the image (tiny inputs) falls back to edge replication.
    """
    h, w = x.shape[-2:]
    pad_h = -h % multiple
    pad_w = -w % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    mode = "reflect" if pad_h < h and pad_w < w else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """NCHW float in [0, 1] -> hpacellseg-normalised float (3 channels)."""
    mean = torch.tensor(NORMALIZE_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / NORMALIZE_STD


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 / uint16 / float tensor -> float32 in [0, 1] (integers divided by their dtype max)."""
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if x.dtype in (torch.uint16, torch.int32):  # int32: uint16 images carried in a wider signed type
        return x.float() / 65535.0
    if x.dtype == torch.float64 or x.dtype == torch.float32 or x.dtype == torch.float16:
        return x.float()
    raise TypeError(f"unsupported input dtype {x.dtype}; expected uint8, uint16 or float in [0, 1]")


def _stack(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-sized (h, w, 3) arrays -> NCHW tensor (dtype kept; uint16 widened for torch ops)."""
    arr = np.stack(images)
    if arr.dtype == np.uint16:
        arr = arr.astype(np.int32)  # torch supports few ops on uint16; 4 bytes is still < float32 after /65535
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)


def probs_to_uint8(probs: torch.Tensor) -> torch.Tensor:
    """Softmax ``(N, 3, H, W)`` float -> uint8 ``round(p * 255)`` with channel 0 zeroed (hpacellseg layout)."""
    out = torch.round(probs.float().clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    out[:, 0] = 0
    return out


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict_probs(
    network: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    tta: str | Sequence[Dihedral] = "none",
    amp: bool = True,
    channels_last: bool = True,
) -> torch.Tensor:
    """Softmax probabilities of one batch.

    Parameters
    ----------
    network : callable
        Maps normalised ``(N, 3, H, W)`` float to ``(N, 3, H, W)`` logits; H and W multiples of 32
        for DPNUnet. Put it in eval mode first (:class:`HpaPredictor` does).
    x : torch.Tensor
        ``(N, 3, h, w)`` uint8, uint16 (as int32) or float in [0, 1], any h, w, on the network's device.
    tta : str or sequence of Dihedral
        A :data:`TTA` name (``"none"``, ``"flips"``, ``"d4"``) or explicit transforms; the softmax
        of each view is mapped back and the views averaged.
    amp : bool
        float16 autocast on CUDA (ignored on CPU).
    channels_last : bool
        Feed the network NHWC-strided tensors (same values up to float rounding, ~1e-7 on the
        logits). With the network converted too (``net.to(memory_format=torch.channels_last)``,
        as :class:`HpaPredictor` does), oneDNN's CPU convolutions ran DPNUnet at 512² about 1.3x
        faster in interleaved runs (3.1 s vs 4.0 s per forward, 2 shared cores, provisional);
        float16 tensor-core convolutions on CUDA prefer this layout as well.

    Returns
    -------
    torch.Tensor
        ``(N, 3, h, w)`` float32 softmax over dim 1, cropped back to the input size.
    """
    transforms = TTA.get(tta) if isinstance(tta, str) else tuple(tta)
    h, w = x.shape[-2:]
    x = pad_to_multiple(_normalise(_to_unit_float(x)))
    total: torch.Tensor | None = None
    with _autocast(x.device, amp):
        for t in transforms:
            view = t.forward(x)
            if channels_last:
                view = view.contiguous(memory_format=torch.channels_last)
            logits = network(view)
            probs = t.inverse(torch.softmax(logits.float(), dim=1))
            total = probs if total is None else total + probs
    assert total is not None
    if len(transforms) > 1:
        total = total / len(transforms)
    return total[..., :h, :w]


def _batches(shapes: Sequence[tuple[int, int]], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped by padded size (first-seen order), each group cut into ``batch_size`` chunks."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(shapes):
        key = (h + (-h % PAD_MULTIPLE), w + (-w % PAD_MULTIPLE))
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), batch_size):
            yield idx[start : start + batch_size]


def predict_maps(
    network: Callable[[torch.Tensor], torch.Tensor],
    images: Sequence[np.ndarray],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 8,
    tta: str | Sequence[Dihedral] = "none",
    amp: bool = True,
    channels_last: bool = True,
) -> list[np.ndarray]:
    """hpacellseg-layout uint8 maps for 3-channel images of any sizes.

    Parameters
    ----------
    network : callable
        Logit network on ``device``, in eval mode.
    images : sequence of np.ndarray
        ``(h_i, w_i, 3)`` uint8, uint16 or float32 in [0, 1]: the network input channels at the
        segmentation scale. Sizes may differ; equal padded sizes share a forward pass.
    batch_size : int
        Images per forward pass.
    tta, amp, channels_last
        See :func:`predict_probs`.

    Returns
    -------
    list of np.ndarray
        One ``(h_i, w_i, 3)`` uint8 map per image, in input order (channel 0 = 0,
        1 = border x 255, 2 = interior x 255).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    for i, img in enumerate(images):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i}: expected shape (h, w, 3), got {img.shape}")
    def run(batch: list[np.ndarray]) -> np.ndarray:
        x = _stack(batch).to(device, non_blocking=True)
        probs = predict_probs(network, x, tta=tta, amp=amp, channels_last=channels_last)
        return probs_to_uint8(probs).permute(0, 2, 3, 1).cpu().numpy()  # (n, h, w, 3)

    out: list[np.ndarray | None] = [None] * len(images)
    shapes = [img.shape[:2] for img in images]
    for idx in _batches(shapes, batch_size):
        if len({shapes[i] for i in idx}) == 1:
            for i, m in zip(idx, run([images[i] for i in idx])):
                out[i] = m
        else:  # same padded size, different true sizes (rare: < 32 px apart): one at a time
            for i in idx:
                out[i] = run([images[i]])[0]
    return [m for m in out if m is not None]


class HpaPredictor:
    """The two hpacellseg networks as one object: RGBY images in, (nuclei map, cell map) out.

    Parameters
    ----------
    nuclei_net, cell_net : torch.nn.Module
        DPNUnets (or anything with the same I/O). Put in eval mode and moved to ``device`` here.
    device : str or torch.device
    batch_size : int
        Images per forward pass.
    tta : str
        :data:`TTA` name applied to the CELL network (the 2021 solutions used ``"d4"``);
        ``tta_nuclei`` for the nuclei network (default ``"none"``).
    amp : bool
        float16 autocast on CUDA.
    """

    def __init__(
        self,
        nuclei_net: torch.nn.Module,
        cell_net: torch.nn.Module,
        *,
        device: torch.device | str = "cpu",
        batch_size: int = 8,
        tta: str = "none",
        tta_nuclei: str = "none",
        amp: bool = True,
    ) -> None:
        TTA.get(tta), TTA.get(tta_nuclei)  # fail early on an unknown name
        # channels_last: see predict_probs (faster convolutions; values equal up to rounding).
        self.nuclei_net = nuclei_net.eval().to(memory_format=torch.channels_last)
        self.cell_net = cell_net.eval().to(memory_format=torch.channels_last)
        self.batch_size = batch_size
        self.tta = tta
        self.tta_nuclei = tta_nuclei
        self.amp = amp
        self.to(device)

    def to(self, device: torch.device | str) -> "HpaPredictor":
        """Move both networks to ``device``."""
        self.device = torch.device(device)
        self.nuclei_net.to(self.device)
        self.cell_net.to(self.device)
        return self

    def modules(self) -> list[torch.nn.Module]:
        """The networks (for a LightningModule to register)."""
        return [self.nuclei_net, self.cell_net]

    def __call__(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """RGBY ``(h, w, 4)`` images (uint8, uint16 or float [0, 1]) at the segmentation scale ->
        one ``(nuclei_map, cell_map)`` pair of ``(h, w, 3)`` uint8 maps per image."""
        common = dict(device=self.device, batch_size=self.batch_size, amp=self.amp)
        nuclei = predict_maps(self.nuclei_net, [nuclei_channels(i) for i in images], tta=self.tta_nuclei, **common)
        cells = predict_maps(self.cell_net, [cell_channels(i) for i in images], tta=self.tta, **common)
        return list(zip(nuclei, cells))
