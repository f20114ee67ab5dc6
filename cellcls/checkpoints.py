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

Section layout (format version 1, plain types only, written by ``train.module``)::

    format_version  int
    model           dict: create_model keyword arguments (CellModel.config)
    thresholds      list of 19 floats or None
    classes         list of 19 class names
    channels        list of channel names ("red", "green", "blue", "yellow")
    task            "image" | "cell"
    crop_mode, crop_size, crop_margin   cell task (None for the image task)
    image_size      image task (None for the cell task)
    stats           {"mean": [4 floats], "std": [4 floats]} or None (inputs only scaled to [0, 1])
    mask_key        parameter-set part of the training masks' mask_key (cell task), or None
    mask_params_hash, cell_labels, train_rate   informational
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
TASKS = ("image", "cell")


@dataclass(frozen=True)
class InferenceMeta:
    """What inference needs to know about a checkpoint besides its weights.

    Attributes
    ----------
    path : str
        The checkpoint file.
    task : {"image", "cell"}
        Whole images or cell crops.
    model_name : str
        timm name of the backbone (``model_config["name"]``).
    model_config : dict
        ``create_model`` keyword arguments.
    crop_mode : str or None
        Cell task: a :data:`cellcls.crops.CROP_MODES` name.
    crop_size : int or None
        Cell task: crop side, pixels.
    crop_margin : float or None
        Cell task: box margin as a fraction of the box sides.
    image_size : int or None
        Image task: side in pixels the whole image is resized to.
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

    @property
    def input_size(self) -> int:
        """Side in pixels of the model's training input: ``crop_size`` (cell) or ``image_size`` (image)."""
        return int(self.crop_size if self.task == "cell" else self.image_size)  # type: ignore[arg-type]

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


def parse_inference_meta(section: Any, *, path: str | os.PathLike = "?", model_config: Mapping[str, Any] | None = None,
                         datamodule: Mapping[str, Any] | None = None) -> InferenceMeta:
    """Validate a checkpoint's ``cellcls`` section and return it typed.

    Parameters
    ----------
    section : the value of ``checkpoint["cellcls"]``.
    path : the checkpoint file (for messages).
    model_config : ``create_model`` arguments, when known from the hyper-parameters (else the
        section's ``model``).
    datamodule : the checkpoint's ``datamodule_hyper_parameters`` (fold, full, folds).

    Raises
    ------
    WeightsError
        Missing section, unsupported format version, an unknown task, classes that are not the
        competition's 19, or sizes/statistics of the wrong kind. The message names the file.
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
    task = section.get("task")
    if task not in TASKS:
        raise _bad(where, f"'{CHECKPOINT_KEY}.task' is {task!r}; expected one of {list(TASKS)}")
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
    crop_mode = crop_size = crop_margin = image_size = None
    if task == "cell":
        crop_mode = section.get("crop_mode")
        if not isinstance(crop_mode, str):
            raise _bad(where, f"cell-task checkpoint without '{CHECKPOINT_KEY}.crop_mode' (got {crop_mode!r})")
        crop_size = _positive_int(section, "crop_size", where)
        margin = section.get("crop_margin", 0.1)
        crop_margin = float(margin if margin is not None else 0.1)
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
             "crop_margin", "image_size", "stats", "mask_key", "fold", "full", "folds"}
    mask_key = section.get("mask_key")
    return InferenceMeta(
        path=where, task=str(task), model_name=name, model_config=config, crop_mode=crop_mode, crop_size=crop_size,
        crop_margin=crop_margin, image_size=image_size, mean=mean, std=std, classes=classes, thresholds=thresholds,
        mask_key=str(mask_key) if mask_key else None, fold=fold, full=full, folds_file=folds,
        format_version=int(version), extra={k: v for k, v in section.items() if k not in known},
    )


def _read_lightning(path: Path) -> Mapping[str, Any]:
    from .models.pretrained import read_checkpoint

    raw = read_checkpoint(path)
    if not (isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping)):
        raise _bad(str(path), "not a Lightning checkpoint (no 'state_dict'); inference needs a .ckpt saved by "
                              "`cellcls train`")
    return raw


def _meta_of(raw: Mapping[str, Any], path: Path) -> InferenceMeta:
    from .models.pretrained import model_config_from_hparams

    hparams = raw.get("hyper_parameters")
    config = model_config_from_hparams(hparams, path=path) if isinstance(hparams, Mapping) else None
    return parse_inference_meta(raw.get(CHECKPOINT_KEY), path=path, model_config=config,
                                datamodule=raw.get("datamodule_hyper_parameters"))


def read_inference_meta(path: str | os.PathLike) -> InferenceMeta:
    """The :class:`InferenceMeta` of a checkpoint, without building the network.

    Raises WeightsNotFoundError / UnsafeWeightsError / WeightsError as
    :func:`read_inference_checkpoint` does.
    """
    path = Path(path).expanduser()
    return _meta_of(_read_lightning(path), path)


def read_inference_checkpoint(path: str | os.PathLike) -> tuple["Any", InferenceMeta]:
    """Rebuild a trained network from its checkpoint and return it with its inference metadata.

    The file is read once (``torch.load(weights_only=True)``, on the CPU); the architecture comes
    from the hyper-parameters, the weights from the ``model.*`` keys of the state dict, every key
    must fit.

    Returns
    -------
    model : cellcls.models.CellModel
        On the CPU, in ``eval()`` mode; ``(N, 4, S, S)`` float -> ``(N, 19)`` logits.
    meta : InferenceMeta

    Raises
    ------
    WeightsNotFoundError
        No such file.
    UnsafeWeightsError
        The pickle holds objects beyond plain containers and tensors.
    WeightsError
        Not a Lightning checkpoint, no (or an unsupported) ``cellcls`` section, or weights that do
        not fit the recorded architecture. The message names the file and what to do.
    """
    from .models import create_model

    path = Path(path).expanduser()
    raw = _read_lightning(path)
    meta = _meta_of(raw, path)
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
