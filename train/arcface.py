"""The ``arcface`` training task: an antibody-embedding network trained with ArcFace (HPA 2019, 1st place).

Classes are the groups (antibody ids) of the label file's ``group_col`` column; the network is
:func:`cellcls.models.create_model` with ``head='embedding2019'`` (a 512-d BN-ed embedding and an
ArcMarginProduct over the groups) and the loss is ``create_loss('arcface')`` (s 30, m 0.5). The data,
augmentation, Lightning loop, checkpoints and DDP are the classifier's: :class:`ArcFaceEmbedder`
subclasses :class:`train.module.CellClassifier`, and the task registers one setup function in
:data:`train.data.TASK_SETUPS`.

Split (:func:`arcface_split`). Validation classes must be classes the network was trained on (a
held-out group has no ArcFace centre and no training image to be retrieved), so the split holds
out whole IMAGES within groups, never whole groups: each group with >= 2 images gives one
validation image (which one: ``fold`` modulo the group's size, in a seeded order), groups with one
image are train-only. Grouped folds (``cellcls folds --group-col``), right for the classifier,
would make every validation class unseen here; a ``folds`` file is therefore ignored.

Validation (each epoch, gathered over DDP ranks). The validation loader yields the held-out images
first, then every training image, all in the evaluation form (resize + normalise). Then:

* ``val/precision_at_1``: share of held-out images whose most cosine-similar training image
  (:func:`cellcls.neighbors.cosine_topk`) has the same group, beside ``val/precision_at_1_chance``
  (the expected value for a random training image: mean over held-out images of the share of
  training images in its group);
* ``val/loss``: the ArcFace loss of the held-out images.

Checkpoints carry, in the ``cellcls`` section, ``task: 'arcface'``, ``embedding_dim``,
``image_size``, ``stats`` and ``groups`` (the group names in class-index order) besides the
classifier's keys.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from cellcls.classes import NUM_CHANNELS
from cellcls.errors import CellclsError, LabelError

from .data import TASK_SETUPS, ImageDataset
from .module import CellClassifier

__all__ = [
    "ArcFaceEmbedder",
    "GroupImageDataset",
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
    fit_tf, val_tf = datamodule._transforms(hp.image_size, hp.train_crop)
    datamodule.train_set = GroupImageDataset(hp.images, ids[train].tolist(), labels[train], fit_tf)
    query, index = np.flatnonzero(val), np.flatnonzero(train)
    order = np.concatenate([query, index])
    datamodule.val_set = GroupImageDataset(hp.images, ids[order].tolist(), labels[order], val_tf)
    datamodule.val_queries = int(len(query))
    datamodule.task_meta = {"groups": names, "group_col": column}
    log.info("arcface task: %d groups; %d training images, %d held out (one per group of >= 2 images)",
             len(names), int(train.sum()), len(query))


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
        """Retrieval precision@1 of the held-out rows against the training rows, and their ArcFace loss."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n_query = int(getattr(datamodule, "val_queries", 0) or 0)
        groups = targets.view(-1).long()
        query, index = embeddings[:n_query], embeddings[n_query:]
        out: dict[str, float] = {}
        if n_query and len(index):
            out["precision_at_1"], out["precision_at_1_chance"] = retrieval_precision_at_1(
                query.numpy(), groups[:n_query].numpy(), index.numpy(), groups[n_query:].numpy())
        if n_query:
            arc = self.model.head.arc
            cosines = arc(query.to(arc.weight.device, arc.weight.dtype)).float()
            out["loss"] = float(self.criterion(cosines, groups[:n_query].to(cosines.device)))
        return out

    def inference_metadata(self) -> dict[str, Any]:
        return {**super().inference_metadata(), "embedding_dim": int(self.model.num_features)}
