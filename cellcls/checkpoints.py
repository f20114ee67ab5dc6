"""The checkpoint metadata contract between training and inference.

``cellcls train`` saves Lightning checkpoints whose section ``checkpoint["cellcls"]``
(:data:`CHECKPOINT_KEY`) records everything inference needs besides the weights: the task the
model was trained for, how its inputs were cut (crop mode, size, margin) or resized (image size),
the channel statistics, the classes, the per-class thresholds and the mask key of the training
masks. :func:`read_inference_checkpoint` rebuilds the network from the file alone and returns
that section as a typed :class:`InferenceMeta`; a file without the section (not written by
``cellcls train``, or by a version before the section existed) or with a newer format raises
:class:`~cellcls.errors.WeightsError` saying what to do.

The fold a checkpoint was validated on comes from Lightning's ``datamodule_hyper_parameters``
(``fold``, ``full``, ``folds``), which the training data module saves with every checkpoint; a
``fold`` entry in the ``cellcls`` section, when present, wins.

One reader for every task: classifiers (``image``, ``cell``: ``cellcls predict``) and ArcFace
embedding networks (``arcface``: ``cellcls embed``). Each caller says which tasks it can use
(``tasks=``; the default is the classifiers, so a scorer never takes an embedding network by
mistake) and a checkpoint of another task is refused with a message naming the command that
uses it.

Section layout (format version 1, plain types only, written by ``train.module``)::

    format_version  int
    model           dict: create_model keyword arguments (CellModel.config)
    thresholds      list of 19 floats or None
    classes         list of 19 class names
    channels        list of channel names ("red", "green", "blue", "yellow")
    task            "image" | "cell" | "arcface"
    crop_mode, crop_size, crop_margin   cell task, and arcface on cell crops (else None)
    image_size      image task, and arcface on whole images (else None)
    stats           {"mean": [4 floats], "std": [4 floats]} or None (inputs only scaled to [0, 1])
    mask_key        parameter-set part of the training masks' mask_key (cell task), or None
    mask_params_hash, cell_labels, train_rate   informational
    groups          arcface: the group (antibody) names in ArcFace class order
    embedding_dim   arcface: length of an embedding
    embedding_unit  arcface: "image" (a whole resized image -> one embedding) or "cell_mean" (the
                    image embedding is the L2-normalised mean of its cells' embeddings); "image" when
                    absent (checkpoints written before cell crops existed)
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .classes import CHANNELS, CLASS_NAMES, NUM_CLASSES
from .errors import WeightsError

__all__ = [
    "CHECKPOINT_KEY",
    "FORMAT_VERSION",
    "SUPPORTED_VERSIONS",
    "TASKS",
    "CLASSIFIER_TASKS",
    "EMBEDDING_TASKS",
    "EMBEDDING_UNITS",
    "InferenceMeta",
    "parse_inference_meta",
    "read_inference_meta",
    "read_inference_checkpoint",
]

log = logging.getLogger(__name__)

#: Key of the inference section in a checkpoint (the string ``train.module`` writes).
CHECKPOINT_KEY = "cellcls"
#: Format version this cellcls writes.
FORMAT_VERSION = 1
#: Format versions this cellcls reads.
SUPPORTED_VERSIONS = (1,)
#: Training tasks a checkpoint can record.
TASKS = ("image", "cell", "arcface")
#: Tasks whose network scores the 19 classes (``cellcls predict``).
CLASSIFIER_TASKS = ("image", "cell")
#: Tasks whose network embeds images (``cellcls embed``).
EMBEDDING_TASKS = ("arcface",)
#: How an embedding network turns an image into one embedding.
EMBEDDING_UNITS = ("image", "cell_mean")
#: What to do with a checkpoint of each task (for the message when a caller cannot use it).
_USE = {"image": "a classifier: score it with `cellcls predict`",
        "cell": "a classifier: score it with `cellcls predict`",
        "arcface": "an embedding network: embed images with it with `cellcls embed`"}


@dataclass(frozen=True)
class InferenceMeta:
    """What inference needs to know about a checkpoint besides its weights.

    Attributes
    ----------
    path : str
        The checkpoint file.
    task : {"image", "cell", "arcface"}
        Whole-image classifier, cell-crop classifier, or ArcFace embedding network.
    model_name : str
        timm name of the backbone (``model_config["name"]``).
    model_config : dict
        ``create_model`` keyword arguments.
    crop_mode : str or None
        Cell crops (cell task, arcface on cells): a :data:`cellcls.crops.CROP_MODES` name.
    crop_size : int or None
        Cell crops: crop side, pixels.
    crop_margin : float or None
        Cell crops: box margin as a fraction of the box sides.
    image_size : int or None
        Whole images (image task, arcface on images): side in pixels the image is resized to.
    mean, std : tuple of float or None
        Per-channel statistics in ``[0, 1]`` units (RGBY); None = inputs only scaled to ``[0, 1]``.
    classes : tuple of str
        The 19 class names, in output order.
    thresholds : tuple of float or None
        Per-class decision thresholds (rate matching on validation).
    mask_key : str or None
        Parameter-set part of the training masks' ``mask_key`` (cell task).
    fold : int or None
        Validation fold of the run (the images the model did NOT train on), None when unknown.
    full : bool
        The run trained on every fold (no image is out of fold for it).
    folds_file : str or None
        The folds file the run split with (None: folds made inside the run).
    format_version : int
    extra : dict
        The rest of the section (``mask_params_hash``, ``train_rate``, ``cell_labels``...).
    groups : tuple of str
        Arcface: the group (antibody) names, ArcFace class ``k`` = ``groups[k]``; () for classifiers.
    embedding_dim : int or None
        Arcface: length of an embedding.
    embedding_unit : {"image", "cell_mean"} or None
        Arcface: one embedding per resized whole image, or per cell crop with the image embedding
        the L2-normalised mean of its cells' (TTA-averaged, unit) embeddings. None for classifiers.
    """

    path: str
    task: str
    model_name: str
    model_config: dict[str, Any] = field(repr=False)
    crop_mode: str | None
    crop_size: int | None
    crop_margin: float | None
    image_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    classes: tuple[str, ...]
    thresholds: tuple[float, ...] | None
    mask_key: str | None
    fold: int | None
    full: bool
    folds_file: str | None
    format_version: int
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    groups: tuple[str, ...] = field(default=(), repr=False)
    embedding_dim: int | None = None
    embedding_unit: str | None = None

    @property
    def uses_crops(self) -> bool:
        """Whether the model's inputs are cell crops (cut with ``crop_mode``/``crop_size``/``crop_margin``)."""
        return self.crop_mode is not None

    @property
    def input_size(self) -> int:
        """Side in pixels of the model's training input: ``crop_size`` (cell crops) or ``image_size``."""
        return int(self.crop_size if self.uses_crops else self.image_size)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        """Short readable name: ``{model_name}-{task}`` + ``-fold{k}`` when the fold is known."""
        fold = f"-fold{self.fold}" if self.fold is not None and not self.full else ("-full" if self.full else "")
        return f"{self.model_name}-{self.task}{fold}"


# ----------------------------------------------------------------------------- parsing
def _bad(path: str, why: str) -> WeightsError:
    return WeightsError(f"checkpoint {path}: {why}")


def _positive_int(section: Mapping[str, Any], key: str, path: str) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(path, f"'{CHECKPOINT_KEY}.{key}' must be a positive integer (pixels), got {value!r}")
    return int(value)


def _channel_values(stats: Any, key: str, path: str) -> tuple[float, ...]:
    values = stats.get(key) if isinstance(stats, Mapping) else None
    if not isinstance(values, (list, tuple)) or len(values) != len(CHANNELS):
        raise _bad(path, f"'{CHECKPOINT_KEY}.stats.{key}' must list {len(CHANNELS)} numbers (RGBY), got {values!r}")
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out) or (key == "std" and min(out) <= 0):
        raise _bad(path, f"'{CHECKPOINT_KEY}.stats.{key}' holds invalid values {out}")
    return out


def _fold_info(section: Mapping[str, Any], datamodule: Any) -> tuple[int | None, bool, str | None]:
    data = datamodule if isinstance(datamodule, Mapping) else {}
    fold = section.get("fold", data.get("fold"))
    full = bool(section.get("full", data.get("full", False)))
    folds = section.get("folds", data.get("folds"))
    fold = int(fold) if isinstance(fold, int) and not isinstance(fold, bool) else None
    return fold, full, (str(folds) if folds is not None else None)


def _crop_recipe(section: Mapping[str, Any], task: str, path: str) -> tuple[str, int, float]:
    crop_mode = section.get("crop_mode")
    if not isinstance(crop_mode, str):
        raise _bad(path, f"{task}-task checkpoint on cell crops without '{CHECKPOINT_KEY}.crop_mode' "
                         f"(got {crop_mode!r})")
    margin = section.get("crop_margin", 0.1)
    return crop_mode, _positive_int(section, "crop_size", path), float(margin if margin is not None else 0.1)


def _embedding_facts(section: Mapping[str, Any], path: str) -> tuple[tuple[str, ...], int, str]:
    """(groups, embedding_dim, embedding_unit) of an arcface section."""
    groups = section.get("groups")
    if not isinstance(groups, (list, tuple)) or not groups or not all(isinstance(g, str) for g in groups):
        raise _bad(path, f"arcface checkpoint whose '{CHECKPOINT_KEY}.groups' is not a list of group names "
                         f"(got {type(groups).__name__}); retrain it with `cellcls train --task arcface`")
    unit = section.get("embedding_unit") or "image"
    if unit not in EMBEDDING_UNITS:
        raise _bad(path, f"'{CHECKPOINT_KEY}.embedding_unit' is {unit!r}; expected one of {list(EMBEDDING_UNITS)}")
    return tuple(groups), _positive_int(section, "embedding_dim", path), str(unit)


def _check_task(task: Any, tasks: tuple[str, ...], path: str) -> str:
    if task not in TASKS:
        raise _bad(path, f"'{CHECKPOINT_KEY}.task' is {task!r}; expected one of {list(TASKS)}")
    if task not in tasks:
        raise WeightsError(f"checkpoint {path} was trained for task {task!r}, not {' or '.join(map(repr, tasks))}: "
                           f"it is {_USE[task]}")
    return str(task)


def parse_inference_meta(section: Any, *, path: str | os.PathLike = "?", model_config: Mapping[str, Any] | None = None,
                         datamodule: Mapping[str, Any] | None = None,
                         tasks: tuple[str, ...] = TASKS) -> InferenceMeta:
    """Validate a checkpoint's ``cellcls`` section and return it typed.

    Parameters
    ----------
    section : the value of ``checkpoint["cellcls"]``.
    path : the checkpoint file (for messages).
    model_config : ``create_model`` arguments, when known from the hyper-parameters (else the
        section's ``model``).
    datamodule : the checkpoint's ``datamodule_hyper_parameters`` (fold, full, folds).
    tasks : the tasks the caller can use (default: all of :data:`TASKS`).

    Raises
    ------
    WeightsError
        Missing section, unsupported format version, an unknown task or one outside ``tasks`` (the
        message says which command uses it), classes that are not the competition's 19, sizes or
        statistics of the wrong kind, an arcface section without groups or embedding size. The
        message names the file.
    """
    where = str(path)
    if not isinstance(section, Mapping):
        raise _bad(where, f"no '{CHECKPOINT_KEY}' section (inference metadata); it was not saved by "
                          "`cellcls train`, or by a version that predates the section. Retrain it with "
                          "`cellcls train`, which records the task, crops, statistics and classes inference needs")
    version = section.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        newer = isinstance(version, int) and version > max(SUPPORTED_VERSIONS)
        hint = "upgrade cellcls to read it" if newer else "retrain it with this cellcls"
        raise _bad(where, f"'{CHECKPOINT_KEY}' section has format_version {version!r}; this cellcls reads "
                          f"{list(SUPPORTED_VERSIONS)}: {hint}")
    task = _check_task(section.get("task"), tuple(tasks), where)
    classes = tuple(str(c) for c in section.get("classes") or ())
    if classes != tuple(CLASS_NAMES):
        raise _bad(where, f"records {len(classes)} classes {list(classes[:3])}...; expected the competition's "
                          f"{NUM_CLASSES} ({CLASS_NAMES[0]}, ..., {CLASS_NAMES[-1]}) in id order")
    channels = section.get("channels", list(CHANNELS))
    if list(channels) != list(CHANNELS):
        raise _bad(where, f"was trained on channels {list(channels)}; inference feeds {list(CHANNELS)}")
    config = dict(model_config if model_config is not None else section.get("model") or {})
    name = config.get("name")
    if not isinstance(name, str):
        raise _bad(where, f"no model name in its configuration ({sorted(config)})")
    crop_mode = crop_size = crop_margin = image_size = dim = unit = None
    groups: tuple[str, ...] = ()
    if task == "arcface":
        groups, dim, unit = _embedding_facts(section, where)
    if task == "cell" or unit == "cell_mean":
        crop_mode, crop_size, crop_margin = _crop_recipe(section, task, where)
    else:
        image_size = _positive_int(section, "image_size", where)
    stats = section.get("stats")
    mean = std = None
    if stats is not None:
        mean, std = _channel_values(stats, "mean", where), _channel_values(stats, "std", where)
    thresholds = section.get("thresholds")
    thresholds = tuple(float(t) for t in thresholds) if isinstance(thresholds, (list, tuple)) else None
    fold, full, folds = _fold_info(section, datamodule)
    known = {"format_version", "model", "thresholds", "classes", "channels", "task", "crop_mode", "crop_size",
             "crop_margin", "image_size", "stats", "mask_key", "fold", "full", "folds", "groups", "embedding_dim",
             "embedding_unit"}
    mask_key = section.get("mask_key")
    return InferenceMeta(
        path=where, task=str(task), model_name=name, model_config=config, crop_mode=crop_mode, crop_size=crop_size,
        crop_margin=crop_margin, image_size=image_size, mean=mean, std=std, classes=classes, thresholds=thresholds,
        mask_key=str(mask_key) if mask_key else None, fold=fold, full=full, folds_file=folds,
        format_version=int(version), extra={k: v for k, v in section.items() if k not in known},
        groups=groups, embedding_dim=dim, embedding_unit=unit,
    )


def _read_lightning(path: Path) -> Mapping[str, Any]:
    from .models.pretrained import read_checkpoint

    raw = read_checkpoint(path)
    if not (isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping)):
        raise _bad(str(path), "not a Lightning checkpoint (no 'state_dict'); inference needs a .ckpt saved by "
                              "`cellcls train`")
    return raw


def _meta_of(raw: Mapping[str, Any], path: Path, tasks: tuple[str, ...]) -> InferenceMeta:
    from .models.pretrained import model_config_from_hparams

    section = raw.get(CHECKPOINT_KEY)
    if isinstance(section, Mapping) and section.get("task") in TASKS:
        _check_task(section.get("task"), tuple(tasks), str(path))  # the wrong kind of network, before anything else
    hparams = raw.get("hyper_parameters")
    config = model_config_from_hparams(hparams, path=path) if isinstance(hparams, Mapping) else None
    return parse_inference_meta(section, path=path, model_config=config,
                                datamodule=raw.get("datamodule_hyper_parameters"), tasks=tasks)


def read_inference_meta(path: str | os.PathLike, *, tasks: tuple[str, ...] = CLASSIFIER_TASKS) -> InferenceMeta:
    """The :class:`InferenceMeta` of a checkpoint, without building the network.

    ``tasks``: the tasks the caller can use (default the classifiers; ``EMBEDDING_TASKS`` for
    ``cellcls embed``, ``TASKS`` for any).

    Raises WeightsNotFoundError / UnsafeWeightsError / WeightsError as
    :func:`read_inference_checkpoint` does.
    """
    path = Path(path).expanduser()
    return _meta_of(_read_lightning(path), path, tuple(tasks))


def read_inference_checkpoint(path: str | os.PathLike, *,
                              tasks: tuple[str, ...] = CLASSIFIER_TASKS) -> tuple["Any", InferenceMeta]:
    """Rebuild a trained network from its checkpoint and return it with its inference metadata.

    The file is read once (``torch.load(weights_only=True)``, on the CPU); the architecture comes
    from the hyper-parameters, the weights from the ``model.*`` keys of the state dict, every key
    must fit.

    Parameters
    ----------
    path : the ``.ckpt`` file.
    tasks : the tasks the caller can use: the classifiers (:data:`CLASSIFIER_TASKS`, default) or
        the embedding networks (:data:`EMBEDDING_TASKS`); a checkpoint of another task is a
        WeightsError naming the command that uses it.

    Returns
    -------
    model : cellcls.models.CellModel
        On the CPU, in ``eval()`` mode; ``(N, 4, S, S)`` float -> ``(N, 19)`` logits (classifiers),
        ``model.embed`` -> ``(N, embedding_dim)`` (arcface, not normalised).
    meta : InferenceMeta

    Raises
    ------
    WeightsNotFoundError
        No such file.
    UnsafeWeightsError
        The pickle holds objects beyond plain containers and tensors.
    WeightsError
        Not a Lightning checkpoint, no (or an unsupported) ``cellcls`` section, a task outside
        ``tasks``, or weights that do not fit the recorded architecture. The message names the file
        and what to do.
    """
    from .models import create_model

    path = Path(path).expanduser()
    raw = _read_lightning(path)
    meta = _meta_of(raw, path, tuple(tasks))
    model = create_model(**meta.model_config)
    state = {k[len("model."):]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    if not state:
        raise _bad(str(path), "its state dict has no 'model.*' keys; the training module keeps the network as "
                              "self.model")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise _bad(str(path), f"weights do not fit the recorded model {meta.model_config}: missing keys "
                              f"{missing[:5]}, unexpected keys {list(result.unexpected_keys)[:5]}")
    log.debug("read %s: %s", path, meta)
    return model.eval(), meta
