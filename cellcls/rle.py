"""Competition mask codec: binary mask <-> ASCII mask string.

Format (HPA_FACTS §2): a boolean (H, W) mask is encoded column-major (Fortran order) by
pycocotools as compressed COCO RLE ``counts`` bytes; those bytes are compressed with zlib at
level 9 and base64-encoded; the result is ASCII text. Decoding reverses the chain and needs
the size (H, W), which the string does not carry.

    encode(mask) -> str
    decode(text, (H, W)) -> bool ndarray (H, W)
"""
from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np
from pycocotools import mask as coco_mask

from .errors import MaskCodecError

__all__ = ["encode", "decode", "EMPTY_MASK_FULL_FRAME"]

#: The mask string of the sample submission (an empty mask); it decodes to all-False at any size.
EMPTY_MASK_FULL_FRAME = "eNoLCAgIMAEABJkBdQ=="


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask (H, W) as a competition mask string."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise MaskCodecError(f"expected a 2-D (H, W) mask, got shape {mask.shape}")
    fortran = np.asfortranarray(mask.astype(bool, copy=False).reshape(mask.shape[0], mask.shape[1], 1), dtype=np.uint8)
    counts = coco_mask.encode(fortran)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, 9)).decode("ascii")


def decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a competition mask string to a boolean (H, W) mask; raises on any malformation."""
    h, w = (int(s) for s in shape)
    try:
        counts = zlib.decompress(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise MaskCodecError(f"mask string is not valid base64: {text[:40]!r}...") from exc
    except zlib.error as exc:
        raise MaskCodecError(f"mask string is not zlib data: {text[:40]!r}...") from exc
    mask = coco_mask.decode({"size": [h, w], "counts": counts})
    return mask.astype(bool)
