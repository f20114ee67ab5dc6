"""Cell masks, the core vocabulary every stage shares.

- ``cache``: the on-disk mask cache, one entry per image ID, one parameter set per cache
  (:class:`MaskCache` writes and checks entries; :meth:`MaskCache.reader` opens one parameter set
  for reading and refuses a mixed folder); each entry has a ``mask_key`` that everything derived
  from it records.
"""
from __future__ import annotations

from .cache import CACHE_VERSION, MANIFEST_COLUMNS, STATUSES, CacheEntry, MaskCache, make_mask_key, upscale_labels
from ._identity import ParameterSet
from .reader import CacheReader

__all__ = [
    "CACHE_VERSION",
    "MANIFEST_COLUMNS",
    "STATUSES",
    "CacheEntry",
    "CacheReader",
    "MaskCache",
    "ParameterSet",
    "make_mask_key",
    "upscale_labels",
]
