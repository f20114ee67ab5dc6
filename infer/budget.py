"""The time budget of a scoring run: projected finish vs deadline, and the work shed to meet it.

:class:`TimeBudget` holds the deadline; :func:`degrade` sheds one step of work (TTA to ``none`` for
every model first, then half the models, at least one kept); :func:`log_eta` is the periodic
progress line. Used by :func:`infer.predict.predict_images`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .ensemble import ScoringModel

__all__ = ["TimeBudget", "degrade", "log_eta"]

log = logging.getLogger("infer.predict")  # the scoring run's one logger, as before the split


@dataclass
class TimeBudget:
    """A deadline for the scoring loop; past the projected finish, the loop sheds work.

    ``seconds`` from ``start`` (``time.monotonic()``); :meth:`over` says whether ``done`` of ``total``
    images at the observed rate would end after the deadline (with ``margin``).
    """

    seconds: float
    start: float = field(default_factory=time.monotonic)
    margin: float = 0.95

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    def eta(self, done: int, total: int, elapsed: float) -> float:
        return (elapsed / max(done, 1)) * max(total - done, 0)

    def over(self, done: int, total: int, elapsed: float) -> bool:
        return done > 0 and self.eta(done, total, elapsed) > self.margin * self.left()


def degrade(models: list[ScoringModel]) -> str | None:
    """One step of shedding work: TTA to 'none' first, then half the models (at least one kept)."""
    if any(m.tta != "none" for m in models):
        for m in models:
            m.tta = "none"
        return "TTA switched to 'none' for every model"
    if len(models) > 1:
        dropped = models[(len(models) + 1) // 2:]
        del models[(len(models) + 1) // 2:]
        return f"dropped {len(dropped)} model(s): {', '.join(m.name for m in dropped)}"
    return None


def log_eta(done: int, total: int, elapsed: float, budget: TimeBudget | None) -> None:
    """Log ``done`` of ``total`` images after ``elapsed`` seconds, the ETA and the budget left."""
    eta = (elapsed / max(done, 1)) * (total - done)
    left = f", {budget.left() / 3600:.2f} h of the time budget left" if budget is not None else ""
    log.info("scored %d/%d images in %.0f s; ETA %.0f s%s", done, total, elapsed, eta, left)
