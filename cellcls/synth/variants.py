"""Drawing a synthetic world differently: cell shapes, green renderers, class mixes, Negative shares.

A :class:`WorldVariant` names one choice on each of four axes; the default variant is the
original world, byte for byte. The choices live in registries (``cellcls synth`` lists them):

* cell shape -> :data:`cellcls.synth.shapes.CELL_SHAPES` (``default``, ``round``, ``elongated``,
  ``irregular``);
* renderer -> :data:`RENDERERS`: the green pattern functions (``default`` =
  :data:`~cellcls.synth.patterns.PATTERNS`, ``alt`` = :data:`~cellcls.synth.patterns_alt.ALT_PATTERNS`);
* class mix -> :data:`CLASS_MIXES`: the draw probabilities of a protein's location classes;
* negative share -> the (low, high) range of each image's share of non-expressing cells.

:data:`VARIANTS` holds named presets (``shifted``: all four changed at once);
:func:`resolve_variant` applies a preset, then explicit choices, and validates the result.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np

from ..classes import CLASSES, NEGATIVE, NUM_CLASSES
from ..errors import ParameterError
from ..registry import Registry
from .patterns import PATTERNS, PatternFn
from .patterns_alt import ALT_PATTERNS
from .proteins import NON_EXPRESSING_SHARE, class_weights
from .shapes import CELL_SHAPES

__all__ = [
    "WorldVariant",
    "DEFAULT_VARIANT",
    "VARIANTS",
    "RENDERERS",
    "CLASS_MIXES",
    "resolve_variant",
    "mix_weights",
    "side_stream",
]

RENDERERS: Registry[Mapping[int, PatternFn]] = Registry("renderer")
RENDERERS.add("default", PATTERNS)
RENDERERS.add("alt", ALT_PATTERNS)

#: Class mixes: name -> function returning (19,) float64 draw probabilities summing to 1.
CLASS_MIXES: Registry[Callable[[], np.ndarray]] = Registry("class mix")


def _with_real_negative(location: np.ndarray) -> np.ndarray:
    """Spread the 18 location classes as ``location`` says; Negative keeps the real mix's share."""
    neg = float(class_weights()[NEGATIVE])
    loc = np.asarray(location, np.float64)[:NEGATIVE]
    out = np.empty(NUM_CLASSES, np.float64)
    out[:NEGATIVE] = (1.0 - neg) * loc / loc.sum()
    out[NEGATIVE] = neg
    return out


@CLASS_MIXES.register("real")
def real_mix() -> np.ndarray:
    """The real train counts ** 0.75 (the default world's frequencies)."""
    return class_weights()


@CLASS_MIXES.register("flat")
def flat_mix() -> np.ndarray:
    """The 18 location classes equally likely; Negative keeps its real-mix share (~0.3 %)."""
    return _with_real_negative(np.ones(NEGATIVE))


@CLASS_MIXES.register("rare")
def rare_mix() -> np.ndarray:
    """Tilted towards rare classes: real train counts ** -0.5 (the spindle ~11x nucleoplasm)."""
    counts = np.array([c.train_images for c in CLASSES[:NEGATIVE]], np.float64)
    return _with_real_negative(counts**-0.5)


def mix_weights(name: str) -> np.ndarray | None:
    """Class draw probabilities of the mix ``name``; None for ``real`` (the default draws)."""
    fn = CLASS_MIXES.get(name)
    return None if name == "real" else fn()


@dataclass(frozen=True)
class WorldVariant:
    """How a world is drawn; every default leaves the original world unchanged.

    Attributes
    ----------
    cell_shape : name in :data:`~cellcls.synth.shapes.CELL_SHAPES`.
    renderer : name in :data:`RENDERERS` (green patterns).
    class_mix : name in :data:`CLASS_MIXES`.
    negative_share : (low, high) fractions in [0, 1]: range of an image's share of
        non-expressing (Negative) cells, drawn per image, skewed towards ``low``.
    """

    cell_shape: str = "default"
    renderer: str = "default"
    class_mix: str = "real"
    negative_share: tuple[float, float] = NON_EXPRESSING_SHARE

    def is_default(self) -> bool:
        """True when the world drawn is the original one."""
        return self == DEFAULT_VARIANT

    def as_json(self) -> dict:
        """The choices as JSON-ready values (for ``world.json``)."""
        return {
            "cell_shape": self.cell_shape,
            "renderer": self.renderer,
            "class_mix": self.class_mix,
            "negative_share": [float(self.negative_share[0]), float(self.negative_share[1])],
        }


DEFAULT_VARIANT = WorldVariant()
#: Named presets (``cellcls synth --variant NAME``).
VARIANTS: Registry[WorldVariant] = Registry("world variant")
VARIANTS.add("default", DEFAULT_VARIANT)
VARIANTS.add("shifted", WorldVariant(cell_shape="irregular", renderer="alt", class_mix="flat", negative_share=(0.1, 0.5)))


def _check_name(registry: Registry, value: str, option: str) -> str:
    if value not in registry:
        raise ParameterError(f"{option} must be one of {', '.join(registry.names())}, got {value!r}")
    return value


def resolve_variant(
    variant: "str | WorldVariant | None" = None,
    *,
    cell_shape: str | None = None,
    renderer: str | None = None,
    class_mix: str | None = None,
    negative_share: tuple[float, float] | None = None,
) -> WorldVariant:
    """The preset ``variant`` (a name, a :class:`WorldVariant` or None = default) with the given
    choices overriding it, validated (a WorldVariant's own choices are checked like given ones).

    Raises
    ------
    ParameterError
        An unknown name, or a negative share range not ``0 <= low <= high <= 1``; the message
        names the option (``--cell-shape``...) and the valid values.
    """
    if isinstance(variant, WorldVariant):
        cell_shape, renderer = cell_shape or variant.cell_shape, renderer or variant.renderer
        class_mix, negative_share = class_mix or variant.class_mix, negative_share or variant.negative_share
        variant = None
    base = VARIANTS.get(_check_name(VARIANTS, variant, "--variant")) if variant is not None else DEFAULT_VARIANT
    changes: dict = {}
    if cell_shape is not None:
        changes["cell_shape"] = _check_name(CELL_SHAPES, cell_shape, "--cell-shape")
    if renderer is not None:
        changes["renderer"] = _check_name(RENDERERS, renderer, "--renderer")
    if class_mix is not None:
        changes["class_mix"] = _check_name(CLASS_MIXES, class_mix, "--class-mix")
    if negative_share is not None:
        try:
            lo, hi = (float(x) for x in negative_share)
        except (TypeError, ValueError):
            raise ParameterError(f"--negative-share takes two numbers LO HI, got {negative_share!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 <= lo <= hi <= 1.0):
            raise ParameterError(f"--negative-share must satisfy 0 <= LO <= HI <= 1 (fractions of cells), got {lo:g} {hi:g}")
        changes["negative_share"] = (lo, hi)
    return replace(base, **changes)


def side_stream(rng: np.random.Generator, salt: int) -> np.random.Generator:
    """A generator seeded from ``rng``'s current state and ``salt``, WITHOUT drawing from ``rng``.

    Lets an optional part of a drawing (another green renderer) have random numbers of its own
    while ``rng`` makes exactly the draws it makes without that part.
    """
    words: list[int] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for key in sorted(value):
                walk(value[key])
        elif isinstance(value, (bool, np.bool_)):
            words.append(int(value))
        elif isinstance(value, (int, np.integer)):
            words.append(int(value) % (1 << 128))
        elif isinstance(value, np.ndarray):
            words.extend(int(x) for x in value.ravel().astype(np.uint64))

    walk(rng.bit_generator.state)
    return np.random.default_rng(np.random.SeedSequence([*words, int(salt)]))
