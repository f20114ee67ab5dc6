"""File-level helpers of the mask cache: ID and key checks, input validation, atomic writes.

Private to :mod:`cellcls.masks`; every function raises CacheError naming the image ID.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cellcls.atomic import TEMP_SUFFIX, atomic_file
from cellcls.errors import CacheError

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
UINT16_MAX = int(np.iinfo(np.uint16).max)
UINT32_MAX = int(np.iinfo(np.uint32).max)


def check_id(image_id: str) -> str:
    if not isinstance(image_id, str) or not ID_PATTERN.fullmatch(image_id):
        raise CacheError(
            f"image ID {image_id!r} cannot name a cache file: expected 1-200 characters of letters, digits, "
            "'.', '_' or '-', starting with a letter or digit")
    return image_id


def check_key(image_id: str, **keys: str) -> None:
    for name, value in keys.items():
        if not isinstance(value, str) or not value.strip():
            raise CacheError(f"{image_id}: {name} must be a non-empty string, got {value!r}")


def json_params(image_id: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON round-tripped copy of ``params`` (``{}`` for None); CacheError if it is not a JSON object."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise CacheError(f"{image_id}: params must be a dict of JSON values, got {type(params).__name__}")
    try:
        return json.loads(json.dumps(params, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CacheError(f"{image_id}: params must hold only JSON values (str, number, bool, list, dict): {exc}") from exc


def as_label_map(labels: np.ndarray, image_id: str, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 2 or array.size == 0:
        raise CacheError(f"{image_id}: {name} must be a non-empty 2-D (h, w) label map, got shape {array.shape}")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise CacheError(f"{image_id}: {name} must have an integer dtype (uint16/uint32 ids), got {array.dtype}")
    low, high = int(array.min()), int(array.max())
    if low < 0 or high > UINT32_MAX:
        raise CacheError(f"{image_id}: {name} ids must lie in 0..{UINT32_MAX}, got {low}..{high}")
    return array


def check_geometry(image_id: str, seg_shape: tuple[int, ...], original_shape: tuple[int, int],
                    scale: float) -> tuple[tuple[int, int], float]:
    try:
        height, width = (int(v) for v in original_shape)
        scale = float(scale)
    except (TypeError, ValueError) as exc:
        raise CacheError(f"{image_id}: original_shape must be (H, W) ints and scale a number; "
                         f"got {original_shape!r}, {scale!r}") from exc
    if height <= 0 or width <= 0 or not scale > 0 or not np.isfinite(scale):
        raise CacheError(f"{image_id}: need positive original (H, W) and scale, got {original_shape!r}, {scale!r}")
    # Catches swapped axes (hpacellseg returns non-square maps transposed) and wrong scales.
    if abs(seg_shape[0] - height * scale) > 1 or abs(seg_shape[1] - width * scale) > 1:
        raise CacheError(
            f"{image_id}: label map {seg_shape} does not match original (H, W)={height, width} x scale {scale} "
            f"= ({height * scale:g}, {width * scale:g}); check the axis order and the scale")
    return (height, width), scale


def read_sidecar(path: Path) -> dict[str, Any]:
    """The JSON object of a sidecar; ValueError (or OSError) when it is not one."""
    try:
        meta = json.loads(path.read_bytes())
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    return meta


def _kind_of(value: Any, kind: str) -> bool:
    if kind == "text":
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) if kind == "int" else bool(np.isfinite(value))


def field_problem(meta: dict[str, Any], kinds: dict[str, str], *, required: bool) -> str | None:
    """Why a sidecar's fields do not have their JSON types, or None.

    ``kinds`` maps a field to "int", "number" (finite) or "text"; ``required``: a missing or null
    field is a problem too (an "ok" entry), else it is allowed (a failed entry has no sizes).
    """
    for name, kind in kinds.items():
        value = meta.get(name)
        if value is None and not required:
            continue
        if not _kind_of(value, kind):
            wanted = {"int": "an integer", "number": "a finite number", "text": "a string"}[kind]
            return f"field {name!r} is {value!r:.60}, not {wanted}"
    return None


def to_json(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=1, sort_keys=False) + "\n").encode("utf-8")


def atomic_write(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new one, never a part."""
    with atomic_file(path) as handle:
        handle.write(payload)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable on POSIX; directories cannot be opened this way on Windows.
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def entry_problem(image_id: str, meta: dict[str, Any], kinds: dict[str, str]) -> str | None:
    """Why the sidecar of an "ok" entry cannot describe its maps (a field of ``kinds`` missing or of the
    wrong type, sizes that do not fit each other), or None."""
    problem = field_problem(meta, kinds, required=True)
    if problem:
        return problem
    try:
        check_geometry(image_id, (meta["seg_height"], meta["seg_width"]),
                       (meta["original_height"], meta["original_width"]), meta["scale"])
    except CacheError as exc:
        return str(exc)
    return None
