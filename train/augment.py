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

Randomness: each pipeline seeds its own albumentations generators (``build_transform(seed=...)``,
default ``torch.initial_seed()``), per DataLoader worker and DDP rank; see :func:`build_transform`.

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


def _stream_key(seed: int | None) -> tuple[int, ...]:
    """What the random stream of this process derives from: (seed, DataLoader worker seed, rank).

    ``seed`` None: ``torch.initial_seed()`` (``seed_everything`` sets it). In a DataLoader worker,
    the worker's seed (base seed drawn from the main process's torch generator each time workers
    start, plus the worker id) makes each worker, and each epoch of non-persistent workers, its
    own stream; the global rank separates DDP processes that were given one seed.
    """
    import torch

    info = torch.utils.data.get_worker_info()
    base = torch.initial_seed() if seed is None else int(seed)
    worker = -1 if info is None else int(info.seed)
    try:
        from pytorch_lightning.utilities.rank_zero import rank_zero_only

        rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    except ImportError:  # pragma: no cover - lightning is a dependency of train/
        rank = 0
    return base, worker, rank


class _Pipeline:
    """Picklable wrapper (DataLoader workers): albumentations Compose, then HWC -> CHW.

    The Compose is (re)seeded on the first call in a process whose stream key (:func:`_stream_key`)
    differs from the one it was last seeded for: the same key gives the same sequence of augmentations.
    """

    def __init__(self, steps: list, mean: Sequence[float], std: Sequence[float], seed: int | None = None) -> None:
        import albumentations as A

        self.compose = A.Compose(
            [*steps, A.Normalize(mean=list(mean), std=list(std), max_pixel_value=1.0, p=1.0)]
        )
        self.seed = seed
        self._key: tuple[int, ...] | None = None

    def _reseed(self) -> None:
        key = _stream_key(self.seed)
        if key != self._key:
            words = [k % 2**64 for k in key[:2]] + [key[2] + 1, 0x61756720]  # + "aug ": not torch's own stream
            state = np.random.SeedSequence(words).generate_state(1, dtype=np.uint32)[0]
            self.compose.set_random_seed(int(state))
            self._key = key

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.float32:
            raise TypeError(f"augmentation expects float32 in [0, 1] (use cellcls.io.to_float01), got {image.dtype}")
        self._reseed()
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
    seed: int | None = None,
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
    seed : int, optional
        Seed of the random stream; default ``torch.initial_seed()`` at the first call (what
        ``seed_everything`` set). Mixed with the DataLoader worker's seed and the global rank, so
        workers (and epochs of non-persistent workers) draw different augmentations, yet two runs
        with the same seeds draw the same ones.

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
    return _Pipeline(steps, mean, std, seed)
