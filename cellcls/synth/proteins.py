"""Proteins (antibody groups), their pattern sets, and which cells show what.

A :class:`Protein` is what HPA images of one antibody share: a set of 1-3 location
classes (drawn with frequencies shaped like the real train counts) and a brightness style.
Each image then draws, per class, the share of its cells that show it (:data:`CELL_SHARE`,
class-dependent as in real HPA: spindle only in dividing cells, aggresome in a minority,
cytosol in most), a share of non-expressing cells (cell truth Negative), and which cells show
what; cells of a multi-location protein show different subsets. The image-level label is the
union over cells, so image labels are weak.
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
    "CELL_SHARE",
    "NON_EXPRESSING_SHARE",
    "ALTERNATE_SHARE",
    "ImageShares",
    "draw_image_shares",
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

#: Share of a positive image's cells that show each class, as a (low, high) range from which
#: every image draws its own value. Real HPA heterogeneity is strong and class-dependent: the
#: mitotic spindle is seen only in the few dividing cells, aggresomes and centrosome staining in
#: a minority, nuclear bodies and vesicles vary, diffuse nucleoplasm/cytosol/ER/mitochondria in
#: most cells. The share counts expressing cells able to show the class (dividing cells cannot
#: show nuclear classes). For the spindle it is the share of dividing cells in the image.
#: This table is what makes copying image labels to all cells score badly (see
#: :mod:`cellcls.synth.difficulty`); calibrate against that, not by eye.
CELL_SHARE: dict[int, tuple[float, float]] = {
    0: (0.45, 0.9),  # nucleoplasm
    1: (0.35, 0.8),  # nuclear membrane
    2: (0.35, 0.85),  # nucleoli
    3: (0.25, 0.7),  # nucleoli fibrillar center
    4: (0.35, 0.8),  # nuclear speckles
    5: (0.2, 0.6),  # nuclear bodies
    6: (0.45, 0.9),  # endoplasmic reticulum
    7: (0.35, 0.8),  # golgi apparatus
    8: (0.3, 0.75),  # intermediate filaments
    9: (0.35, 0.8),  # actin filaments
    10: (0.35, 0.8),  # microtubules
    11: (0.02, 0.10),  # mitotic spindle: only the dividing cells
    12: (0.3, 0.6),  # centrosome
    13: (0.4, 0.85),  # plasma membrane
    14: (0.45, 0.9),  # mitochondria
    15: (0.15, 0.4),  # aggresome
    16: (0.45, 0.9),  # cytosol
    17: (0.2, 0.6),  # vesicles and punctate cytosolic patterns
}
#: Share of a positive image's cells expressing too little protein to be called (cell truth
#: Negative), drawn per image: most images have a few, some many.
NON_EXPRESSING_SHARE = (0.0, 0.3)
#: Share of the expressing cells that show a protein's alternate location, drawn per image.
ALTERNATE_SHARE = (0.05, 0.2)


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
    style: GreenStyle
    alternate: int | None = None  # a location a few cells show besides or instead of the set (None: none)


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


def draw_pattern_set(rng: np.random.Generator, *, weights: np.ndarray | None = None) -> tuple[int, ...]:
    """1-3 location classes; Negative only ever alone.

    ``weights`` : (19,) float64 draw probabilities of the classes (summing to 1); None =
    :func:`class_weights` (the real train counts ** 0.75).
    """
    p = class_weights() if weights is None else np.array(weights, np.float64)
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


def draw_protein(
    rng: np.random.Generator, group: str, pattern_set: Sequence[int] | None = None, *, weights: np.ndarray | None = None
) -> Protein:
    """A protein with a drawn (or given) pattern set and style.

    A drawn protein has, a third of the time, an alternate location that a few cells
    show; a protein with a given pattern set has none, so its cells show only those classes
    (or Negative). ``weights`` (19,) are the class draw probabilities of the locations and the
    alternate (None = :func:`class_weights`).
    """
    alternate = None
    if pattern_set is None:
        ps = draw_pattern_set(rng, weights=weights)
        if ps != (NEGATIVE,) and rng.random() < 0.35:
            p = class_weights() if weights is None else np.array(weights, np.float64)
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
        style=style,
        alternate=alternate,
    )


@dataclass(frozen=True)
class ImageShares:
    """How heterogeneous one image of a protein is (all shares are fractions in [0, 1]).

    per_class : class id -> share of the expressing cells able to show it that do show it.
    non_expressing : share of cells expressing too little protein to be called (Negative).
    alternate : share of expressing cells that show the protein's alternate location.
    """

    per_class: dict[int, float]
    non_expressing: float = 0.0
    alternate: float = 0.0


def draw_image_shares(
    rng: np.random.Generator, pattern_set: Sequence[int], *, non_expressing: tuple[float, float] | None = None
) -> ImageShares:
    """Draw one image's shares: each class's from its :data:`CELL_SHARE` range, plus the
    non-expressing and alternate (:data:`ALTERNATE_SHARE`) shares.

    ``non_expressing`` : (low, high) range of the non-expressing (Negative) cell share, fractions
    in [0, 1]; None = :data:`NON_EXPRESSING_SHARE`.
    """
    per_class = {int(c): float(rng.uniform(*CELL_SHARE[c])) for c in pattern_set if c != NEGATIVE}
    lo, hi = NON_EXPRESSING_SHARE if non_expressing is None else (float(non_expressing[0]), float(non_expressing[1]))
    # most images have a few non-expressing cells, some many: a skewed draw over the range
    non_expressing = lo + (hi - lo) * float(rng.beta(1.0, 2.5))
    return ImageShares(per_class, non_expressing, float(rng.uniform(*ALTERNATE_SHARE)))


def _able(class_id: int, dividing: np.ndarray) -> np.ndarray:
    """Which cells can show ``class_id``: the spindle needs mitosis, nuclear classes need a nucleus."""
    if class_id == MITOTIC_SPINDLE:
        return dividing.copy()
    if class_id in NUCLEAR_CLASSES:
        return ~dividing
    return np.ones(dividing.shape, bool)


def assign_cell_labels(
    rng: np.random.Generator,
    pattern_set: Sequence[int],
    dividing: Sequence[bool],
    *,
    shares: ImageShares | None = None,
    alternate: int | None = None,
) -> list[tuple[int, ...]]:
    """The classes each cell really shows.

    A share ``shares.non_expressing`` of the cells express nothing callable. Each other cell
    shows each class ``c`` of the set independently with probability ``shares.per_class[c]``
    when it can (dividing cells lose the nuclear classes, the envelope having broken down, and
    all show the spindle when the protein has it; interphase cells never do), so cells of a
    multi-location protein show different subsets; a share ``shares.alternate`` of them also show
    the ``alternate`` class. ``shares=None`` means every expressing cell shows everything it can.
    A cell showing nothing is Negative (18). Every class of the set is shown by at least one
    cell that can show it, so the union over cells is the set whenever the image has such a cell.

    Returns
    -------
    list of sorted class-id tuples, one per cell, in the order of ``dividing``.
    """
    ps = tuple(sorted(set(int(c) for c in pattern_set)))
    dividing = np.asarray(dividing, bool).reshape(-1)
    n = dividing.size
    if ps == (NEGATIVE,) or n == 0:
        return [(NEGATIVE,)] * n
    if shares is None:
        shares = ImageShares({c: 1.0 for c in ps})
    expressing = rng.random(n) >= shares.non_expressing
    expressing |= dividing & (MITOTIC_SPINDLE in ps)  # the spindle cells are why the image is labelled
    shown = np.zeros((n, NUM_CLASSES), bool)
    for c in ps:
        able = _able(c, dividing)
        share = 1.0 if c == MITOTIC_SPINDLE else shares.per_class.get(c, 1.0)
        shown[:, c] = able & expressing & (rng.random(n) < share)
        if not shown[:, c].any() and able.any():
            # the image is labelled with c, so some cell shows it: prefer an expressing one
            pool = np.flatnonzero(able & expressing)
            pick = int(rng.choice(pool if pool.size else np.flatnonzero(able)))
            shown[pick, c] = expressing[pick] = True
    if alternate is not None:
        alt = _able(int(alternate), dividing) & expressing & (rng.random(n) < shares.alternate)
        shown[:, int(alternate)] |= alt
    return [tuple(np.flatnonzero(row).tolist()) or (NEGATIVE,) for row in shown]


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
