"""The ``arcface`` training task: an antibody-embedding network trained with ArcFace (HPA 2019, 1st place).

Classes are the groups (antibody ids) of the label file's ``group_col`` column; the network is
:func:`cellcls.models.create_model` with ``head='embedding2019'`` (a 512-d BN-ed embedding and an
ArcMarginProduct over the groups) and the loss is ``create_loss('arcface')`` (s 30, m 0.5). The data,
augmentation, Lightning loop, checkpoints and DDP are the classifier's: :class:`ArcFaceEmbedder`
subclasses :class:`train.module.CellClassifier`, and the task registers one setup function in
:data:`train.data.TASK_SETUPS`.

Inputs. Whole images resized to ``image_size`` (``embedding_unit`` ``"image"``), or, when
``data.masks`` (the mask cache of the train images) is given, CELL CROPS cut as the cell task cuts
them (``crop_mode``, ``crop_size``, ``crop_margin``; :func:`cellcls.crops.crop_cells`), every cell
carrying its image's group (``embedding_unit`` ``"cell_mean"``). A cell crop shows the protein's
pattern at full resolution, where a whole image squeezed to a CPU-sized input does not. The
IMAGE embedding is then the L2-normalised mean of its cells' L2-normalised embeddings
(:func:`image_mean_embeddings`; ``cellcls embed`` adds a TTA mean per cell first), and retrieval is
measured between images, never between cells.

Split (:func:`arcface_split`). Validation classes must be classes the network was trained on (a
held-out group has no ArcFace centre and no training image to be retrieved), so the split holds
out whole IMAGES within groups, never whole groups: each group with >= 2 images gives one
validation image (which one: ``fold`` modulo the group's size, in a seeded order), groups with one
image are train-only. Grouped folds (``cellcls folds --group-col``), right for the classifier,
would make every validation class unseen here; a ``folds`` file is therefore ignored. On cell
crops the split is the same split of IMAGES: every cell of a held-out image goes to validation.

Validation (each epoch, gathered over DDP ranks). The validation loader yields the held-out images
(or their cells) first, then every training image (or its cells), all in the evaluation form
(resize + normalise). On cell crops the cell embeddings are first averaged into image embeddings
(:func:`image_mean_embeddings`). Then:

* ``val/precision_at_1``: share of held-out images whose most cosine-similar training image
  (:func:`cellcls.neighbors.cosine_topk`) has the same group, beside ``val/precision_at_1_chance``
  (the expected value for a random training image: mean over held-out images of the share of
  training images in its group);
* ``val/loss``: the ArcFace loss of the held-out images (of their cells, on cell crops).

Checkpoints carry, in the ``cellcls`` section, ``task: 'arcface'``, ``embedding_dim``, ``stats``,
``groups`` (the group names in class-index order), ``embedding_unit`` and either ``image_size``
(whole images) or ``crop_mode``/``crop_size``/``crop_margin`` and the training ``mask_key`` (cell
crops), besides the classifier's keys; :func:`cellcls.checkpoints.read_inference_checkpoint` with
``tasks=EMBEDDING_TASKS`` reads them.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from cellcls.classes import NUM_CHANNELS
from cellcls.errors import CellclsError, LabelError

from .data import TASK_SETUPS, CropDataset, ImageDataset
from .module import CellClassifier

__all__ = [
    "ArcFaceEmbedder",
    "GroupImageDataset",
    "GroupCropDataset",
    "image_mean_embeddings",
    "arcface_split",
    "group_names",
    "count_groups",
    "retrieval_precision_at_1",
]

log = logging.getLogger(__name__)

_SPLIT_SEED = 0


# ----------------------------------------------------------------------------- pure parts
def group_names(groups: Sequence[object], *, where: str = "the label file", column: str = "group") -> list[str]:
    """The sorted distinct group names: class ``k`` of the ArcFace head is ``group_names(...)[k]``.

    Raises
    ------
    LabelError
        A missing (empty or NaN) group value; the message names the row.
    """
    names = []
    for row, g in enumerate(groups):
        if g is None or (isinstance(g, float) and g != g) or not str(g).strip():
            raise LabelError(f"{where}: data row {row + 1} has no value in column {column!r}; the arcface task "
                             "needs a group (antibody id) for every image: fill it in or remove the row")
        names.append(str(g).strip())
    return sorted(set(names))


def arcface_split(groups: Sequence[str], *, fold: int = 0, seed: int = _SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Hold out one image per group of >= 2 images; singleton groups are train-only.

    Parameters
    ----------
    groups : (N,) sequence of str
        Group of each image.
    fold : int >= 0
        Which image of each group is held out: position ``fold % size`` in a seeded shuffle of the
        group's images, so folds 0, 1, ... hold out different images.
    seed : int

    Returns
    -------
    train, val : (N,) bool arrays, disjoint, covering every image; every group of ``val`` has an
    image in ``train``.
    """
    if int(fold) < 0:
        raise CellclsError(f"fold must be >= 0, got {fold}")
    groups = [str(g) for g in groups]
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    val = np.zeros(len(groups), dtype=bool)
    for g in sorted(members):
        rows = members[g]
        order = rng.permutation(len(rows))
        if len(rows) >= 2:
            val[rows[int(order[int(fold) % len(rows)])]] = True
    return ~val, val


def retrieval_precision_at_1(query: np.ndarray, query_groups: np.ndarray, index: np.ndarray,
                             index_groups: np.ndarray) -> tuple[float, float]:
    """Share of queries whose most cosine-similar index row has the same group, and its chance level.

    Parameters
    ----------
    query : (Q, D) float embeddings (any norm, nonzero rows)
    query_groups : (Q,) int group ids
    index : (M, D) float embeddings
    index_groups : (M,) int group ids

    Returns
    -------
    precision : float in [0, 1] (NaN when Q = 0)
        Ties between index rows go to the lower row (:func:`cellcls.neighbors.cosine_topk`).
    chance : float
        Its expectation for a random index row: mean over queries of the share of index rows in the
        query's group.
    """
    from cellcls.neighbors import cosine_topk

    query_groups, index_groups = np.asarray(query_groups), np.asarray(index_groups)
    if len(query_groups) == 0:
        return float("nan"), float("nan")
    _, idx = cosine_topk(query, index, k=1, progress=False)
    precision = float(np.mean(index_groups[idx[:, 0]] == query_groups))
    values, counts = np.unique(index_groups, return_counts=True)
    share = dict(zip(values.tolist(), (counts / len(index_groups)).tolist()))
    chance = float(np.mean([share.get(g, 0.0) for g in query_groups.tolist()]))
    return precision, chance


def image_mean_embeddings(cells: torch.Tensor, image_of_cell: torch.Tensor, n_images: int) -> torch.Tensor:
    """Image embeddings from cell embeddings: the L2-normalised mean of each image's L2-normalised cells.

    Parameters
    ----------
    cells : (N, D) float tensor
        Cell embeddings (any norm, nonzero rows).
    image_of_cell : (N,) int64 tensor
        Image position (0 .. n_images - 1) of each cell.
    n_images : int

    Returns
    -------
    (n_images, D) float tensor with unit rows (an image without cells gets a zero row).
    """
    unit = torch.nn.functional.normalize(cells.float(), dim=1)
    sums = torch.zeros(int(n_images), unit.shape[1], dtype=unit.dtype, device=unit.device)
    sums.index_add_(0, image_of_cell.to(unit.device).long(), unit)
    return torch.nn.functional.normalize(sums, dim=1)


# ----------------------------------------------------------------------------- data
class GroupImageDataset(ImageDataset):
    """Whole images with an int64 group index as target: item ``(x (4, S, S) float32, group () int64, i)``."""

    def __init__(self, images: str, ids: Sequence[str], groups: np.ndarray, transform) -> None:
        super().__init__(images, ids, np.zeros((len(ids), 0), dtype=np.float32), transform)
        self.targets = np.asarray(groups, dtype=np.int64)

    def __getitem__(self, index: int):
        from cellcls.io import read_image, to_float01

        image = to_float01(read_image(self.images, self.ids[index], threads=1))
        return torch.from_numpy(self.transform(image)), torch.tensor(int(self.targets[index])), index


class GroupCropDataset(CropDataset):
    """Cell crops in memory with their image's int64 group: item ``(x (4, S, S) float32, group () int64, i)``.

    ``image_of_cell`` (N,) int64: position of each cell's image in the run's image order (for the
    image means of validation).
    """

    def __init__(self, crops: np.ndarray, groups: np.ndarray, image_of_cell: np.ndarray, transform) -> None:
        super().__init__(crops, np.zeros((len(crops), 0), dtype=np.float32), transform)
        self.groups = np.asarray(groups, dtype=np.int64)
        self.image_of_cell = np.asarray(image_of_cell, dtype=np.int64)

    def __getitem__(self, index: int):
        x, _, index = super().__getitem__(index)
        return x, torch.tensor(int(self.groups[index])), index


def _read_groups(datamodule, table) -> tuple[list[str], str]:
    """(group of each row, the column read); LabelError when the column is missing."""
    hp = datamodule.hparams
    column = hp.group_col
    if column not in table.extra.columns:
        raise LabelError(f"{hp.labels} has no column {column!r} (columns: {['ID', 'Label', *table.extra.columns]}); "
                         "the arcface task trains on groups (antibody ids): give --data.group_col COLUMN")
    return [str(g).strip() for g in table.extra[column].tolist()], column


@TASK_SETUPS.register("arcface")
def _setup_arcface(datamodule, table) -> None:
    """Fill the datamodule's sets: training images, then [held-out images + training images] to validate."""
    hp = datamodule.hparams
    groups, column = _read_groups(datamodule, table)
    names = group_names(groups, where=str(hp.labels), column=column)
    code = {g: k for k, g in enumerate(names)}
    labels = np.array([code[g] for g in groups], dtype=np.int64)
    if hp.folds is not None:
        log.warning("arcface task: the folds file %s is ignored; one image per group is held out instead "
                    "(grouped folds would make every validation group unseen)", hp.folds)
    train, val = arcface_split(groups, fold=hp.fold)
    if hp.full:
        log.warning("full=True: training on every image; the held-out images are also trained on")
        train = np.ones_like(val)
    if not val.any():
        raise CellclsError(f"{hp.labels}: no group has 2 or more images, so no image can be held out for "
                           "retrieval validation; the arcface task needs repeated groups")
    ids = np.array(table.ids, dtype=object)
    query, index = np.flatnonzero(val), np.flatnonzero(train)
    if datamodule.uses_crops():
        query, index = _setup_cells(datamodule, ids, labels, query, index)
    else:
        fit_tf, val_tf = datamodule._transforms(hp.image_size, hp.train_crop)
        datamodule.train_set = GroupImageDataset(hp.images, ids[train].tolist(), labels[train], fit_tf)
        order = np.concatenate([query, index])
        datamodule.val_set = GroupImageDataset(hp.images, ids[order].tolist(), labels[order], val_tf)
    datamodule.val_queries = int(len(query))
    datamodule.task_meta = {"groups": names, "group_col": column,
                            "embedding_unit": "cell_mean" if datamodule.uses_crops() else "image"}
    log.info("arcface task (%s): %d groups; %d training images, %d held out (one per group of >= 2 images)",
             "cell crops" if datamodule.uses_crops() else "whole images", len(names), len(index), len(query))


def _setup_cells(datamodule, ids: np.ndarray, labels: np.ndarray, query: np.ndarray,
                 index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell-crop sets: cells of the training images to train; cells of [held-out + training images] to validate.

    Every image is cut once (:meth:`train.data.HpaDataModule._cut`). An image without cells in the
    mask cache has no embedding: it leaves the split (a warning says how many). Sets
    ``datamodule.val_set.image_of_cell`` (image positions in [query, index] order) and returns the
    (query, index) image rows that kept cells.
    """
    hp = datamodule.hparams
    wanted = np.unique(np.concatenate([query, index]))
    crops, cells, entries = datamodule._cut(ids[wanted].tolist())
    datamodule._set_mask_key(entries)
    cell_ids = np.array([image_id for image_id, _ in cells], dtype=object)
    has_cells = set(cell_ids.tolist())
    dropped = [str(ids[i]) for i in wanted if ids[i] not in has_cells]
    if dropped:
        log.warning("arcface task: %d images have no cell in %s and are left out (first: %s)", len(dropped),
                    hp.masks, dropped[0])
    query = np.array([i for i in query if ids[i] in has_cells], dtype=np.int64)
    index = np.array([i for i in index if ids[i] in has_cells], dtype=np.int64)
    rows_of = {image_id: np.flatnonzero(cell_ids == image_id) for image_id in has_cells}

    def cells_of(images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(crop rows, group of each, position in ``images`` of each) of the cells of ``images``."""
        counts = [len(rows_of[ids[i]]) for i in images]
        return (np.concatenate([rows_of[ids[i]] for i in images]), np.repeat(labels[images], counts),
                np.repeat(np.arange(len(images)), counts))

    fit_tf, val_tf = datamodule._transforms(hp.crop_size, None)
    train_rows, train_groups, train_images = cells_of(index)
    datamodule.train_set = GroupCropDataset(crops[train_rows], train_groups, train_images, fit_tf)
    val_rows, val_groups, val_images = cells_of(np.concatenate([query, index]))
    datamodule.val_set = GroupCropDataset(crops[val_rows], val_groups, val_images, val_tf)
    datamodule.train_cells = [cells[r] for r in train_rows]
    datamodule.val_cell_index = [cells[r] for r in val_rows]
    log.info("arcface task on cell crops (%s, %d px): %d training cells, %d validation cells", hp.crop_mode,
             hp.crop_size, len(train_rows), len(val_rows))
    return query, index


def count_groups(datamodule) -> int:
    """Number of groups in the datamodule's label file (what ``model.num_classes`` is linked to)."""
    from cellcls.labels import read_train_csv

    hp = datamodule.hparams
    table = read_train_csv(hp.labels)
    if hp.limit_images is not None:
        table = table.subset(np.arange(min(hp.limit_images, len(table))))
    groups, column = _read_groups(datamodule, table)
    return len(group_names(groups, where=str(hp.labels), column=column))


# ----------------------------------------------------------------------------- model
class ArcFaceEmbedder(CellClassifier):
    """ArcFace embedding network: :class:`CellClassifier` with the ``embedding2019`` head over groups.

    The same parameters as :class:`CellClassifier` (defaults ``head='embedding2019'``, ``loss='arcface'``,
    ``optimizer='adam'``, ``lr=1e-4`` as in 2019); ``num_classes`` is the number of groups, linked from
    the data by ``cellcls train`` (not set by hand).
    """

    PROGRESS_METRICS = ("loss", "precision_at_1")

    def __init__(
        self,
        backbone: str = "resnet18",
        head: str = "embedding2019",
        in_chans: int = NUM_CHANNELS,
        num_classes: int = 2,
        pretrained_file: str | None = None,
        drop_rate: float | None = None,
        head_kwargs: dict[str, Any] | None = None,
        timm_kwargs: dict[str, Any] | None = None,
        loss: str | dict[str, Any] = "arcface",
        optimizer: str = "adam",
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        step_epochs: list[float] | None = None,
        step_lrs: list[float] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__(backbone=backbone, head=head, in_chans=in_chans, num_classes=num_classes,
                         pretrained_file=pretrained_file, drop_rate=drop_rate, head_kwargs=head_kwargs,
                         timm_kwargs=timm_kwargs, loss=loss, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                         schedule=schedule, warmup_epochs=warmup_epochs, min_lr=min_lr, step_epochs=step_epochs,
                         step_lrs=step_lrs, channels_last=channels_last)
        if not hasattr(self.model.head, "arc"):
            raise CellclsError(f"the arcface task needs model.head 'embedding2019' (an embedding and ArcFace "
                               f"cosines), got {head!r}")
        from cellcls.losses.arcface import ArcFaceLoss

        if not isinstance(self.criterion, ArcFaceLoss):
            raise CellclsError(f"the arcface task needs model.loss 'arcface' (or {{name: arcface, s: .., m: ..}}), "
                               f"got {loss!r}")

    @staticmethod
    def configure_parser(parser) -> None:
        """``cellcls train`` hook: ``model.num_classes`` = the number of groups; best checkpoint by precision@1."""
        parser.link_arguments("data", "model.num_classes", compute_fn=count_groups, apply_on="instantiate")
        parser.set_defaults({"checkpoint.monitor": "val/precision_at_1", "checkpoint.mode": "max"})

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, S, S)`` float -> ``(N, embedding_dim)`` embedding (not normalised)."""
        if self.hparams.channels_last and self._on_gpu():
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model.embed(x)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        groups = self.data_meta.get("groups")
        if groups is not None and len(groups) != self.hparams.num_classes:
            raise CellclsError(f"the model has {self.hparams.num_classes} ArcFace classes but the data has "
                               f"{len(groups)} groups; resume only with the label file the run started with")

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, index = batch
        self._val_outputs.append((self.embed(x).float().detach(), y.float().view(-1, 1), index))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.nn.functional.normalize(self.embed(x).float(), dim=1)

    @torch.no_grad()
    def validation_metrics(self, embeddings: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Retrieval precision@1 of the held-out images against the training images, and the ArcFace loss.

        ``embeddings`` (N, D) and ``targets`` (N, 1) are the validation rows in dataset order: images,
        or cells (then averaged per image with :func:`image_mean_embeddings` before retrieval; the
        loss is over the held-out images' cells).
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n_query = int(getattr(datamodule, "val_queries", 0) or 0)
        groups = targets.view(-1).long()
        image_of_cell = getattr(getattr(datamodule, "val_set", None), "image_of_cell", None)
        n_loss = n_query
        if image_of_cell is not None:  # cells -> image means; the loss stays on the held-out cells
            image_of_cell = torch.as_tensor(image_of_cell, dtype=torch.int64)
            n_loss = int((image_of_cell < n_query).sum())
            loss_rows, loss_groups = embeddings[:n_loss], groups[:n_loss]
            n_images = int(image_of_cell.max()) + 1 if len(image_of_cell) else 0
            first = torch.full((n_images,), len(groups), dtype=torch.int64).scatter_reduce(
                0, image_of_cell, torch.arange(len(groups)), reduce="amin")
            embeddings, groups = image_mean_embeddings(embeddings, image_of_cell, n_images), groups[first]
        else:
            loss_rows, loss_groups = embeddings[:n_query], groups[:n_query]
        query, index = embeddings[:n_query], embeddings[n_query:]
        out: dict[str, float] = {}
        if n_query and len(index):
            out["precision_at_1"], out["precision_at_1_chance"] = retrieval_precision_at_1(
                query.numpy(), groups[:n_query].numpy(), index.numpy(), groups[n_query:].numpy())
        if n_loss:
            arc = self.model.head.arc
            cosines = arc(loss_rows.to(arc.weight.device, arc.weight.dtype)).float()
            out["loss"] = float(self.criterion(cosines, loss_groups.to(cosines.device)))
        return out

    def inference_metadata(self) -> dict[str, Any]:
        return {**super().inference_metadata(), "embedding_dim": int(self.model.num_features)}
