"""Identity of mask-cache entries: parameter sets, ``mask_key``, and the messages that name them.

Pure functions, no disk access; :mod:`cellcls.masks.cache` feeds them sidecar contents.

A *parameter set* is every "ok" entry of a cache written under one ``params_hash``. The human-
readable ``params`` recorded with the entries (the backend's key ingredients, e.g. ``scale``,
``image_scale``, weights checksums) are what the messages show, so a user reads "scale 0.5 vs
scale 1", not two hex digests.
"""
from __future__ import annotations

__all__ = [
    "ParameterSet",
    "describe_parameter_set",
    "differing_keys",
    "readable_differences",
    "labels_digest",
    "make_mask_key",
    "mixed_cache_message",
]

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

# Shown for every parameter set; other keys only where two sets differ.
_HEADLINE_KEYS = ("backend", "scale", "image_scale")
_HEX = re.compile(r"[0-9a-f]{16,}")
_SHORT = 12


@dataclass(frozen=True)
class ParameterSet:
    """The "ok" entries of one cache written under one ``params_hash``.

    Attributes
    ----------
    params_hash : str
        The cache key of the entries.
    backend : str
        Segmentation backend name recorded in the sidecars.
    scale : float
        Segmentation scale of the entries (h ~= H * scale).
    params : dict
        Human-readable parameters the key was built from (``{}`` for entries written without them).
    ids : tuple of str
        Sorted image IDs of the entries.
    """

    params_hash: str
    backend: str
    scale: float
    params: dict[str, Any] = field(default_factory=dict)
    ids: tuple[str, ...] = ()

    @property
    def n_entries(self) -> int:
        return len(self.ids)

    def flat(self) -> dict[str, Any]:
        """``{"backend", "scale", **params}`` flattened to dotted keys (``weights_sha256.cell``)."""
        merged = {"backend": self.backend, "scale": self.scale, **self.params}
        return _flatten(merged)


def describe_parameter_set(pset: ParameterSet, *, also: Sequence[str] = ()) -> str:
    """One line: ``backend classical, scale 0.5, image_scale 0.25 (params_hash 1a2b3c4d5e6f)``.

    ``also``: further dotted keys to show (typically those that differ from another set).
    """
    flat = pset.flat()
    keys = [k for k in _HEADLINE_KEYS if k in flat] + [k for k in also if k not in _HEADLINE_KEYS]
    shown = ", ".join(f"{key} {_format_value(flat.get(key, '(not recorded)'))}" for key in keys)
    return f"{shown} (params_hash {pset.params_hash[:_SHORT]})"


def differing_keys(sets: Sequence[ParameterSet]) -> list[str]:
    """Dotted keys whose value is not the same in every set (a key absent from one set differs)."""
    flats = [s.flat() for s in sets]
    keys = sorted(set().union(*flats))
    missing = object()
    return [k for k in keys if len({json.dumps(f.get(k, missing), sort_keys=True, default=repr) for f in flats}) > 1]


def readable_differences(sets: Sequence[ParameterSet]) -> list[str]:
    """:func:`differing_keys`, without digest-valued keys (``label_params``) when a readable one differs.

    A scale change also changes the digest of the scaled labelling parameters; "scale" says it.
    """
    differ = differing_keys(sets)
    flats = [s.flat() for s in sets]
    readable = [k for k in differ if not all(isinstance(f.get(k), str) and _HEX.fullmatch(f[k]) for f in flats)]
    return readable or differ


def mixed_cache_message(root: Path | str, sets: Sequence[ParameterSet]) -> str:
    """The CacheError text for a cache whose "ok" entries come from more than one parameter set."""
    differ = readable_differences(sets)
    parts = [f"{s.n_entries} entr{'y' if s.n_entries == 1 else 'ies'} with {describe_parameter_set(s, also=differ)}"
             for s in sets]
    what = (f"they differ in {', '.join(differ)}" if differ
            else "they differ in parameters the sidecars do not record")
    return (f"mask cache {root} mixes {len(sets)} parameter sets: {'; and '.join(parts)}; {what}. "
            f"Re-run `cellcls segment --out {root} --overwrite` with the wanted parameters, "
            "or keep one folder per parameter set")


def labels_digest(cells: np.ndarray, nuclei: np.ndarray) -> str:
    """SHA-256 hex digest of two same-shaped label maps: dtype, shape and C-order bytes.

    Depends on the label values only, not on how the file was compressed or when it was written.
    """
    digest = hashlib.sha256()
    for array in (cells, nuclei):
        digest.update(f"{array.dtype.str}{array.shape}".encode("ascii"))
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def make_mask_key(params_hash: str, labels_sha256: str) -> str:
    """``"{12 hex of sha256(params_hash)}-{12 hex of labels_sha256}"``: the identity of one entry.

    The first part is the same for every entry of a parameter set (it is a digest, because the
    cache treats ``params_hash`` as an opaque string); the second changes with the label maps.
    """
    params_part = hashlib.sha256(params_hash.encode("utf-8")).hexdigest()[:_SHORT]
    return f"{params_part}-{labels_sha256[:_SHORT]}"


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f"{value[:_SHORT]}..." if _HEX.fullmatch(value) else value
    if isinstance(value, (list, tuple)):
        return json.dumps(value)
    return str(value)
