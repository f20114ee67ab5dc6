"""The training data: ``HpaDataModule`` (whole images or cell crops) and its datasets.

Tasks
-----
``image``
    One sample per image of ``labels`` (``train.csv``): the ``(H, W, 4)`` image read from
    ``images`` (the originals or a resized copy), target = its image-level labels.
``cell``
    One sample per segmented cell of the train images: the cell table of the mask cache
    ``masks`` (``cellcls segment`` on the train images) gives the cells, :func:`cellcls.crops.crop_cells`
    cuts them (``crop_mode``, ``crop_size``). Target = the image's labels broadcast to its cells
    (weak), or the soft per-cell labels of ``cell_labels`` (a Parquet/CSV table of earlier
    predictions with columns ``ID, cell_id`` and one column per class, named ``"0"`` .. ``"18"``: the
    pseudo-label round of the 7th-place solution). Crops are cut once in ``setup`` and kept in
    memory in the image dtype (4 x S x S bytes per cell at 8 bits).

``arcface``
    The group (antibody id, column ``group_col``) as the class, for the metric-learning network of
    :mod:`train.arcface` (its own split: one held-out image per group). Whole images, or, when
    ``masks`` is given, the cell crops of the cell task, each carrying its image's group (the image
    embedding is then the normalised mean of its cells' embeddings).

Splits: the ``fold`` column of ``folds`` (``cellcls folds``) picks the validation fold; without a
folds file, 5 folds are made here with :func:`cellcls.folds.make_folds` (seed 0), grouped by the
label file's ``group_col`` column (the antibody) when it has one, so a protein never straddles the
split. ``full=True`` trains on every image and validates on fold ``fold`` (which is then also
trained on: its figures are optimistic).

Inputs of either depth: uint8 and uint16 images are scaled to ``[0, 1]`` (/255, /65535) before
augmentation and normalised with the channel statistics of ``stats`` (``cellcls stats``).

Validation cells of a world with per-cell truth: give ``solution`` (``solution_train.csv`` of a
``cellcls synth`` world) and the cell task also reports mAP@0.6 of the validation cells.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from cellcls.classes import CHANNELS, CLASS_NAMES, NUM_CLASSES
from cellcls.errors import CellclsError, LabelError, MissingChannelError
from cellcls.registry import Registry

from .augment import build_transform

__all__ = ["HpaDataModule", "ImageDataset", "CropDataset", "read_cell_labels", "TASKS", "TASK_SETUPS"]

log = logging.getLogger(__name__)

#: task name -> ``setup(datamodule, table)``: fills ``train_set``/``val_set`` (and the task's facts) from the
#: label table; ``arcface`` is registered by :mod:`train.arcface` (imported at the end of this module).
TASK_SETUPS: Registry = Registry("training task")
TASKS = ("image", "cell", "arcface")


# ----------------------------------------------------------------------------- datasets
class ImageDataset(Dataset):
    """Whole images read on demand.

    Item ``i``: ``(x, y, i)`` with x = ``transform(to_float01(read_image(images, ids[i])))``
    (float32 (4, S, S)), y = ``targets[i]`` (float32 (19,)).
    """

    def __init__(self, images: str | Path, ids: Sequence[str], targets: np.ndarray, transform) -> None:
        self.images = str(images)
        self.ids = list(ids)
        self.targets = np.array(targets, dtype=np.float32)  # a writable copy: torch.from_numpy warns on read-only views
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        from cellcls.io import read_image, to_float01

        image = to_float01(read_image(self.images, self.ids[index], threads=1))
        return torch.from_numpy(self.transform(image)), torch.from_numpy(self.targets[index]), index


class CropDataset(Dataset):
    """Cell crops held in memory: ``crops`` (N, 4, S, S) uint8/uint16, ``targets`` (N, 19)."""

    def __init__(self, crops: np.ndarray, targets: np.ndarray, transform) -> None:
        self.crops = crops
        self.targets = np.array(targets, dtype=np.float32)  # a writable copy: torch.from_numpy warns on read-only views
        self.transform = transform

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, index: int):
        from cellcls.io import to_float01

        crop = to_float01(np.ascontiguousarray(self.crops[index].transpose(1, 2, 0)))
        return torch.from_numpy(self.transform(crop)), torch.from_numpy(self.targets[index]), index


# ----------------------------------------------------------------------------- helpers
def read_cell_labels(path: str | Path) -> "Any":
    """Soft per-cell labels: a per-cell score table (:mod:`cellcls.scores`, what ``cellcls predict`` writes).

    Returns
    -------
    pandas.DataFrame indexed by ``(ID, cell_id)``: the 19 probability columns
    (:data:`cellcls.scores.SCORE_COLUMNS`, class order, float32 in [0, 1]) and ``mask_key``.

    Raises
    ------
    LabelError
        No such file.
    ScoreTableError
        Missing columns, values outside [0, 1] or NaN, a repeated (ID, cell_id): the message names
        the file, row and column.
    """
    from cellcls.scores import SCORE_COLUMNS, read_scores

    path = Path(path)
    if not path.is_file():
        raise LabelError(f"cell label table {path} does not exist; it is a per-cell score table of earlier "
                         "predictions (`cellcls predict --oof ... --scores scores.parquet`)")
    frame = read_scores(path)
    out = frame[[*SCORE_COLUMNS, "mask_key"]].copy()
    out.index = _score_index(frame)
    return out


def _score_index(frame: "Any") -> "Any":
    """The (ID, cell_id) index of a score table's rows."""
    import pandas as pd

    return pd.MultiIndex.from_arrays([frame["ID"].astype(str), frame["cell_id"].astype(np.int64)],
                                     names=["ID", "cell_id"])


def _check_images_exist(images: str, ids: Sequence[str], labels: str) -> None:
    """Raise one MissingChannelError naming the first missing image and how many are missing."""
    from cellcls.io import channel_paths

    problems = []
    for image_id in ids:
        try:
            channel_paths(images, image_id)
        except MissingChannelError as exc:
            problems.append(str(exc))
    if problems:
        raise MissingChannelError(
            f"{len(problems)} of the {len(ids)} images listed in {labels} have no files in {images}; "
            f"first: {problems[0]}. Fix --data.images or remove those rows from the label file")


def _split(ids: Sequence[str], targets: np.ndarray, groups, *, folds: str | None, fold: int, full: bool,
           labels: str) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (train, val) masks over ``ids``."""
    import pandas as pd

    if folds is not None:
        path = Path(folds)
        if not path.is_file():
            raise CellclsError(f"folds file {path} does not exist; make it with "
                               f"'cellcls folds --labels {labels} --out {path}'")
        table = pd.read_csv(path, dtype={"ID": str})
        if not {"ID", "fold"} <= set(table.columns):
            raise CellclsError(f"folds file {path}: expected columns ID,fold (from 'cellcls folds'), "
                               f"found {list(table.columns)}")
        by_id = dict(zip(table["ID"], table["fold"].astype(int)))
        absent = [i for i in ids if i not in by_id]
        if absent:
            raise CellclsError(f"folds file {path} has no fold for {len(absent)} IDs of {labels} "
                               f"(first: {absent[0]}); remake it from the same label file")
        assignment = np.array([by_id[i] for i in ids], dtype=np.int64)
    else:
        from cellcls.folds import make_folds

        assignment = make_folds(targets, k=5, seed=0, groups=groups)
    if fold not in set(assignment.tolist()):
        raise CellclsError(f"fold {fold} does not exist; the folds are {sorted(set(assignment.tolist()))}")
    val = assignment == fold
    train = np.ones_like(val) if full else ~val
    if full:
        log.warning("full=True: training on every image; validation fold %d is also trained on", fold)
    return train, val


# ----------------------------------------------------------------------------- the module
class HpaDataModule(pl.LightningDataModule):
    """Paths, splits, transforms and loaders of a training run.

    Parameters
    ----------
    images : str
        Folder of ``{ID}_{red,green,blue,yellow}.png|tif`` train images (8- or 16-bit).
    labels : str
        ``train.csv`` (``ID,Label`` [+ ``group``]).
    task : {"image", "cell", "arcface"}
    folds : str, optional
        ``folds.csv`` from ``cellcls folds``; default: 5 folds made here (grouped by ``group_col``).
        Not used by ``arcface`` (see :func:`train.arcface.arcface_split`).
    fold : int
        Validation fold.
    full : bool
        Train on every fold (validation fold still evaluated).
    stats : str, optional
        ``stats.json`` from ``cellcls stats``; default: no normalisation beyond [0, 1].
    image_size : int
        Image task: side in pixels images are resized to (1024 in seed 002, 768 in 2019).
    train_crop : int, optional
        Image task, ``bestfitting2019`` augmentation: side of the random training window.
    masks : str, optional
        Cell task (and arcface on cell crops): mask cache of the train images (``cellcls segment
        --images IMAGES --out MASKS``).
    crop_mode : str
        Cell crops: a mode of :data:`cellcls.crops.CROP_MODES` ("masked", "context", ...).
    crop_size : int
        Cell crops: crop side in pixels (model input side).
    crop_margin : float
        Cell crops, box modes: margin around the cell's box, as a fraction of its sides.
    cell_labels : str, optional
        Cell task: soft per-cell labels (see :func:`read_cell_labels`); default: image labels broadcast.
    dark_negative : bool
        Cell task: fold each training cell's protein signal into its targets
        (:func:`cellcls.signal.dark_cell_targets`): a cell whose green channel stays near background
        gets Negative and loses its image's classes, in proportion to its darkness. Applies to broadcast
        and soft labels alike; validation targets stay the image labels.
    solution : str, optional
        Cell task: ``solution_train.csv`` of a world with per-cell truth, for the validation cell mAP@0.6.
    group_col : str
        Column of ``labels`` holding the group (antibody id): folds are grouped by it, and it is the
        class of the ``arcface`` task.
    augment : str
        Training augmentation, a name of :data:`train.augment.AUGMENTATIONS`.
    batch_size, num_workers : int
        Per process (per DDP rank).
    limit_images : int, optional
        Use only the first N images of the label file (quick runs).
    progress : bool
        Progress bars while cutting crops.
    """

    def __init__(
        self,
        images: str,
        labels: str,
        task: str = "image",
        folds: str | None = None,
        fold: int = 0,
        full: bool = False,
        stats: str | None = None,
        image_size: int = 512,
        train_crop: int | None = None,
        masks: str | None = None,
        crop_mode: str = "masked",
        crop_size: int = 128,
        crop_margin: float = 0.1,
        cell_labels: str | None = None,
        dark_negative: bool = False,
        solution: str | None = None,
        group_col: str = "group",
        augment: str = "seed002",
        batch_size: int = 16,
        num_workers: int = 2,
        limit_images: int | None = None,
        progress: bool = True,
    ) -> None:
        super().__init__()
        if task not in TASK_SETUPS:
            raise CellclsError(f"unknown task {task!r}; choose one of: {', '.join(TASK_SETUPS.names())}")
        if task == "cell" and masks is None:
            raise CellclsError("the cell task needs a mask cache of the train images: give --data.masks MASKDIR "
                               "(make it with 'cellcls segment --images IMAGES --out MASKDIR')")
        from .augment import AUGMENTATIONS

        AUGMENTATIONS.get(augment)  # unknown name -> RegistryError listing the choices, at parse time
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.train_rate: np.ndarray | None = None
        self.val_targets: np.ndarray | None = None
        self.val_cells = None  # ValidationCells when a solution with per-cell truth is given
        self.train_cells: list[tuple[str, int]] = []  # cell task: (ID, cell_id) of each sample
        self.cell_darkness: dict[tuple[str, int], float] = {}  # dark_negative: training (ID, cell_id) -> darkness
        self.val_cell_index: list[tuple[str, int]] = []
        self.mask_key: str | None = None
        self.mask_params_hash: str | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.val_queries = 0  # arcface: the first val_queries rows of val_set are the held-out images
        self.task_meta: dict[str, Any] = {}  # task-specific facts for the checkpoint (arcface: groups)

    # --------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from cellcls.labels import read_train_csv

        hp = self.hparams
        table = read_train_csv(hp.labels)
        if hp.limit_images is not None:
            table = table.subset(np.arange(min(hp.limit_images, len(table))))
        _check_images_exist(hp.images, table.ids, hp.labels)
        self._read_stats()
        TASK_SETUPS.get(hp.task)(self, table)
        log.info("%s task: %d training and %d validation samples", hp.task, len(self.train_set), len(self.val_set))

    def _fold_split(self, table) -> tuple[np.ndarray, np.ndarray]:
        """(train, val) masks of the classifier tasks: the validation fold, grouped by ``group_col``."""
        hp = self.hparams
        column = hp.group_col
        groups = table.extra[column].tolist() if column in table.extra.columns else None
        return _split(table.ids, table.targets, groups, folds=hp.folds, fold=hp.fold, full=hp.full, labels=hp.labels)

    def _read_stats(self) -> None:
        if self.hparams.stats is None:
            return
        from cellcls.stats import read_stats

        stats = read_stats(self.hparams.stats)
        if list(stats["channels"]) != list(CHANNELS):
            raise CellclsError(f"statistics file {self.hparams.stats} lists channels {stats['channels']}; "
                               f"expected {list(CHANNELS)}")
        self.mean, self.std = list(stats["mean"]), list(stats["std"])

    def _transforms(self, size: int, crop: int | None):
        hp = self.hparams
        common = dict(size=size, mean=self.mean, std=self.std, channels=len(CHANNELS))
        return (build_transform(hp.augment, train=True, crop=crop, **common),
                build_transform(hp.augment, train=False, **common))

    def _setup_images(self, table, train: np.ndarray, val: np.ndarray) -> None:
        hp = self.hparams
        targets = table.targets.astype(np.float32)
        ids = np.array(table.ids, dtype=object)
        fit_tf, val_tf = self._transforms(hp.image_size, hp.train_crop)
        self.train_set = ImageDataset(hp.images, ids[train].tolist(), targets[train], fit_tf)
        self.val_set = ImageDataset(hp.images, ids[val].tolist(), targets[val], val_tf)
        self.train_rate = targets[train].mean(axis=0)
        self.val_targets = targets[val]

    def _setup_cells(self, table, train: np.ndarray, val: np.ndarray) -> None:
        hp = self.hparams
        image_targets = dict(zip(table.ids, table.targets.astype(np.float32)))
        train_ids = [i for i, keep in zip(table.ids, train) if keep]
        val_ids = [i for i, keep in zip(table.ids, val) if keep]
        soft = read_cell_labels(hp.cell_labels) if hp.cell_labels is not None else None
        fit_tf, val_tf = self._transforms(hp.crop_size, None)
        train_crops, train_cells, entries = self._cut(train_ids, darkness=hp.dark_negative)
        val_crops, val_cells, val_entries = self._cut(val_ids)
        entries.update(val_entries)
        train_targets = self._cell_targets(train_cells, image_targets, soft, entries)
        if hp.dark_negative:
            from cellcls.signal import dark_cell_targets

            darkness = np.array([self.cell_darkness[cell] for cell in train_cells], dtype=np.float32)
            train_targets = dark_cell_targets(train_targets, darkness)
        self.train_set = CropDataset(train_crops, train_targets, fit_tf)
        # Validation targets are the image labels broadcast: the only truth a real training set has.
        self.val_set = CropDataset(val_crops, self._cell_targets(val_cells, image_targets, None), val_tf)
        self.train_rate = self.train_set.targets.mean(axis=0)
        self.val_targets = self.val_set.targets
        self.train_cells, self.val_cell_index = train_cells, val_cells
        self._set_mask_key(entries)
        if hp.solution is not None:
            self.val_cells = self._validation_cells(val_ids, val_cells, entries)

    def _set_mask_key(self, entries: dict) -> None:
        """Record the training masks' parameter set from the cache entries used ({ID: CacheEntry})."""
        # mask_key = "{parameter-set part}-{label part}"; the first part is shared by every entry of one
        # parameter set (train and test alike): it is what inference compares its own masks against.
        parts = sorted({e.mask_key.split("-", 1)[0] for e in entries.values()})
        if len(parts) != 1:
            raise CellclsError(f"the mask cache {self.hparams.masks} mixes {len(parts)} parameter sets; re-segment it")
        self.mask_key = parts[0]
        self.mask_params_hash = next(iter(entries.values())).params_hash

    def uses_crops(self) -> bool:
        """Whether the samples are cell crops: the cell task, and the arcface task given ``masks``."""
        return self.hparams.task == "cell" or (self.hparams.task == "arcface" and self.hparams.masks is not None)

    def _cut(self, ids: Sequence[str], *, darkness: bool = False):
        """Crops of every cell of ``ids``: ((N, 4, S, S) array, [(ID, cell_id)], {ID: CacheEntry}); with
        ``darkness`` each cell's darkness also goes into :attr:`cell_darkness`."""
        from tqdm import tqdm

        from cellcls.crops import crop_cells
        from cellcls.io import read_image
        from cellcls.masks.cache import MaskCache
        from cellcls.masks.table import entry_cell_table

        hp = self.hparams
        cache = MaskCache(hp.masks).reader()  # one parameter set, or a CacheError saying which ones mix
        crops, cells, entries = [], [], {}
        for image_id in tqdm(ids, desc="cutting cells", unit="img", disable=not hp.progress or not ids):
            entry = cache.read(image_id)  # CacheError naming the ID when the entry is missing
            entries[image_id] = entry
            rows = entry_cell_table(entry)
            if not len(rows):
                continue
            image = read_image(hp.images, image_id)
            if image.shape[:2] != tuple(entry.original_shape):
                raise CellclsError(f"image {image_id!r}: the image in {hp.images} is {image.shape[:2]} but its "
                                   f"mask-cache entry in {hp.masks} was made from a {tuple(entry.original_shape)} "
                                   "image; segment the same images you train on")
            crops.append(crop_cells(image, entry.cells, rows, mode=hp.crop_mode, size=hp.crop_size,
                                    margin=hp.crop_margin, image_id=image_id))
            cells.extend((image_id, int(c)) for c in rows["cell_id"])
            if darkness:
                from cellcls.signal import entry_cell_darkness

                values = entry_cell_darkness(image, entry, rows["cell_id"].tolist())
                self.cell_darkness.update(zip(cells[-len(rows):], values.tolist()))
        if not crops:
            raise CellclsError(f"no cells found in the mask cache {hp.masks} for {len(ids)} images")
        return np.concatenate(crops), cells, entries

    @staticmethod
    def _cell_targets(cells: list[tuple[str, int]], image_targets: dict, soft, entries: dict | None = None) -> np.ndarray:
        from cellcls.scores import SCORE_COLUMNS

        if soft is None:
            return np.stack([image_targets[image_id] for image_id, _ in cells]).astype(np.float32)
        index = soft.index
        missing = [c for c in cells if c not in index]
        if missing:
            raise LabelError(f"the cell label table has no row for {len(missing)} of {len(cells)} training cells "
                             f"(first: ID {missing[0][0]}, cell {missing[0][1]}); it must score the cells of the "
                             "same mask cache")
        rows = soft.loc[cells]
        if entries:
            # Cell ids index one segmentation: soft labels of other masks would land on the wrong cells.
            expected = np.array([entries[image_id].mask_key for image_id, _ in cells])
            wrong = np.flatnonzero(rows["mask_key"].to_numpy(dtype=str) != expected)
            if wrong.size:
                image_id, cell = cells[int(wrong[0])]
                raise LabelError(f"the cell label table scores other masks than the mask cache: image {image_id} has "
                                 f"mask_key {rows['mask_key'].iloc[int(wrong[0])]!r} there and "
                                 f"{expected[int(wrong[0])]!r} in the cache; predict again on this cache")
        return rows[list(SCORE_COLUMNS)].to_numpy(dtype=np.float32)

    def _validation_cells(self, val_ids, val_cells, entries):
        from cellcls.metric import read_solution
        from cellcls.rle import encode_label_map

        from .metrics import ValidationCells

        solution = read_solution(self.hparams.solution)
        missing = [i for i in val_ids if i not in solution]
        if missing:
            raise CellclsError(f"solution {self.hparams.solution} has no truth for validation image {missing[0]} "
                               f"({len(missing)} missing); give the train solution of the same world")
        by_image: dict[str, list[int]] = {}
        for image_id, cell_id in val_cells:
            by_image.setdefault(image_id, []).append(cell_id)
        images = []
        for image_id in val_ids:
            entry = entries[image_id]
            cells = tuple(by_image.get(image_id, ()))
            strings = encode_label_map(entry.cells, out_shape=entry.original_shape) if cells else {}
            images.append((image_id, tuple(entry.original_shape), cells, tuple(strings[c] for c in cells)))
        return ValidationCells(truths={i: solution[i] for i in val_ids}, images=tuple(images))

    # --------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset, *, shuffle: bool) -> DataLoader:
        hp = self.hparams
        return DataLoader(dataset, batch_size=hp.batch_size, shuffle=shuffle, num_workers=hp.num_workers,
                          drop_last=shuffle and len(dataset) > hp.batch_size,
                          persistent_workers=hp.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    # --------------------------------------------------------------- what inference needs
    def inference_metadata(self) -> dict[str, Any]:
        """Plain-typed facts about the inputs the model was trained on (stored in the checkpoint)."""
        hp = self.hparams
        cell = self.uses_crops()
        return {
            "classes": list(CLASS_NAMES),
            "channels": list(CHANNELS),
            "task": hp.task,
            "crop_mode": hp.crop_mode if cell else None,
            "crop_size": int(hp.crop_size) if cell else None,
            "crop_margin": float(hp.crop_margin) if cell else None,
            "image_size": None if cell else int(hp.image_size),
            "stats": None if self.mean is None else {"mean": list(self.mean), "std": list(self.std)},
            "mask_key": self.mask_key,
            "mask_params_hash": self.mask_params_hash,
            "cell_labels": "soft" if hp.cell_labels else ("broadcast" if hp.task == "cell" else None),
            "dark_negative": bool(hp.dark_negative) if hp.task == "cell" else None,
            "train_rate": None if self.train_rate is None else [float(v) for v in self.train_rate],
            **self.task_meta,
        }


@TASK_SETUPS.register("image")
def _setup_image_task(datamodule: HpaDataModule, table) -> None:
    datamodule._setup_images(table, *datamodule._fold_split(table))


@TASK_SETUPS.register("cell")
def _setup_cell_task(datamodule: HpaDataModule, table) -> None:
    datamodule._setup_cells(table, *datamodule._fold_split(table))


from . import arcface as _arcface  # noqa: E402,F401  (registers the 'arcface' task; it imports this module)
