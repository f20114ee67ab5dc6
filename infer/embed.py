"""Image-level embeddings of an ArcFace checkpoint (``cellcls train --task arcface``) for label transfer.

The checkpoint is read by the one checkpoint reader, :func:`cellcls.checkpoints.read_inference_checkpoint`
with ``tasks=EMBEDDING_TASKS`` (a classifier is refused with a message pointing to ``cellcls predict``).
Its ``embedding_unit`` says how an image becomes one embedding:

``image`` (whole-image network)
    The image is read at its stored size (:func:`cellcls.io.read_image`), resized as a whole to the
    checkpoint's ``image_size`` and normalised with its statistics by
    :func:`cellcls.normalize.image_to_model_input`: the evaluation form of training, bit for bit.
``cell_mean`` (network trained on cell crops)
    The image's cells come from a mask cache of THESE images (``cellcls segment``; ``masks``): every
    cell of its entry is cut with the checkpoint's crop recipe (:func:`cellcls.crops.crop_cells`,
    ``crop_mode``/``crop_size``/``crop_margin``, lengths in pixels of the original image) and
    normalised by :func:`cellcls.normalize.to_model_input` (the training evaluation input). Each
    cell gets its TTA embedding (below); the image embedding is the L2-normalised mean of its
    cells' embeddings. An image without cells in its entry is an error naming the ID.

TTA (:func:`infer.tta.get_tta`): every view is embedded, each view's embedding L2-normalised, the
views averaged and the mean L2-normalised again (:func:`cellcls.embeddings.tta_mean_embedding`);
predict_tta's sigmoid mean does not apply to embeddings. The result is written as an ``emb.npz`` file
(:func:`cellcls.embeddings.write_embeddings`), optionally with each image's labels for
:func:`cellcls.neighbors.transfer_labels`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cellcls.errors import CellclsError, LabelError

__all__ = ["ArcFaceCheckpoint", "read_arcface_checkpoint", "embed_batch", "embed_cells", "embed_images",
           "labels_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArcFaceCheckpoint:
    """An ArcFace embedding network and what its inputs must look like.

    Attributes
    ----------
    model : cellcls.models.CellModel
        In ``eval()`` mode on the CPU; ``model.embed``: ``(N, 4, S, S)`` float -> ``(N, embedding_dim)``.
    meta : cellcls.checkpoints.InferenceMeta
        The checkpoint's inference section (task ``arcface``): input recipe, statistics, groups.
    """

    model: Any = field(repr=False)
    meta: Any

    @property
    def path(self) -> str:
        return self.meta.path

    @property
    def embedding_dim(self) -> int:
        return int(self.meta.embedding_dim)

    @property
    def groups(self) -> tuple[str, ...]:
        """The ArcFace classes (group names) in class order."""
        return tuple(self.meta.groups)

    @property
    def on_cells(self) -> bool:
        """Whether the image embedding is the mean of cell-crop embeddings (needs a mask cache)."""
        return self.meta.embedding_unit == "cell_mean"

    @property
    def image_size(self) -> int | None:
        """Whole-image networks: the side in pixels images are resized to (None on cells)."""
        return self.meta.image_size

    def describe(self) -> str:
        """One line: the input recipe (e.g. ``48 px masked cell crops, image = mean of cells``)."""
        m = self.meta
        if self.on_cells:
            return f"{m.crop_size} px {m.crop_mode} cell crops (margin {m.crop_margin:g}), image = mean of its cells"
        return f"whole images at {m.image_size} px"


def read_arcface_checkpoint(path: str | Path) -> ArcFaceCheckpoint:
    """Rebuild the embedding network of an arcface-task checkpoint from the file alone.

    Raises
    ------
    WeightsNotFoundError, UnsafeWeightsError
        No such file; a pickle with more than plain containers and tensors.
    WeightsError
        Not a ``cellcls train`` checkpoint, not one of the arcface task (a classifier: use
        ``cellcls predict``), a section without groups, input size or crop recipe, or weights that
        do not fit (:func:`cellcls.checkpoints.read_inference_checkpoint`).
    """
    from cellcls.checkpoints import EMBEDDING_TASKS, read_inference_checkpoint

    model, meta = read_inference_checkpoint(path, tasks=EMBEDDING_TASKS)
    return ArcFaceCheckpoint(model=model, meta=meta)


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


def embed_cells(checkpoint: ArcFaceCheckpoint, image: np.ndarray, entry: Any, *, image_id: str,
                transforms: Sequence[Any], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """TTA embeddings of every cell of one image, cut with the checkpoint's crop recipe.

    Parameters
    ----------
    checkpoint : a cell-crop checkpoint (``checkpoint.on_cells``)
    image : (H, W, 4) uint8/uint16, the image at its original size
    entry : its :class:`cellcls.masks.cache.CacheEntry` (label maps at segmentation scale)
    image_id : for messages
    transforms : TTA views
    batch_size : cells per forward pass

    Returns
    -------
    (n_cells, D) float32, unit rows, in cell-table order (ascending cell id); (0, D) without cells.
    """
    import torch

    from cellcls.crops import crop_cells
    from cellcls.masks.table import entry_cell_table
    from cellcls.normalize import to_model_input

    meta = checkpoint.meta
    rows = entry_cell_table(entry)
    out = np.zeros((len(rows), checkpoint.embedding_dim), dtype=np.float32)
    if not len(rows):
        return out
    crops = crop_cells(image, entry.cells, rows, mode=meta.crop_mode, size=meta.crop_size, margin=meta.crop_margin,
                       image_id=image_id)
    model = checkpoint.model
    for start in range(0, len(crops), int(batch_size)):
        x = to_model_input(crops[start:start + int(batch_size)], meta.mean, meta.std, device=device)
        with torch.inference_mode():
            out[start:start + len(x)] = embed_batch(model, x, transforms)
    return out


def _image_mean(cells: np.ndarray) -> np.ndarray:
    """(n, D) unit cell embeddings -> (D,) L2-normalised mean."""
    from cellcls.embeddings import l2_normalise

    return l2_normalise(cells.mean(axis=0, keepdims=True).astype(np.float32))[0]


def _cell_reader(checkpoint: ArcFaceCheckpoint, masks: str | Path | None, images: str | Path):
    if masks is None:
        raise CellclsError(f"checkpoint {checkpoint.path} embeds an image as the mean of its cells "
                           f"({checkpoint.describe()}): give the mask cache of {images} with --masks MASKDIR "
                           f"(make it with 'cellcls segment --images {images} --out MASKDIR')")
    from cellcls.masks.cache import MaskCache

    if not Path(masks).is_dir():
        raise CellclsError(f"mask cache {masks} does not exist; make it with 'cellcls segment --images {images} "
                           f"--out {masks}'")
    reader = MaskCache(masks).reader()  # one parameter set, or a CacheError saying which ones mix
    trained = checkpoint.meta.mask_key
    return reader, trained


def embed_images(checkpoint: ArcFaceCheckpoint, images: str | Path, ids: Sequence[str], *,
                 masks: str | Path | None = None, tta: str = "none", batch_size: int = 32, device: str = "cpu",
                 progress: bool = True) -> np.ndarray:
    """Embeddings of whole images (see the module docstring for the two kinds of checkpoint).

    Parameters
    ----------
    checkpoint : from :func:`read_arcface_checkpoint`
    images : folder of ``{ID}_{red,green,blue,yellow}.png|tif`` files (any size, 8 or 16 bits)
    ids : image IDs to embed, in output order
    masks : mask cache of these images (``cellcls segment``); needed by a cell-crop checkpoint,
        ignored (with a warning) by a whole-image one
    tta : a name of :data:`infer.tta.TTA` (``none``, ``flips``, ``d4``; ``seed002``'s resize views work too)
    batch_size : images (cells, for a cell-crop checkpoint) per forward pass
    device : torch device

    Returns
    -------
    (len(ids), embedding_dim) float32, L2-normalised rows.

    Raises
    ------
    CellclsError
        A cell-crop checkpoint without ``masks``, or an image without cells in it (naming the ID).
    CacheError, MissingChannelError, UnreadableImageError, ...
        A missing mask entry or an image that cannot be read (the message names the ID and file).
    """
    from tqdm import tqdm

    from .tta import get_tta

    transforms = get_tta(tta)
    checkpoint.model.to(device).eval()
    bar = tqdm(total=len(ids), desc="embedding", unit="img", disable=not progress)
    if checkpoint.on_cells:
        out = _embed_by_cells(checkpoint, images, ids, masks, transforms, batch_size, device, bar)
    else:
        if masks is not None:
            log.warning("checkpoint %s embeds whole images; --masks %s is not used", checkpoint.path, masks)
        out = _embed_whole(checkpoint, images, ids, transforms, batch_size, device, bar)
    bar.close()
    return out


def _embed_whole(checkpoint, images, ids, transforms, batch_size, device, bar) -> np.ndarray:
    import torch

    from cellcls.io import read_image
    from cellcls.normalize import image_to_model_input

    meta = checkpoint.meta
    out = np.zeros((len(ids), checkpoint.embedding_dim), dtype=np.float32)
    for start in range(0, len(ids), int(batch_size)):
        chunk = ids[start:start + int(batch_size)]
        inputs = np.stack([image_to_model_input(read_image(images, i), meta.image_size, meta.mean, meta.std)
                           for i in chunk])
        out[start:start + len(chunk)] = embed_batch(checkpoint.model, torch.from_numpy(inputs).to(device), transforms)
        bar.update(len(chunk))
    return out


def _embed_by_cells(checkpoint, images, ids, masks, transforms, batch_size, device, bar) -> np.ndarray:
    from cellcls.io import read_image

    reader, trained = _cell_reader(checkpoint, masks, images)
    out = np.zeros((len(ids), checkpoint.embedding_dim), dtype=np.float32)
    other_masks = 0
    for row, image_id in enumerate(ids):
        entry = reader.read(image_id)  # CacheError naming the ID when the entry is missing
        image = read_image(images, image_id)
        if image.shape[:2] != tuple(entry.original_shape):
            raise CellclsError(f"image {image_id!r}: the image in {images} is {image.shape[:2]} but its mask-cache "
                               f"entry in {masks} was made from a {tuple(entry.original_shape)} image; segment the "
                               "images you embed")
        cells = embed_cells(checkpoint, image, entry, image_id=image_id, transforms=transforms,
                            batch_size=batch_size, device=device)
        if not len(cells):
            raise CellclsError(f"image {image_id!r} has no cell in the mask cache {masks}, so it has no embedding "
                               f"under {checkpoint.path} (the mean of its cells); leave it out with --ids")
        out[row] = _image_mean(cells)
        other_masks += bool(trained) and entry.mask_key.split("-", 1)[0] != trained
        bar.update(1)
    if other_masks:
        log.info("%d of %d images were segmented with other parameters than the training masks of %s",
                 other_masks, len(ids), checkpoint.path)
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
