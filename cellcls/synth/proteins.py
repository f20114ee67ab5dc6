"""Proteins (antibody groups), their pattern sets, and which cells show what.

A :class:`Protein` is what HPA images of one antibody share: a set of 1-3 location
classes (drawn with frequencies shaped like the real train counts), a brightness style
and a heterogeneity level. Each image then draws which of its cells show which of the
protein's classes: a share of cells lack some or all of them (cell-to-cell variation),
and the image-level label is the union over cells, so image labels are weak.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..classes import CLASSES, NEGATIVE, NUM_CLASSES
from .patterns import NUCLEAR_CLASSES
from .render import Acquisition, GreenStyle

__all__ = [
    "MITOTIC_SPINDLE",
    "Protein",
    "class_weights",
    "draw_pattern_set",
    "draw_protein",
    "assign_cell_labels",
    "draw_acquisition",
    "validate_labels",
]

MITOTIC_SPINDLE = 11
#: Exponent flattening the real class counts: rare classes stay rare but still occur in small worlds.
_FREQ_EXPONENT = 0.75
_N_CLASSES_P = (0.45, 0.40, 0.15)  # proteins with 1, 2, 3 locations


def class_weights() -> np.ndarray:
    """Draw probability of each class as a protein's location, shaped like the real train counts."""
    w = np.array([c.train_images for c in CLASSES], np.float64) ** _FREQ_EXPONENT
    return w / w.sum()


@dataclass(frozen=True)
class Protein:
    """One antibody group: its locations and how it looks."""

    group: str
    pattern_set: tuple[int, ...]
    green_gain: float  # fraction of full scale reached by a typical cell's brightest pattern
    heterogeneity: float  # share of cells that deviate from the full pattern set
    style: GreenStyle
    alternate: int | None = None  # a location some deviating cells show instead (None: they only lose classes)


def validate_labels(labels: Sequence[int]) -> tuple[int, ...]:
    """Check a pattern set: known class ids, no duplicates, Negative only alone; returns it sorted."""
    out = tuple(sorted({int(c) for c in labels}))
    if not out:
        raise ValueError("labels must name at least one class id (use (18,) for Negative)")
    bad = [c for c in out if not 0 <= c < NUM_CLASSES]
    if bad:
        raise ValueError(f"unknown class ids {bad}: class ids are 0..{NUM_CLASSES - 1}")
    if NEGATIVE in out and len(out) > 1:
        raise ValueError(f"Negative ({NEGATIVE}) cannot be combined with other classes, got {out}")
    return out


def draw_pattern_set(rng: np.random.Generator) -> tuple[int, ...]:
    """1-3 location classes; Negative only ever alone."""
    p = class_weights()
    k = int(rng.choice(3, p=_N_CLASSES_P)) + 1
    first = int(rng.choice(NUM_CLASSES, p=p))
    if first == NEGATIVE:
        return (NEGATIVE,)
    chosen = [first]
    p = p.copy()
    p[NEGATIVE] = 0.0
    while len(chosen) < k:
        p[chosen] = 0.0
        chosen.append(int(rng.choice(NUM_CLASSES, p=p / p.sum())))
    return tuple(sorted(chosen))


def draw_protein(rng: np.random.Generator, group: str, pattern_set: Sequence[int] | None = None) -> Protein:
    """A protein with a drawn (or given) pattern set and style.

    A drawn protein has, a third of the time, an alternate location that some deviating cells
    show; a protein with a given pattern set has none, so its cells show only those classes
    (or Negative).
    """
    alternate = None
    if pattern_set is None:
        ps = draw_pattern_set(rng)
        if ps != (NEGATIVE,) and rng.random() < 0.35:
            p = class_weights()
            p[list(ps) + [NEGATIVE, MITOTIC_SPINDLE]] = 0.0
            alternate = int(rng.choice(NUM_CLASSES, p=p / p.sum()))
    else:
        ps = validate_labels(pattern_set)
    weights = np.ones(NUM_CLASSES)
    shown = list(ps) + ([alternate] if alternate is not None else [])
    weights[shown] = rng.uniform(0.45, 1.0, len(shown))
    style = GreenStyle(
        class_weight=tuple(float(x) for x in weights),
        expression_sd=float(rng.uniform(0.2, 0.55)),
        nonspecific=float(rng.uniform(0.03, 0.12)),
    )
    # brightness: mostly well exposed, a tail of dim stainings
    gain = float(math.exp(rng.uniform(math.log(0.12), math.log(0.85))))
    return Protein(
        group=group,
        pattern_set=ps,
        green_gain=gain,
        heterogeneity=float(rng.uniform(0.1, 0.4)),
        style=style,
        alternate=alternate,
    )


def assign_cell_labels(
    rng: np.random.Generator,
    pattern_set: Sequence[int],
    dividing: Sequence[bool],
    *,
    heterogeneity: float,
    alternate: int | None = None,
) -> list[tuple[int, ...]]:
    """The classes each cell really shows.

    Interphase cells show the pattern set minus the mitotic spindle; a share
    ``heterogeneity`` of them drop one or more classes, and a third of those show the
    ``alternate`` class instead when there is one. Dividing cells lose nuclear
    classes (the envelope breaks down) and show the spindle when the protein has it.
    A cell showing nothing is Negative (18). Every class of the set is shown by at least
    one cell that can show it, so the union over cells is the set whenever the image has
    such a cell.
    """
    ps = tuple(sorted(set(int(c) for c in pattern_set)))
    n = len(dividing)
    out: list[list[int]] = []
    for div in dividing:
        if ps == (NEGATIVE,):
            out.append([NEGATIVE])
            continue
        if div:
            shown = [c for c in ps if c not in NUCLEAR_CLASSES]
        else:
            shown = [c for c in ps if c != MITOTIC_SPINDLE]
        if shown and rng.random() < heterogeneity:
            drop = rng.random(len(shown)) < 0.6
            if not drop.any():
                drop[int(rng.integers(len(shown)))] = True
            if div and MITOTIC_SPINDLE in shown:  # a dividing cell keeps its spindle
                drop[shown.index(MITOTIC_SPINDLE)] = False
            shown = [c for c, d in zip(shown, drop) if not d]
            can_show_alt = alternate is not None and not (div and alternate in NUCLEAR_CLASSES)
            if can_show_alt and rng.random() < 1 / 3:
                shown.append(int(alternate))
        out.append(shown)
    # make sure each class is shown somewhere it can be
    for c in ps:
        if c == NEGATIVE or any(c in s for s in out):
            continue
        able = [i for i, d in enumerate(dividing) if (d if c == MITOTIC_SPINDLE else not (d and c in NUCLEAR_CLASSES))]
        if able:
            out[int(rng.choice(able))].append(c)
    return [tuple(sorted(s)) if s else (NEGATIVE,) for s in out][:n]


def draw_acquisition(rng: np.random.Generator, protein: Protein, *, image_jitter: float = 0.25) -> Acquisition:
    """Microscope settings of one image of ``protein``: marker gains, offsets, noise."""
    green = protein.green_gain * math.exp(rng.normal(0, image_jitter))
    gain = (
        float(rng.uniform(0.35, 0.7)),
        float(min(green, 1.2)),
        float(rng.uniform(0.45, 0.8)),
        float(rng.uniform(0.35, 0.7)),
    )
    offset = tuple(float(x) for x in rng.uniform(0.004, 0.03, 4))
    photons = float(math.exp(rng.uniform(math.log(250), math.log(3000))))
    return Acquisition(gain=gain, offset=offset, photons=photons, read_noise=float(rng.uniform(0.001, 0.006)))
