"""The models of a scoring run and how their scores are combined (the ensemble), one group of images at a time.

:func:`load_models` reads each checkpoint and decides what it scores: crops (cell-task checkpoints,
and image-task ones when ``image_on_crops``; mode/size/margin from the checkpoint) and/or the whole
image (image-task checkpoints, at their ``image_size``). :func:`score_group` runs every model over a
group's crops (and whole images) in batches, with its TTA, and gives per image the weighted mean
over the models: cell scores (n, 19) and image scores (19,), probabilities in [0, 1].
:func:`fold_models` maps each validation fold to its checkpoints (out-of-fold scoring).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cellcls.checkpoints import InferenceMeta, read_inference_checkpoint
from cellcls.errors import CellclsError

from .config import InferConfig

__all__ = ["ScoringModel", "resolve_device", "load_models", "weighted_mean", "score_group", "fold_models"]

log = logging.getLogger("infer.predict")  # the scoring run's one logger, as before the split


@dataclass
class ScoringModel:
    """A loaded checkpoint and how it is applied.

    Attributes
    ----------
    model : torch.nn.Module (eval, on the scoring device)
    meta : InferenceMeta
    weight : float
        Its weight in the ensemble means.
    tta : str
        Its TTA name.
    crops : (mode, size, margin) or None
        The crops it scores (None: it scores no crops).
    image_size : int or None
        Side of the whole-image input it scores (image-task checkpoints), else None.
    """

    model: Any
    meta: InferenceMeta
    weight: float
    tta: str
    crops: tuple[str, int, float] | None
    image_size: int | None

    @property
    def name(self) -> str:
        return f"{self.meta.name}[{Path(self.meta.path).stem}]"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CellclsError("device cuda asked for, but torch sees no CUDA GPU; use device auto or cpu")
    return device


def load_models(paths: Sequence[str | Path], config: InferConfig, *, device: str = "cpu") -> list[ScoringModel]:
    """Read every checkpoint (:func:`cellcls.checkpoints.read_inference_checkpoint`) and decide its role."""
    if not paths:
        raise CellclsError("no checkpoint given; pass --checkpoint CKPT (a .ckpt saved by `cellcls train`)")
    loaded = []
    for path in paths:
        model, meta = read_inference_checkpoint(path)
        loaded.append((path, model.to(device).eval(), meta))
    has_cell_models = any(meta.task == "cell" for _, _, meta in loaded)
    out = []
    for path, model, meta in loaded:
        options = config.options_for(path)
        if meta.task == "cell":
            crops, image_size = (meta.crop_mode, int(meta.crop_size), float(meta.crop_margin)), None
        else:
            image_size = int(meta.image_size)
            on_crops = (not has_cell_models) if config.image_on_crops is None else config.image_on_crops
            size = int(config.image_crop_size or meta.image_size)
            crops = (config.image_crop_mode, size, float(config.image_crop_margin)) if on_crops else None
        out.append(ScoringModel(model, meta, float(options.weight), options.tta or config.tta, crops, image_size))
        log.info("model %s: task %s, %s, tta %s, weight %g", out[-1].name, meta.task,
                 f"crops {crops[0]} {crops[1]} px" if crops else "no crops",
                 out[-1].tta, options.weight)
    return out


def weighted_mean(parts: list[tuple[float, np.ndarray]]) -> np.ndarray | None:
    if not parts:
        return None
    total = sum(w for w, _ in parts)
    return np.clip(sum(w * p for w, p in parts) / total, 0.0, 1.0).astype(np.float32)


def score_group(group: Sequence[Any], models: Sequence[ScoringModel], config: InferConfig,
                device: str) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    """Per image of the group: (cell scores (n, 19) or None, image scores (19,) or None).

    ``group``: prepared images (``infer.predict``), each with ``n_cells``, ``crops`` (crop recipe ->
    (n, S, S, 4) crops) and ``images`` ((size, mean, std) -> (4, size, size) whole-image input).
    Scores are float32 probabilities in [0, 1], weighted means over the models that give them.
    """
    import torch

    from cellcls.normalize import to_model_input

    from .tta import predict_tta

    offsets = np.cumsum([0] + [p.n_cells for p in group])
    cell_parts: list[list[tuple[float, np.ndarray]]] = [[] for _ in group]
    image_parts: list[list[tuple[float, np.ndarray]]] = [[] for _ in group]
    for m in models:
        common = dict(chunk=config.batch_size, keep_size=config.keep_size, device=device)
        if m.crops is not None:
            batch = to_model_input(np.concatenate([p.crops[m.crops] for p in group]), m.meta.mean, m.meta.std)
            probs = predict_tta(m.model, batch, m.tta, **common)
            del batch
            for i in range(len(group)):
                cell_parts[i].append((m.weight, probs[offsets[i]:offsets[i + 1]]))
        if m.image_size is not None:
            key = (m.image_size, m.meta.mean, m.meta.std)
            batch = torch.from_numpy(np.stack([p.images[key] for p in group]))
            probs = predict_tta(m.model, batch, m.tta, **common)
            for i in range(len(group)):
                image_parts[i].append((m.weight, probs[i]))
    return [(weighted_mean(c), weighted_mean(i)) for c, i in zip(cell_parts, image_parts)]


def fold_models(models: Sequence[ScoringModel], fold_of: Mapping[str, int]) -> dict[int, list[ScoringModel]]:
    """fold -> the checkpoints validated on it (not trained on it); full-data runs are refused."""
    out: dict[int, list[ScoringModel]] = {}
    for m in models:
        if m.meta.full:
            raise CellclsError(f"checkpoint {m.meta.path} was trained on every fold (full=True): no image is out "
                               "of fold for it; leave it out of --oof")
        if m.meta.fold is None:
            raise CellclsError(f"checkpoint {m.meta.path} does not record its validation fold; --oof needs "
                               "checkpoints saved by `cellcls train` (datamodule fold)")
        out.setdefault(m.meta.fold, []).append(m)
    wanted = sorted(set(fold_of.values()))
    missing = [f for f in wanted if f not in out]
    if missing:
        log.warning("no checkpoint validated on fold(s) %s: their images get no out-of-fold scores", missing)
    return out
