"""Training losses, built by name from a config: ``create_loss(name, **options) -> torch.nn.Module``.

Multilabel losses take ``(logits (N, C) float, targets (N, C) float in [0, 1])`` and return a () tensor:

========================  ==========================================================================
name                      what (formulas in :mod:`cellcls.losses.multilabel`)
========================  ==========================================================================
``bce``                   torch's BCEWithLogitsLoss, mean over N x C; option ``pos_weight`` (C floats)
``focal``                 focal loss, summed over classes, mean over the batch; option ``gamma`` (2)
``lovasz``                symmetric Lovasz hinge, labels as pixels, per class, mean over classes
``hard_log``              BCE over positives + hardest negatives per class, mean over classes
``bestfitting2019``       0.5 focal + 0.5 lovasz + 0.5 hard_log (the 2019 HPA winner's loss)
``sum``                   weighted sum; option ``terms``: {name: weight} or {name: {weight, **options}}
========================  ==========================================================================

``arcface`` takes ``(cosines (N, K) float, labels (N,) int64)`` (metric learning; options ``s`` 30,
``m`` 0.5, ``easy_margin``, ``plain_weight``, ``scale_plain``; see :mod:`cellcls.losses.arcface`).

Configs
-------
A YAML/JSON config names a loss and its options in one mapping; the trainer calls
``create_loss(**config)`` (or, the same, ``create_loss(config)``)::

    loss: {name: focal, gamma: 2}
    loss: {name: bestfitting2019}
    loss: {name: sum, terms: {focal: 1.0, bce: 0.5}}
    loss: {name: sum, terms: {focal: {weight: 1.0, gamma: 1.0}, lovasz: 0.5}}
    loss: {name: arcface, s: 30, m: 0.5}

A mapping without ``name`` is the terms of a sum: ``create_loss({"focal": 1.0, "lovasz": 0.5})`` ==
``create_loss("sum", terms={"focal": 1.0, "lovasz": 0.5})``. A sum's ``components(logits, targets)``
returns each unweighted term, for logging. Unknown names raise :class:`~cellcls.errors.RegistryError`
listing the valid ones; unknown options, bad values and tensors of the wrong shape or dtype raise
:class:`~cellcls.errors.LossError`. float16/bfloat16 inputs are computed in float32. Every loss
gives 0 (attached to the graph) for an empty batch.

Examples
--------
>>> import torch
>>> loss = create_loss("sum", terms={"focal": 1.0, "lovasz": 0.5})
>>> logits, targets = torch.zeros(4, 19, requires_grad=True), torch.zeros(4, 19)
>>> loss(logits, targets).backward()
"""
from __future__ import annotations

from ._factory import create_loss, loss_names
from ._registry import LOSSES
from .arcface import ArcFaceLoss, arcface_logits
from .combine import BESTFITTING2019_WEIGHTS, WeightedSum
from .multilabel import (
    FOCAL_GAMMA,
    BCELoss,
    FocalLoss,
    HardLogLoss,
    SymmetricLovaszLoss,
    focal_loss,
    hard_log_loss,
    hard_negative_count,
    symmetric_lovasz_hinge,
)

__all__ = [
    "LOSSES",
    "create_loss",
    "loss_names",
    "BCELoss",
    "FocalLoss",
    "SymmetricLovaszLoss",
    "HardLogLoss",
    "WeightedSum",
    "ArcFaceLoss",
    "BESTFITTING2019_WEIGHTS",
    "FOCAL_GAMMA",
    "arcface_logits",
    "focal_loss",
    "hard_log_loss",
    "hard_negative_count",
    "symmetric_lovasz_hinge",
]
