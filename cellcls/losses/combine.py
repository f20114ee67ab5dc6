"""Weighted sums of losses: the ``sum`` loss of a config, and the 2019 winner's ``bestfitting2019``."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import LossError
from ._checks import check_number
from ._factory import create_loss
from ._registry import LOSSES
from .multilabel import FocalLoss, HardLogLoss, SymmetricLovaszLoss

__all__ = ["BESTFITTING2019_WEIGHTS", "WeightedSum", "weighted_sum", "bestfitting2019"]

#: total = 0.5 focal + 0.5 symmetric Lovasz + 0.5 hard log loss (the 2019 winner's training loss).
BESTFITTING2019_WEIGHTS = {"focal": 0.5, "lovasz": 0.5, "hard_log": 0.5}


class WeightedSum(nn.Module):
    """sum_i w_i * loss_i(*inputs); ``components`` gives each unweighted loss_i (for logging).

    Parameters
    ----------
    terms : mapping of name -> nn.Module
    weights : mapping of name -> float, same keys
    """

    def __init__(self, terms: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        if not terms or set(terms) != set(weights):
            raise LossError(f"sum loss: needs at least one term and one weight per term, got terms "
                            f"{sorted(terms)} and weights {sorted(weights)}")
        self.terms = nn.ModuleDict(dict(terms))
        self.weights = {key: float(weights[key]) for key in terms}

    def components(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's unweighted () loss, by name, in the order given."""
        return {key: term(*inputs) for key, term in self.terms.items()}

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = self.components(*inputs)
        total = None
        for key, value in parts.items():
            weighted = self.weights[key] * value
            total = weighted if total is None else total + weighted
        return total

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{key}: {w:g}" for key, w in self.weights.items())


def _term(name: str, spec: Any) -> tuple[float, dict[str, Any]]:
    """(weight, options) of one ``terms`` entry: a number, or a mapping with ``weight`` (default 1) and options."""
    if isinstance(spec, Mapping):
        options = dict(spec)
        weight = options.pop("weight", 1.0)
    else:
        weight, options = spec, {}
    return check_number("sum", f"terms.{name}.weight", weight, low=0.0), options


@LOSSES.register("sum")
def weighted_sum(*, terms: Mapping[str, Any]) -> WeightedSum:
    """``sum`` loss: ``terms`` maps a loss name to its weight, or to ``{weight: w, **options}``.

    Example: ``create_loss("sum", terms={"focal": {"weight": 1.0, "gamma": 1.0}, "bce": 0.5})``.
    """
    if not isinstance(terms, Mapping) or not terms:
        raise LossError(f"sum loss: terms must be a non-empty mapping of loss name -> weight, got {terms!r}")
    modules, weights = {}, {}
    for name, spec in terms.items():
        weights[name], options = _term(name, spec)
        modules[name] = create_loss(name, **options)
    return WeightedSum(modules, weights)


@LOSSES.register("bestfitting2019")
def bestfitting2019() -> WeightedSum:
    """The 2019 HPA winner's loss: 0.5 focal (gamma 2) + 0.5 symmetric Lovasz + 0.5 hard log loss."""
    modules = {"focal": FocalLoss(), "lovasz": SymmetricLovaszLoss(), "hard_log": HardLogLoss()}
    return WeightedSum(modules, BESTFITTING2019_WEIGHTS)
