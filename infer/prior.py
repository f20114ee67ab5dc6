"""The prior baseline: every segmented cell gets the training set's class frequencies.

It is the floor any model must beat: no image is looked at, so its mAP measures only what the
segmentation and the class balance give for free. It also exercises the whole submission path
(mask cache -> RLE at the original size -> sample order -> valid CSV).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cellcls.labels import LabelTable
from cellcls.masks import MaskCache
from cellcls.submission import SubmissionWriter, read_sample_submission

__all__ = ["class_prior", "write_prior_submission"]

log = logging.getLogger(__name__)


def class_prior(table: LabelTable) -> np.ndarray:
    """Fraction of training images carrying each class, float64 (19,) in [0, 1]."""
    if len(table) == 0:
        raise ValueError("the label table is empty: cannot estimate class frequencies")
    return table.targets.astype(np.float64).mean(axis=0)


def write_prior_submission(
    masks_dir: str | Path,
    sample_path: str | Path,
    prior: np.ndarray,
    out_path: str | Path,
    *,
    params_hash: str | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Write a submission giving every cached cell the confidences ``prior`` (19,).

    The masks come from ONE parameter set of the cache (``params_hash``, or the only one the
    cache holds: a cache mixing parameter sets raises CacheError naming them). Images of the
    sample without a cache entry get an empty prediction string (and are counted in the returned
    ``missing``); the writer keeps sample order and sizes.
    """
    cache = MaskCache(masks_dir).reader(params_hash=params_hash)
    log.info("masks: %d entries of %s, %s", len(cache), masks_dir, cache.describe())
    sample = read_sample_submission(sample_path)
    usable = set(cache.ids())
    counts = {"images": len(sample), "cells": 0, "missing": 0}
    with SubmissionWriter(out_path, sample) as writer:
        for row in tqdm(sample, desc="prior submission", unit="img", disable=not progress):
            if row.id not in usable:
                counts["missing"] += 1
                continue
            cells = cache.read(row.id).cells  # raises CacheError naming the ID if the file broke
            n_cells = int(np.count_nonzero(np.unique(cells)))
            writer.add(row.id, cells, np.tile(prior, (n_cells, 1)))
            counts["cells"] += n_cells
    if counts["missing"]:
        log.warning("%d of %d sample images have no usable mask-cache entry in %s; their rows get the empty placeholder",
                    counts["missing"], counts["images"], masks_dir)
    return counts

