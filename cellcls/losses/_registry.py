"""The loss registry: name -> factory (a class or function taking keyword options, returning an nn.Module)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry

__all__ = ["LOSSES"]

LOSSES: Registry[Callable[..., nn.Module]] = Registry("loss")
