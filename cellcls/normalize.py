"""Model inputs: stored pixels -> normalised float32, the same arithmetic in training and inference.

Training (``train.augment``) scales a uint8/uint16 image to ``[0, 1]`` with
:func:`cellcls.io.to_float01` (float32 division by 255 or 65535), resizes it (``cv2.INTER_AREA``,
in float32) and normalises it with albumentations' ``Normalize(mean, std, max_pixel_value=1)``,
which computes ``(x - mean) * (1 / std)`` in float32 (the reciprocal taken in float32 first). The
functions here do exactly those operations, in that order and precision, so an inference input
equals its training (evaluation-form) input bit for bit; ``tests/test_checkpoints.py`` compares
them with the training pipeline.

Units: ``mean``/``std`` are per channel in ``[0, 1]`` units (as ``cellcls stats`` writes them);
None means no normalisation beyond ``[0, 1]``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import ParameterError

__all__ = ["to_model_input", "image_to_model_input", "resize_float"]

_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _stats(mean: Sequence[float] | None, std: Sequence[float] | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    m = np.zeros(channels, dtype=np.float32) if mean is None else np.asarray(mean, dtype=np.float32)
    s = np.ones(channels, dtype=np.float32) if std is None else np.asarray(std, dtype=np.float32)
    if m.shape != (channels,) or s.shape != (channels,):
        raise ParameterError(f"mean and std must have one value per channel ({channels}), got {m.shape} and {s.shape}")
    if not (np.isfinite(m).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ParameterError(f"mean/std must be finite and std > 0, got mean {m.tolist()} std {s.tolist()}")
    return m, np.reciprocal(s)


def to_model_input(crops: np.ndarray, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                   device: "str | None" = None) -> "torch.Tensor":  # noqa: F821
    """Stored crops -> the float32 batch a model was trained on.

    Parameters
    ----------
    crops : (N, C, S, S) ndarray of uint8 or uint16
        Channel-first crops (:func:`cellcls.crops.crop_cells`), stored values. Not modified.
    mean, std : sequence of C floats, optional
        Channel statistics in ``[0, 1]`` units.
    device : torch device for the result (default CPU). The arithmetic runs there.

    Returns
    -------
    (N, C, S, S) torch.float32 tensor: ``(crops / maxval - mean) * (1 / std)``.
    """
    import torch

    array = np.asarray(crops)
    if array.ndim != 4:
        raise ParameterError(f"crops must be (N, C, S, S), got shape {array.shape}")
    if array.dtype not in _SCALE:
        raise ParameterError(f"crops must be uint8 or uint16 (stored values), got {array.dtype}")
    m, r = _stats(mean, std, array.shape[1])
    x = torch.from_numpy(np.ascontiguousarray(array)).to(device).to(torch.float32)
    x = x / torch.tensor(_SCALE[array.dtype], dtype=torch.float32, device=x.device)
    x = x - torch.from_numpy(m).to(x.device).view(1, -1, 1, 1)
    return x * torch.from_numpy(r).to(x.device).view(1, -1, 1, 1)


def resize_float(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) float32 -> (size, size, C) float32 with ``cv2.INTER_AREA`` (unchanged when already that size)."""
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return image
    channels = image.shape[2]
    if channels > 4:
        return np.concatenate([resize_float(np.ascontiguousarray(image[..., c:c + 4]), size)
                               for c in range(0, channels, 4)], axis=2)
    out = cv2.resize(image, (int(size), int(size)), interpolation=cv2.INTER_AREA)
    return out.reshape(size, size, channels)


def image_to_model_input(image: np.ndarray, size: int, mean: Sequence[float] | None = None,
                         std: Sequence[float] | None = None) -> np.ndarray:
    """A whole (H, W, C) image -> the (C, size, size) float32 input of an image-task model.

    ``to_float01`` -> ``cv2.INTER_AREA`` resize to ``size`` x ``size`` in float32 -> normalise:
    the evaluation form of the training pipeline (any aspect ratio is squashed to a square, as in
    training). Peak memory ~ 2 x H x W x C x 4 bytes (the float copy).
    """
    from .io import to_float01

    if int(size) < 1:
        raise ParameterError(f"size must be a positive number of pixels, got {size!r}")
    array = np.asarray(image)
    if array.ndim != 3:
        raise ParameterError(f"image must be (H, W, C), got shape {array.shape}")
    m, r = _stats(mean, std, array.shape[2])
    resized = resize_float(to_float01(array), int(size))
    out = (resized - m) * r
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)
