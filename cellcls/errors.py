"""Every error cellcls raises on bad input, in one place.

Each message says what was expected, what came, which file/ID/row caused it, and, where
there is one, what to do instead. The CLI prints ``CellclsError`` messages without a
traceback and exits non-zero.
"""
from __future__ import annotations

__all__ = [
    "CellclsError",
    "ImageError",
    "MissingChannelError",
    "UnreadableImageError",
    "ChannelMismatchError",
    "UnsupportedImageError",
    "LabelError",
    "BadLabelRowError",
    "WeightsError",
    "WeightsNotFoundError",
    "UnsafeWeightsError",
    "MaskCodecError",
    "SubmissionError",
    "CacheError",
    "CellTableError",
    "CropError",
    "ScoreTableError",
    "RegistryError",
    "ParameterError",
    "PluginError",
    "LossError",
    "EmbeddingError",
    "ReportError",
]


class CellclsError(Exception):
    """Base class of every error raised on bad input or bad configuration."""


class ImageError(CellclsError):
    """A sample's channel files could not be turned into an image."""


class MissingChannelError(ImageError, FileNotFoundError):
    """A channel file of a sample does not exist."""


class UnreadableImageError(ImageError):
    """A channel file exists but cannot be decoded (corrupt, truncated, not an image)."""


class ChannelMismatchError(ImageError):
    """The channel files of one sample differ in size or dtype."""


class UnsupportedImageError(ImageError):
    """A decoded channel has a dtype or shape the pipeline does not handle."""


class LabelError(CellclsError):
    """A label file is malformed."""


class BadLabelRowError(LabelError):
    """One row of a label file is invalid; the message names the row number and reason."""


class WeightsError(CellclsError):
    """A weight file is missing, unsafe or does not fit the network."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No weight file was found; the message lists every place looked."""


class UnsafeWeightsError(WeightsError):
    """A pickled weight file references a global outside the allowlist."""


class MaskCodecError(CellclsError):
    """A mask string is not valid competition RLE, or does not fit the stated size."""


class SubmissionError(CellclsError):
    """A submission or solution file is malformed."""


class CacheError(CellclsError):
    """A mask-cache entry or manifest is unreadable or inconsistent."""


class CellTableError(CellclsError, ValueError):
    """A label map or cell-table file does not fit (wrong shape or dtype, missing columns)."""


class CropError(CellTableError):
    """A crop request does not fit its image, label map or cell-table rows (unknown cell id, no rows, bad size)."""


class ScoreTableError(CellclsError, ValueError):
    """A per-cell score table (file or frame) is malformed: missing columns, bad values, repeated cells."""


class ParameterError(CellclsError, ValueError):
    """A function or command option got a value outside its valid range or of the wrong kind.

    Also a ``ValueError``, so library callers that catch ``ValueError`` keep working; the CLI
    prints it as one ``error:`` line and exits 1. The message names the parameter (or option),
    what is allowed and the value given.
    """


class PluginError(CellclsError):
    """A command registered in the ``cellcls.commands`` entry-point group cannot be loaded.

    The message names the entry point and its module; the import error is chained as
    ``__cause__`` (``cellcls COMMAND -v`` prints its traceback).
    """


class RegistryError(CellclsError, KeyError):
    """An unknown name was looked up in a registry; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LossError(CellclsError, ValueError):
    """A loss got options it does not take, or tensors of the wrong shape or dtype."""


class EmbeddingError(CellclsError, ValueError):
    """An embeddings file (``.npz``) or array is malformed: missing arrays, shapes that disagree, NaN,
    rows not L2-normalised, repeated IDs, or dimensions that differ between two files."""


class ReportError(CellclsError, ValueError):
    """An input of ``cellcls report`` is malformed: an evaluation or segmentation JSON without its fields,
    a training log without ``epoch``/``step`` columns, a ``NAME=PATH`` option without a name."""
