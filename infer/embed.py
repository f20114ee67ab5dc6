"""Image-level embeddings of an ArcFace checkpoint (``cellcls train --task arcface``) for label transfer.

Each image is read at its stored size (:func:`cellcls.io.read_image`), resized as a whole to the
checkpoint's ``image_size`` and normalised with its statistics by
:func:`cellcls.normalize.image_to_model_input`: the evaluation form of training (the input the
network was validated on), bit for bit. Every view of the TTA (:func:`infer.tta.get_tta`) is
embedded, each view's embedding L2-normalised, the views averaged and the mean L2-normalised again
(:func:`cellcls.embeddings.tta_mean_embedding`); predict_tta's sigmoid mean does not apply to
embeddings. The result is written as an ``emb.npz`` file (:func:`cellcls.embeddings.write_embeddings`),
optionally with each image's labels for :func:`cellcls.neighbors.transfer_labels`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cellcls.errors import LabelError, WeightsError

__all__ = ["ArcFaceCheckpoint", "read_arcface_checkpoint", "embed_batch", "embed_images", "labels_for"]

log = logging.getLogger(__name__)

_SECTION = "cellcls"  # the checkpoint's inference section (written by train.module)


@dataclass(frozen=True)
class ArcFaceCheckpoint:
    """An ArcFace embedding network and what its inputs must look like.

    Attributes
    ----------
    model : cellcls.models.CellModel
        In ``eval()`` mode on the CPU; ``model.embed``: ``(N, 4, S, S)`` float -> ``(N, embedding_dim)``.
    path : str
    image_size : int
        S, the side in pixels whole images are resized to.
    mean, std : tuple of 4 floats or None
        Channel statistics in ``[0, 1]`` units (None: inputs only scaled to ``[0, 1]``).
    embedding_dim : int
    groups : tuple of str
        The ArcFace classes (group names) in class order.
    """

    model: Any = field(repr=False)
    path: str
    image_size: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    embedding_dim: int
    groups: tuple[str, ...] = field(repr=False, default=())


def read_arcface_checkpoint(path: str | Path) -> ArcFaceCheckpoint:
    """Rebuild the embedding network of an arcface-task checkpoint from the file alone.

    Raises
    ------
    WeightsNotFoundError, UnsafeWeightsError
        No such file; a pickle with more than plain containers and tensors.
    WeightsError
        Not a ``cellcls train`` checkpoint, not one of the arcface task (a classifier: use
        ``cellcls predict``), a section without an image size, or weights that do not fit.
    """
    from cellcls.models import create_model
    from cellcls.models.pretrained import model_config_from_hparams, read_checkpoint

    path = Path(path).expanduser()
    raw = read_checkpoint(path)
    section = raw.get(_SECTION) if isinstance(raw, dict) else None
    if not isinstance(section, dict) or not isinstance(raw.get("state_dict"), dict):
        raise WeightsError(f"checkpoint {path}: no '{_SECTION}' section or state dict; embed a checkpoint saved by "
                           "`cellcls train --task arcface`")
    if section.get("task") != "arcface":
        raise WeightsError(f"checkpoint {path} was trained for task {section.get('task')!r}, not 'arcface'; "
                           "`cellcls embed` needs an embedding network (`cellcls train --task arcface`); "
                           "score classifiers with `cellcls predict`")
    size = section.get("image_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise WeightsError(f"checkpoint {path}: '{_SECTION}.image_size' must be a positive pixel count, got {size!r}")
    stats = section.get("stats")
    mean = std = None
    if stats is not None:
        mean, std = tuple(float(v) for v in stats["mean"]), tuple(float(v) for v in stats["std"])
    config = model_config_from_hparams(raw.get("hyper_parameters"), path=path)
    model = create_model(**config)
    state = {k[len("model."):]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(f"checkpoint {path}: weights do not fit the recorded model {config}: missing "
                           f"{missing[:5]}, unexpected {list(result.unexpected_keys)[:5]}")
    dim = int(section.get("embedding_dim") or model.num_features)
    return ArcFaceCheckpoint(model=model.eval(), path=str(path), image_size=int(size), mean=mean, std=std,
                             embedding_dim=dim, groups=tuple(str(g) for g in section.get("groups") or ()))


def embed_batch(model: Any, batch: "torch.Tensor", transforms: Sequence[Any]) -> np.ndarray:  # noqa: F821
    """TTA embedding of one batch: mean over views of the L2-normalised ``model.embed``, L2-normalised.

    Parameters
    ----------
    model : a module with ``embed((n, 4, S, S)) -> (n, D)``, in eval mode
    batch : (n, 4, S, S) float32 tensor, normalised model inputs, on the model's device
    transforms : the views (:func:`infer.tta.get_tta`)

    Returns
    -------
    (n, D) float32 ndarray, unit rows.
    """
    import torch

    from cellcls.embeddings import tta_mean_embedding

    with torch.inference_mode():
        views = [model.embed(view(batch)).float().cpu().numpy() for view in transforms]
    return tta_mean_embedding(views)


def embed_images(checkpoint: ArcFaceCheckpoint, images: str | Path, ids: Sequence[str], *, tta: str = "none",
                 batch_size: int = 32, device: str = "cpu", progress: bool = True) -> np.ndarray:
    """Embeddings of whole images.

    Parameters
    ----------
    checkpoint : from :func:`read_arcface_checkpoint`
    images : folder of ``{ID}_{red,green,blue,yellow}.png|tif`` files (any size, 8 or 16 bits)
    ids : image IDs to embed, in output order
    tta : a name of :data:`infer.tta.TTA` (``none``, ``flips``, ``d4``; ``seed002``'s resize views work too)
    batch_size : images per forward pass
    device : torch device

    Returns
    -------
    (len(ids), embedding_dim) float32, L2-normalised rows.

    Raises
    ------
    MissingChannelError, UnreadableImageError, ...
        An image that cannot be read (the message names the ID and file).
    """
    import torch
    from tqdm import tqdm

    from cellcls.io import read_image
    from cellcls.normalize import image_to_model_input

    from .tta import get_tta

    transforms = get_tta(tta)
    model = checkpoint.model.to(device).eval()
    out = np.zeros((len(ids), checkpoint.embedding_dim), dtype=np.float32)
    bar = tqdm(total=len(ids), desc="embedding", unit="img", disable=not progress)
    for start in range(0, len(ids), int(batch_size)):
        chunk = ids[start:start + int(batch_size)]
        inputs = np.stack([image_to_model_input(read_image(images, i), checkpoint.image_size, checkpoint.mean,
                                                checkpoint.std) for i in chunk])
        out[start:start + len(chunk)] = embed_batch(model, torch.from_numpy(inputs).to(device), transforms)
        bar.update(len(chunk))
    bar.close()
    return out


def labels_for(labels_csv: str | Path, ids: Sequence[str]) -> np.ndarray:
    """(len(ids), 19) float32 multi-hot image labels of ``ids`` from a ``train.csv``.

    Raises
    ------
    LabelError
        An ID without a row (the message names it and how many lack one).
    """
    from cellcls.labels import read_train_csv

    table = read_train_csv(labels_csv)
    row = {image_id: i for i, image_id in enumerate(table.ids)}
    missing = [i for i in ids if i not in row]
    if missing:
        raise LabelError(f"{labels_csv} has no row for {len(missing)} of the {len(ids)} embedded images (first: "
                         f"{missing[0]}); give the label file of these images or leave out --labels")
    return table.targets[[row[i] for i in ids]].astype(np.float32)
