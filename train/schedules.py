"""Learning-rate schedules as epoch-fraction multipliers of the base learning rate.

Each schedule is a picklable callable ``factor(epoch: float) -> float`` (``epoch`` counts optimizer
steps / steps per epoch, so 2.5 = half-way through the third epoch); the module wraps it in a
``LambdaLR`` stepped every optimizer step.

``cosine``          linear warm-up over ``warmup_epochs``, then half a cosine from 1 to ``min_lr / lr``
                    at ``max_epochs``.
``step``            piecewise constant: ``step_lrs[i]`` (absolute) for ``step_epochs[i]`` epochs, the
                    last value after the end.
``bestfitting2019`` the 2019 winner's Adam steps: [30, 15, 7.5, 3, 1] x 1e-5 for [25, 5, 5, 5, 5] epochs
                    (45 in all; ``--trainer.max_epochs 45``).
``constant``        the base learning rate throughout (after the warm-up).
"""
from __future__ import annotations

import math
from typing import Sequence

from cellcls.errors import CellclsError
from cellcls.registry import Registry

__all__ = ["SCHEDULES", "BESTFITTING2019_STEPS", "make_schedule"]

SCHEDULES: Registry = Registry("learning-rate schedule")

#: (epochs, learning rate) of the 2019 winner's ``Adam45`` schedule (seed 003)
BESTFITTING2019_STEPS: tuple[tuple[float, float], ...] = (
    (25, 30e-5), (5, 15e-5), (5, 7.5e-5), (5, 3e-5), (5, 1e-5),
)


class _Warmup:
    def __init__(self, warmup_epochs: float) -> None:
        self.warmup_epochs = float(warmup_epochs)

    def warm(self, epoch: float) -> float:
        if self.warmup_epochs <= 0 or epoch >= self.warmup_epochs:
            return 1.0
        return (epoch + 1e-3) / self.warmup_epochs


class Cosine(_Warmup):
    def __init__(self, *, max_epochs: float, warmup_epochs: float = 0.0, floor: float = 0.0) -> None:
        super().__init__(warmup_epochs)
        self.max_epochs = float(max_epochs)
        self.floor = float(floor)

    def __call__(self, epoch: float) -> float:
        span = max(self.max_epochs - self.warmup_epochs, 1e-9)
        t = min(max(epoch - self.warmup_epochs, 0.0) / span, 1.0)
        return self.warm(epoch) * (self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * t)))


class Steps(_Warmup):
    def __init__(self, *, epochs: Sequence[float], factors: Sequence[float], warmup_epochs: float = 0.0) -> None:
        super().__init__(warmup_epochs)
        self.ends = [float(sum(epochs[: i + 1])) for i in range(len(epochs))]
        self.factors = [float(f) for f in factors]

    def __call__(self, epoch: float) -> float:
        for end, factor in zip(self.ends, self.factors):
            if epoch < end:
                return self.warm(epoch) * factor
        return self.warm(epoch) * self.factors[-1]


class Constant(_Warmup):
    def __call__(self, epoch: float) -> float:
        return self.warm(epoch)


def _steps(lr: float, epochs: Sequence[float] | None, lrs: Sequence[float] | None, warmup: float) -> Steps:
    if not epochs or not lrs or len(epochs) != len(lrs):
        raise CellclsError(f"the 'step' schedule needs step_epochs and step_lrs of equal, non-zero length; got "
                           f"step_epochs={epochs} and step_lrs={lrs} (e.g. step_epochs: [25, 5, 5], "
                           "step_lrs: [3.0e-4, 1.5e-4, 7.5e-5])")
    return Steps(epochs=epochs, factors=[v / lr for v in lrs], warmup_epochs=warmup)


SCHEDULES.add("cosine", lambda lr, o: Cosine(max_epochs=o["max_epochs"], warmup_epochs=o["warmup_epochs"],
                                             floor=o["min_lr"] / lr))
SCHEDULES.add("step", lambda lr, o: _steps(lr, o["step_epochs"], o["step_lrs"], o["warmup_epochs"]))
SCHEDULES.add("bestfitting2019", lambda lr, o: _steps(lr, [e for e, _ in BESTFITTING2019_STEPS],
                                                      [v for _, v in BESTFITTING2019_STEPS], o["warmup_epochs"]))
SCHEDULES.add("constant", lambda lr, o: Constant(o["warmup_epochs"]))


def make_schedule(name: str, *, lr: float, max_epochs: float, warmup_epochs: float = 0.0, min_lr: float = 0.0,
                  step_epochs: Sequence[float] | None = None, step_lrs: Sequence[float] | None = None):
    """The multiplier ``factor(epoch)`` of schedule ``name`` (see the module docstring).

    Raises RegistryError (unknown name, listing the valid ones) or CellclsError (bad step lists).
    """
    options = dict(max_epochs=max_epochs, warmup_epochs=warmup_epochs, min_lr=min_lr, step_epochs=step_epochs,
                   step_lrs=step_lrs)
    return SCHEDULES.get(name)(lr, options)
