"""cellcls: the shared core of the HPA single-cell classification pipeline.

Submodules are imported on demand (``from cellcls import io``) so that the CLI starts fast.
"""
from .classes import CHANNELS, CLASS_NAMES, CLASSES, NEGATIVE, NUM_CHANNELS, NUM_CLASSES
from .errors import CellclsError

__version__ = "0.1.0"

__all__ = [
    "CHANNELS",
    "CLASS_NAMES",
    "CLASSES",
    "NEGATIVE",
    "NUM_CHANNELS",
    "NUM_CLASSES",
    "CellclsError",
    "__version__",
]
