"""Cell segmentation of HPA images into a mask cache (the ``cellcls segment`` stage).

Modules, by concern:

- ``network``: the HPA-Cell-Segmentation DPNUnet; ``weights``: finding and safely loading its files;
- ``predict``: batched network inference (normalise, pad, autocast, TTA) -> uint8 probability maps;
- ``labelling``: hpacellseg's ``label_cell`` as pure functions; ``classical``: a weight-free fallback;
- ``backends``: the registry ("hpa", "classical") and the ``auto`` choice; ``scales``: ``--scale auto``
  and the end-of-run check of the cells found against HPA's sizes;
- ``pipeline``: a run (DataLoader decode, progress, failures) into ``cellcls.masks.MaskCache``;
- ``lightning``: the same run on many GPUs/nodes; ``command``: ``cellcls segment`` / ``python -m segment``.

Importing ``segment`` is cheap: the names below load their modules (and torch) on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MaskCache", "build_backend", "resolve_backend", "run_segmentation"]

_LAZY = {
    "MaskCache": "cellcls.masks",
    "build_backend": "segment.backends",
    "resolve_backend": "segment.backends",
    "run_segmentation": "segment.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segment' has no attribute {name!r}")
