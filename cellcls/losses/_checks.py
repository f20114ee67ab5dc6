"""Validate loss inputs once, up front; name both shapes and the fix in every error."""
from __future__ import annotations

import math

import torch

from ..errors import LossError

__all__ = ["check_multilabel", "check_arcface", "check_number"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_multilabel(
    loss: str, logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check (logits, targets) of a multilabel loss and bring them to one floating dtype.

    Parameters
    ----------
    loss : str
        The loss's registry name, for messages.
    logits : (N, C) floating tensor
        Raw scores (before the sigmoid). float16/bfloat16 are upcast to float32.
    targets : (N, C) floating or bool tensor
        Labels in [0, 1] (values are not checked: that would cost a device sync per step).

    Returns
    -------
    logits, targets : (N, C) tensors of the same floating dtype (float32 or float64)

    Raises
    ------
    LossError
        Not tensors, logits not 2-D, shapes differ, logits not floating, targets integer.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
        raise LossError(
            f"{loss} loss: logits and targets must be torch tensors, got "
            f"{type(logits).__name__} and {type(targets).__name__}"
        )
    if logits.ndim != 2 or targets.shape != logits.shape:
        raise LossError(
            f"{loss} loss: logits have shape {_shape(logits)} and targets shape {_shape(targets)}; "
            "both must be (N, C) with the same N (samples) and C (classes)"
        )
    if not logits.is_floating_point():
        raise LossError(f"{loss} loss: logits must be a floating tensor, got {logits.dtype} of shape {_shape(logits)}")
    if not (targets.is_floating_point() or targets.dtype == torch.bool):
        raise LossError(
            f"{loss} loss: targets must be floating (or bool) multi-hot labels of shape {_shape(logits)}, got "
            f"{targets.dtype} of shape {_shape(targets)}; convert them with targets.float()"
        )
    if logits.dtype in _LOW_PRECISION:
        logits = logits.float()
    return logits, targets.to(logits.dtype)


def check_arcface(loss: str, cosines: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check (cosines, labels) of a margin loss.

    Parameters
    ----------
    cosines : (N, K) floating tensor
        Cosine similarities in [-1, 1] between normalised embeddings and normalised class weights.
    labels : (N,) integer tensor
        Class indices in [0, K) (the range is checked by the one-hot encoding, not here).

    Returns
    -------
    cosines : (N, K) float32/float64 tensor; labels : (N,) int64 tensor

    Raises
    ------
    LossError
        Not tensors, wrong shapes, cosines not floating, labels not integer.
    """
    if not isinstance(cosines, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise LossError(
            f"{loss} loss: cosines and labels must be torch tensors, got "
            f"{type(cosines).__name__} and {type(labels).__name__}"
        )
    if cosines.ndim != 2 or labels.ndim != 1 or labels.shape[0] != cosines.shape[0]:
        raise LossError(
            f"{loss} loss: cosines have shape {_shape(cosines)} and labels shape {_shape(labels)}; "
            "expected cosines (N, K) and labels (N,) with the same N (one class index per sample)"
        )
    if not cosines.is_floating_point():
        raise LossError(f"{loss} loss: cosines must be a floating tensor, got {cosines.dtype}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise LossError(
            f"{loss} loss: labels must be integer class indices of shape ({cosines.shape[0]},), got "
            f"{labels.dtype} of shape {_shape(labels)}; pass labels.long() (not one-hot rows)"
        )
    if cosines.dtype in _LOW_PRECISION:
        cosines = cosines.float()
    return cosines, labels.long()


def check_number(loss: str, option: str, value: object, *, low: float, high: float = math.inf,
                 low_inclusive: bool = True) -> float:
    """``value`` as a float within [low, high] (or (low, high]); raise LossError naming the option otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LossError(f"{loss} loss: option {option} must be a number, got {value!r}")
    x = float(value)
    ok_low = x >= low if low_inclusive else x > low
    if not (ok_low and x <= high and math.isfinite(x)):
        bracket = "[" if low_inclusive else "("
        raise LossError(f"{loss} loss: option {option}={value!r} is outside {bracket}{low}, {high}]")
    return x
