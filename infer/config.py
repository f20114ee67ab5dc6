"""The inference configuration (``cellcls predict --config infer.yaml``): TTA, blend, batching.

Every key is optional; an unknown key is refused with the list of valid ones. Example::

    tta: seed002              # none | flips | d4 | seed002 (infer.tta.TTA)
    blend: "mean:w=0.7"       # a spec of infer.blend (rule[:k=v][+modifier[:k=v]]...)
    batch_size: 64            # crops per forward pass
    group_cells: 256          # cells gathered across images before the models run
    device: auto              # auto | cpu | cuda
    image_on_crops: null      # image-task checkpoints score cell crops too (null: when no cell-task one)
    image_crop_size: 256      # their crop side (default: the checkpoint's image_size)
    models:                   # optional per-checkpoint settings, matched by file name
      - {path: fold0.ckpt, weight: 2.0, tta: d4}
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cellcls.errors import CellclsError, ParameterError

__all__ = ["InferConfig", "ModelOptions", "load_config"]

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class ModelOptions:
    """Settings of one checkpoint: its ensemble ``weight`` (> 0) and its own ``tta`` (None = the config's)."""

    path: str
    weight: float = 1.0
    tta: str | None = None


@dataclass(frozen=True)
class InferConfig:
    """How ``cellcls predict`` scores cells (see the module docstring for every key).

    Attributes
    ----------
    tta : str
        Default TTA of every model, a name of :data:`infer.tta.TTA`.
    blend : str
        Blend spec (:class:`infer.blend.BlendSpec` text form), applied per image after ensembling.
    batch_size : int
        Crops (or images) per forward pass.
    group_cells : int
        Cells gathered across consecutive images before the models run (bigger = fuller batches).
    max_group_images : int
        At most this many images per group (memory bound: their crops are held together).
    device : {"auto", "cpu", "cuda"}
    image_on_crops : bool or None
        Image-task checkpoints also score every cell crop (seed 002's way). None (default): only
        when no cell-task checkpoint is given. False without cell-task checkpoints: every cell gets
        its image's score (image only).
    image_crop_mode : str
        Crop mode for image-task checkpoints applied to crops.
    image_crop_size : int or None
        Crop side for them, pixels (None: their ``image_size``).
    image_crop_margin : float
    keep_size : bool
        Resizing TTA views pad/crop back to the input size (fixed-size models).
    num_workers : int
        Threads preparing the next images (decode, crop) while the models run; 0 = in turn.
    models : tuple of ModelOptions
        Per-checkpoint weight/TTA, matched by path or file name.
    """

    tta: str = "seed002"
    blend: str = "cell"
    batch_size: int = 64
    group_cells: int = 256
    max_group_images: int = 8
    device: str = "auto"
    image_on_crops: bool | None = None
    image_crop_mode: str = "masked"
    image_crop_size: int | None = None
    image_crop_margin: float = 0.1
    keep_size: bool = False
    num_workers: int = 1
    models: tuple[ModelOptions, ...] = field(default=())

    def __post_init__(self) -> None:
        from infer.blend import BlendSpec
        from infer.tta import TTA

        TTA.get(self.tta)
        BlendSpec.parse(self.blend)
        for name in ("batch_size", "group_cells", "max_group_images"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"infer config: {name} must be an integer >= 1, got {value!r}")
        if self.device not in DEVICES:
            raise ParameterError(f"infer config: device must be one of {list(DEVICES)}, got {self.device!r}")
        if self.num_workers < 0:
            raise ParameterError(f"infer config: num_workers must be >= 0, got {self.num_workers!r}")
        if self.image_crop_size is not None and self.image_crop_size < 1:
            raise ParameterError(f"infer config: image_crop_size must be >= 1 pixel, got {self.image_crop_size!r}")
        for options in self.models:
            if not options.weight > 0:
                raise ParameterError(f"infer config: model {options.path}: weight must be > 0, got {options.weight!r}")
            if options.tta is not None:
                TTA.get(options.tta)

    def replace(self, **changes: Any) -> "InferConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def options_for(self, path: str | os.PathLike) -> ModelOptions:
        """The :class:`ModelOptions` whose path equals ``path`` or its file name; defaults otherwise."""
        path = Path(path)
        for options in self.models:
            given = Path(options.path)
            if given == path or (given.name == path.name and len(given.parts) == 1):
                return options
        return ModelOptions(str(path))


def _fields() -> list[str]:
    return [f.name for f in dataclasses.fields(InferConfig)]


def from_mapping(values: Mapping[str, Any], *, where: str = "infer config") -> InferConfig:
    """An :class:`InferConfig` from a mapping (a parsed YAML file); unknown keys raise CellclsError."""
    unknown = sorted(set(values) - set(_fields()))
    if unknown:
        raise CellclsError(f"{where}: unknown key(s) {unknown}; valid keys: {', '.join(_fields())}")
    values = dict(values)
    models = []
    for item in values.pop("models", None) or ():
        if not isinstance(item, Mapping) or "path" not in item:
            raise CellclsError(f"{where}: each entry of 'models' needs a 'path' (and optional weight, tta), got {item!r}")
        extra = sorted(set(item) - {"path", "weight", "tta"})
        if extra:
            raise CellclsError(f"{where}: model entry {item.get('path')}: unknown key(s) {extra}; valid: path, weight, tta")
        models.append(ModelOptions(str(item["path"]), float(item.get("weight", 1.0)), item.get("tta")))
    try:
        return InferConfig(**values, models=tuple(models))
    except TypeError as exc:
        raise CellclsError(f"{where}: {exc}") from exc


def load_config(path: str | os.PathLike | None) -> InferConfig:
    """Read an infer YAML file (None: the defaults)."""
    if path is None:
        return InferConfig()
    import yaml

    path = Path(path)
    if not path.is_file():
        raise CellclsError(f"infer config {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, Mapping):
        raise CellclsError(f"infer config {path}: expected a mapping of keys to values, got {type(values).__name__}")
    return from_mapping(values, where=str(path))
