"""The competition's vocabulary: the 19 subcellular location classes and the channel order.

Class ids are the competition's label ids (0..18). ``train_images`` is the number of
images carrying the label in the 2021 Kaggle ``train.csv`` (21,806 images); the synthetic
world shapes its class frequencies on these counts.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CellClass",
    "CLASSES",
    "CLASS_NAMES",
    "NUM_CLASSES",
    "NEGATIVE",
    "CHANNELS",
    "NUM_CHANNELS",
    "class_by_name",
]

#: Channel order of every HxWx4 image array: microtubules, protein of interest, nucleus, ER.
CHANNELS: tuple[str, str, str, str] = ("red", "green", "blue", "yellow")
NUM_CHANNELS = len(CHANNELS)


@dataclass(frozen=True)
class CellClass:
    """One location class: competition id, name, RGB display colour (0..255), train image count."""

    id: int
    name: str
    colour: tuple[int, int, int]
    train_images: int


CLASSES: tuple[CellClass, ...] = (
    CellClass(0, "Nucleoplasm", (31, 119, 180), 8797),
    CellClass(1, "Nuclear membrane", (255, 127, 14), 1095),
    CellClass(2, "Nucleoli", (44, 160, 44), 2451),
    CellClass(3, "Nucleoli fibrillar center", (214, 39, 40), 1262),
    CellClass(4, "Nuclear speckles", (148, 103, 189), 1425),
    CellClass(5, "Nuclear bodies", (140, 86, 75), 1792),
    CellClass(6, "Endoplasmic reticulum", (227, 119, 194), 775),
    CellClass(7, "Golgi apparatus", (127, 127, 127), 1846),
    CellClass(8, "Intermediate filaments", (188, 189, 34), 964),
    CellClass(9, "Actin filaments", (23, 190, 207), 1011),
    CellClass(10, "Microtubules", (174, 199, 232), 818),
    CellClass(11, "Mitotic spindle", (255, 187, 120), 78),
    CellClass(12, "Centrosome", (152, 223, 138), 1734),
    CellClass(13, "Plasma membrane", (255, 152, 150), 3216),
    CellClass(14, "Mitochondria", (197, 176, 213), 2013),
    CellClass(15, "Aggresome", (196, 156, 148), 252),
    CellClass(16, "Cytosol", (247, 182, 210), 5685),
    CellClass(17, "Vesicles and punctate cytosolic patterns", (199, 199, 199), 621),
    CellClass(18, "Negative", (0, 0, 0), 34),
)

CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
NUM_CLASSES = len(CLASSES)
#: Id of the "Negative" class (no specific green signal).
NEGATIVE = 18


def class_by_name(name: str) -> CellClass:
    """Look a class up by its name, case-insensitively."""
    for c in CLASSES:
        if c.name.lower() == name.lower():
            return c
    raise KeyError(f"unknown class {name!r}; classes are: {', '.join(CLASS_NAMES)}")
