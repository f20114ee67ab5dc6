"""Test-time augmentation of cell crops: tensor in, probabilities out.

A TTA is a tuple of :class:`Transform` s, each mapping a batch ``(N, C, S, S)`` float tensor to
``(N, C, S', S')``; :func:`predict_tta` runs the model on every transformed batch and averages the
sigmoid outputs. TTAs are chosen by name from :data:`TTA` (a :class:`cellcls.registry.Registry`):

==========  ===  ================================================================================
name        #    transforms
==========  ===  ================================================================================
none        1    identity
flips       4    identity, hflip, vflip, hflip+vflip (= rotation by 180 degrees)
d4          8    the dihedral group of the square: rotations by 0/90/180/270 degrees, each also
                 transposed (what the 7th place ran, "8x D4 TTA")
seed002     4    hflip, vflip, resize 0.8, resize 1.2: seed ``002``'s "4x TTA" (HPA_FACTS §5)
==========  ===  ================================================================================

``seed002`` has NO identity pass: "4x" with four named transforms means four forward passes,
exactly those four. (Adding the identity would give the plain view 1/5 of the weight, a different
TTA; register it under another name if wanted.)

Resizing. ``resize f`` scales the crop's content by ``f`` (bilinear, anti-aliased when shrinking,
``align_corners=False``). By default the tensor size changes with it: 256 -> round(256 f) = 205 or
307 pixels (half up). CNNs that end in global pooling (every timm CNN, the 2019 heads) accept any
size >= their total stride, and seed ``002`` fed its models crops of other sizes this way. For a
model that needs a fixed input size (ViT-style position embeddings, a flatten+linear head), pass
``keep_size=True``: the scaled content is then zero-padded (f < 1) or centre-cropped (f > 1) back to
S x S. Zero padding fits the crops (:mod:`cellcls.crops`), whose pixels outside the cell are 0
already. Resizing back to S instead would undo the transform and make it the identity.

Averaging probabilities, not logits. :func:`predict_tta` returns ``mean_t sigmoid(model(t(x)))``.
The averaged quantity is what the metric ranks, a confidence in [0, 1], and stays one; every TTA
and model ensemble of the 2021 solutions averaged probabilities; and one view with an extreme logit
(+20 for an out-of-distribution view) cannot outvote the others, because its sigmoid saturates at 1
while its logit would dominate a logit mean. (The two orders differ: mean of sigmoids != sigmoid of
mean logits, unless every view agrees.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cellcls.errors import ParameterError
from cellcls.registry import Registry

__all__ = [
    "Transform",
    "TTA",
    "get_tta",
    "tta_names",
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "transpose",
    "dihedral",
    "resize",
    "predict_tta",
]

Tensor = torch.Tensor


@dataclass(frozen=True)
class Transform:
    """One TTA view: a name and a function ``(N, C, H, W) tensor -> (N, C, H', W') tensor``.

    The function never modifies its input.
    """

    name: str
    fn: Callable[[Tensor], Tensor]

    def __call__(self, batch: Tensor) -> Tensor:
        return self.fn(batch)


TTA: Registry[Callable[..., tuple[Transform, ...]]] = Registry("tta")
"""TTA factories by name; each ``factory(*, keep_size: bool) -> tuple[Transform, ...]``."""


# ----------------------------------------------------------------------------- transforms
def identity() -> Transform:
    """The batch as it is."""
    return Transform("identity", lambda x: x)


def hflip() -> Transform:
    """Mirror left-right (flip the last, width axis)."""
    return Transform("hflip", lambda x: torch.flip(x, dims=(-1,)))


def vflip() -> Transform:
    """Mirror top-bottom (flip the height axis)."""
    return Transform("vflip", lambda x: torch.flip(x, dims=(-2,)))


def rot90(k: int) -> Transform:
    """Rotate by ``k`` x 90 degrees counter-clockwise in the (H, W) plane (``torch.rot90``)."""
    k = int(k) % 4
    return Transform(f"rot{90 * k}", lambda x: torch.rot90(x, k, dims=(-2, -1)) if k else x)


def transpose() -> Transform:
    """Swap the height and width axes (mirror on the main diagonal)."""
    return Transform("transpose", lambda x: x.transpose(-2, -1))


def dihedral(k: int, transposed: bool) -> Transform:
    """Element of the dihedral group D4: rotate by ``k`` x 90 degrees, then transpose if ``transposed``."""
    rotate = rot90(k)
    if not transposed:
        return rotate
    return Transform(f"{rotate.name}+transpose", lambda x: rotate(x).transpose(-2, -1))


def _scaled_length(length: int, factor: float) -> int:
    return max(1, int(math.floor(length * factor + 0.5)))


def _fit(batch: Tensor, height: int, width: int) -> Tensor:
    """Zero-pad or centre-crop the last two axes to (height, width); the odd pixel goes bottom/right."""
    h, w = batch.shape[-2:]
    if h > height or w > width:  # crop first
        top, left = max(0, (h - height) // 2), max(0, (w - width) // 2)
        batch = batch[..., top:top + min(h, height), left:left + min(w, width)]
        h, w = batch.shape[-2:]
    if h < height or w < width:
        top, left = (height - h) // 2, (width - w) // 2
        batch = F.pad(batch, (left, width - w - left, top, height - h - top))
    return batch


def resize(factor: float, *, keep_size: bool = False) -> Transform:
    """Scale the crop content by ``factor`` (bilinear; anti-aliased when shrinking).

    ``keep_size=False``: the output is (round(H f), round(W f)), half up (256 x 0.8 -> 205).
    ``keep_size=True``: the scaled content is zero-padded or centre-cropped back to (H, W).
    """
    factor = float(factor)
    if not (math.isfinite(factor) and factor > 0):
        raise ParameterError(f"resize factor must be a positive number, got {factor!r}")

    def fn(x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        size = (_scaled_length(h, factor), _scaled_length(w, factor))
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
        return _fit(out, h, w) if keep_size else out

    return Transform(f"resize{factor:g}" + ("-keep" if keep_size else ""), fn)


# ----------------------------------------------------------------------------- named TTAs
@TTA.register("none")
def _none(*, keep_size: bool = False) -> tuple[Transform, ...]:
    return (identity(),)


@TTA.register("flips")
def _flips(*, keep_size: bool = False) -> tuple[Transform, ...]:
    both = Transform("hflip+vflip", lambda x: torch.flip(x, dims=(-2, -1)))
    return identity(), hflip(), vflip(), both


@TTA.register("d4")
def _d4(*, keep_size: bool = False) -> tuple[Transform, ...]:
    return tuple(dihedral(k, t) for t in (False, True) for k in range(4))


@TTA.register("seed002")
def _seed002(*, keep_size: bool = False) -> tuple[Transform, ...]:
    return hflip(), vflip(), resize(0.8, keep_size=keep_size), resize(1.2, keep_size=keep_size)


def tta_names() -> list[str]:
    """Names of the registered TTAs, sorted."""
    return TTA.names()


def get_tta(name: str, *, keep_size: bool = False) -> tuple[Transform, ...]:
    """The transforms of the TTA called ``name`` (see the module docstring).

    ``keep_size``: resizing transforms pad/crop back to the input size (for fixed-size models).
    An unknown name raises :class:`~cellcls.errors.RegistryError` listing the choices.
    """
    return TTA.get(name)(keep_size=keep_size)


# ----------------------------------------------------------------------------- scoring
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "none": lambda x: x,
}


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _resolve(tta: str | Sequence[Transform], keep_size: bool) -> tuple[Transform, ...]:
    transforms = get_tta(tta, keep_size=keep_size) if isinstance(tta, str) else tuple(tta)
    if not transforms or not all(callable(t) for t in transforms):
        raise ParameterError(f"tta must be a TTA name ({', '.join(tta_names())}) or a non-empty sequence of "
                             f"Transform, got {tta!r}")
    return transforms


def _check_batch(batch: Tensor) -> None:
    if not isinstance(batch, torch.Tensor):
        raise ParameterError(f"batch must be a torch.Tensor (N, C, S, S), got {type(batch).__name__}; "
                             "convert crops with torch.from_numpy(...).float() and normalise them first")
    if batch.ndim != 4 or not batch.is_floating_point():
        raise ParameterError(f"batch must be a 4-D float tensor (N, C, S, S), got shape {tuple(batch.shape)} "
                             f"dtype {batch.dtype}")


def predict_tta(
    model: torch.nn.Module,
    batch: Tensor,
    tta: str | Sequence[Transform] = "none",
    *,
    chunk: int = 64,
    keep_size: bool = False,
    activation: str = "sigmoid",
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Per-cell probabilities averaged over the views of a TTA.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(n, C, S', S')`` float to logits ``(n, K)``. It is switched to ``eval()`` for the call
        and back to its previous mode after; gradients are off (``torch.inference_mode``).
    batch : (N, C, S, S) float tensor
        Crops as the model expects them (already normalised), on any device. Not modified.
    tta : str or sequence of Transform
        A name of :data:`TTA` or the transforms themselves.
    chunk : int
        Cells per forward pass (memory bound: ``chunk`` crops of one view at a time on ``device``).
        The result does not depend on it: every cell's views are summed in the same order.
    keep_size : bool
        Named TTAs only: resize views are padded/cropped back to S (fixed-size models).
    activation : ``"sigmoid"`` (logits in) or ``"none"`` (the model already returns probabilities).
    device : where to run (default: the device of the model's parameters). Chunks move there.

    Returns
    -------
    (N, K) float32 ndarray in [0, 1]
        ``mean over views v of activation(model(v(batch)))``, rows aligned with ``batch``.
    """
    _check_batch(batch)
    transforms = _resolve(tta, keep_size)
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ParameterError(f"chunk must be an integer >= 1, got {chunk!r}")
    if activation not in _ACTIVATIONS:
        raise ParameterError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    act = _ACTIVATIONS[activation]
    target = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    parts: list[np.ndarray] = []
    try:
        with torch.inference_mode():
            for start in range(0, batch.shape[0], int(chunk)):
                x = batch[start:start + int(chunk)].to(target, non_blocking=True)
                total = None
                for view in transforms:
                    out = model(view(x))
                    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
                        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                        raise ParameterError(f"the model must return (n, K) scores for n={x.shape[0]} crops, got "
                                             f"{shape} on view {view.name!r}")
                    p = act(out.float())
                    total = p if total is None else total + p
                parts.append((total / len(transforms)).clamp_(0.0, 1.0).cpu().numpy())
    finally:
        model.train(was_training)
    if not parts:
        n_out = _output_width(model, batch, target, transforms[0])
        return np.zeros((0, n_out), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(parts).astype(np.float32, copy=False))


def _output_width(model: torch.nn.Module, batch: Tensor, device: torch.device, view: Transform) -> int:
    """K for an empty batch: one forward pass of a zero crop (eval, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            probe = torch.zeros((1, *batch.shape[1:]), dtype=batch.dtype, device=device)
            return int(model(view(probe)).shape[-1])
    finally:
        model.train(was_training)
