"""Augmentation pipelines (albumentations 2.x), chosen by name in the config.

Every pipeline takes an ``(H, W, C)`` float32 image in ``[0, 1]`` (uint8 and uint16 inputs are
scaled first with :func:`cellcls.io.to_float01`, so 8- and 16-bit files give the same values) and
returns an ``(C, S, S)`` float32 array normalised with the channel statistics
(``(x - mean) / std``, both in ``[0, 1]`` units as ``cellcls stats`` writes them).

Pipelines
---------
``seed002``
    The 46th-place 2021 recipe (seed 002): resize to ``size``, random scale ±20 %, zero-pad back
    to ``size``, random crop ``size``, brightness/contrast (p 0.8), horizontal and vertical flips,
    rotation by any angle with zero fill (p 0.5), normalise.
``bestfitting2019``
    The 2019 winner's: resize to ``size``, rot90, flips, transpose, then a random ``crop`` x
    ``crop`` window (512 from 768 in 2019; no crop when ``crop`` is None), normalise.
``d4``
    Only the 8 rotations/flips of the square (rot90, flips, transpose): for cell crops, where a
    random window would cut the cell.
``none``
    Resize to ``size`` and normalise.

Validation always uses the evaluation form: resize to ``size`` and normalise (no randomness), so
a ``bestfitting2019`` model trained on 512 crops of 768 images is validated on whole 768 images.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from cellcls.registry import Registry

__all__ = ["AUGMENTATIONS", "build_transform", "Transform"]

#: ``(H, W, C) float32 in [0, 1] -> (C, S, S) float32``
Transform = Callable[[np.ndarray], np.ndarray]

#: name -> ``builder(size, crop) -> list of albumentations transforms`` (the random part, before normalising)
AUGMENTATIONS: Registry = Registry("augmentation")


def _resize(size: int):
    import albumentations as A
    import cv2

    return A.Resize(height=size, width=size, interpolation=cv2.INTER_AREA, p=1.0)


@AUGMENTATIONS.register("seed002")
def _seed002(size: int, crop: int | None) -> list:
    import albumentations as A
    import cv2

    return [
        _resize(size),
        A.RandomScale(scale_limit=(-0.2, 0.2), p=1.0),
        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        A.RandomCrop(height=size, width=size, p=1.0),
        A.RandomBrightnessContrast(p=0.8),
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Rotate(border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.5),
    ]


def _d4() -> list:
    import albumentations as A

    return [A.RandomRotate90(p=1.0), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.Transpose(p=0.5)]


@AUGMENTATIONS.register("bestfitting2019")
def _bestfitting2019(size: int, crop: int | None) -> list:
    import albumentations as A

    steps = [_resize(size), *_d4()]
    if crop is not None and crop < size:
        steps.append(A.RandomCrop(height=crop, width=crop, p=1.0))
    return steps


@AUGMENTATIONS.register("d4")
def _d4_only(size: int, crop: int | None) -> list:
    return [_resize(size), *_d4()]


@AUGMENTATIONS.register("none")
def _none(size: int, crop: int | None) -> list:
    return [_resize(size)]


class _Pipeline:
    """Picklable wrapper (DataLoader workers): albumentations Compose, then HWC -> CHW."""

    def __init__(self, steps: list, mean: Sequence[float], std: Sequence[float]) -> None:
        import albumentations as A

        self.compose = A.Compose(
            [*steps, A.Normalize(mean=list(mean), std=list(std), max_pixel_value=1.0, p=1.0)]
        )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.float32:
            raise TypeError(f"augmentation expects float32 in [0, 1] (use cellcls.io.to_float01), got {image.dtype}")
        out = self.compose(image=image)["image"]
        return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def build_transform(
    name: str,
    *,
    train: bool,
    size: int,
    crop: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels: int = 4,
) -> Transform:
    """The transform of pipeline ``name``.

    Parameters
    ----------
    name : str
        One of ``AUGMENTATIONS.names()``; an unknown name raises RegistryError listing them.
    train : bool
        The random training form (True) or the evaluation form (resize + normalise).
    size : int
        Side in pixels the image is resized to (the model's input side, before ``crop``).
    crop : int, optional
        Side of the random training window (``bestfitting2019`` only).
    mean, std : sequence of float, optional
        Per-channel statistics in ``[0, 1]`` units; default 0 and 1 (no normalisation).
    channels : int
        Number of image channels (length of the default statistics).

    Returns
    -------
    callable
        ``(H, W, C) float32 in [0, 1] -> (C, S, S) float32`` with S = ``crop`` or ``size``.
    """
    builder = AUGMENTATIONS.get(name)
    if size < 1 or (crop is not None and crop < 1):
        raise ValueError(f"size and crop must be positive pixel counts, got size={size}, crop={crop}")
    mean = [0.0] * channels if mean is None else [float(v) for v in mean]
    std = [1.0] * channels if std is None else [float(v) for v in std]
    steps = builder(size, crop) if train else [_resize(size)]
    return _Pipeline(steps, mean, std)
