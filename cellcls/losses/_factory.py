"""create_loss: a name (or a config mapping) and keyword options -> an nn.Module."""
from __future__ import annotations

import inspect
from typing import Any, Mapping

from torch import nn

from ..errors import LossError
from ._registry import LOSSES

__all__ = ["create_loss", "loss_names"]


def _accepted_options(factory: Any) -> list[str] | None:
    """Keyword options a factory takes; None when it takes any (``**kwargs``)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in named]


def create_loss(name: str | Mapping[str, Any], **options: Any) -> nn.Module:
    """Build a registered loss.

    Parameters
    ----------
    name : str or mapping
        A registered name (``loss_names()``); or a config mapping: with a ``"name"`` key it is
        ``{"name": ..., **options}``; without one it is the ``terms`` of a weighted ``sum``.
    **options
        Keyword options of that loss (e.g. ``gamma`` for ``focal``, ``terms`` for ``sum``).

    Returns
    -------
    torch.nn.Module
        Called as ``loss(logits, targets)`` (``arcface``: ``loss(cosines, labels)``), returns a () tensor.

    Raises
    ------
    RegistryError
        Unknown name; the message lists the valid ones.
    LossError
        An option the loss does not take (the message lists those it takes), or a bad value.
    """
    if isinstance(name, Mapping):
        config = dict(name)
        if "name" not in config:
            if options:
                raise LossError(f"create_loss: got a terms mapping {config!r} and options {sorted(options)}; "
                                "give the terms either as the mapping or as terms=..., not both")
            return create_loss("sum", terms=config)
        clash = sorted(set(config) & set(options))
        if clash:
            raise LossError(f"create_loss: option(s) {clash} given both in the config mapping and as keywords")
        return create_loss(config.pop("name"), **config, **options)
    if not isinstance(name, str):
        raise LossError(f"create_loss: a loss name must be a string or a mapping, got {name!r}")
    factory = LOSSES.get(name)
    accepted = _accepted_options(factory)
    if accepted is not None:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            takes = ", ".join(accepted) if accepted else "no options"
            raise LossError(f"{name} loss: unknown option(s) {', '.join(unknown)}; it takes: {takes}")
    return factory(**options)


def loss_names() -> list[str]:
    """Every registered loss name, sorted."""
    return LOSSES.names()
