"""Export mask-cache entries as label images other tools open (napari, CellProfiler, QuPath, Fiji).

Each entry becomes ``{ID}_cells.{png|tif}`` (and with ``nuclei=True`` ``{ID}_nuclei.{png|tif}``) at
the ORIGINAL image size: the maps are upscaled exactly as :meth:`MaskCache.read` with
``upscale=True`` does (nearest neighbour, pixel for pixel ``cv2.INTER_NEAREST``). 0 is background,
cells 1..N; a nucleus carries its cell's id, so the two files of an image line up.

Formats (:data:`MASK_FORMATS`)
------------------------------
png
    16-bit greyscale PNG (OpenCV, zlib level 3). PNG has no 32-bit greyscale, so an entry whose
    ids exceed 65535 (stored uint32) is REFUSED: :func:`export_masks` checks every selected entry
    before writing anything and names the images, saying to use ``tiff``. Refusing beats a silent
    fallback: a folder of mixed ``.png``/``.tif`` files breaks the batch loaders of those tools.
tiff
    Single-page greyscale TIFF (tifffile), uint16 when the ids fit, else uint32; deflate
    (zlib, TIFF compression 8) by default, which libtiff, Bio-Formats (QuPath, Fiji) and
    imageio/tifffile (napari, CellProfiler) read; ``compression="none"`` writes it uncompressed.

Every file is written to a temporary name and renamed, so a killed run leaves whole files only.
"""
from __future__ import annotations

__all__ = ["MASK_FORMATS", "TIFF_COMPRESSIONS", "ExportSummary", "encode_label_image", "export_masks"]

import io
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cellcls.errors import CacheError, ParameterError
from cellcls.registry import Registry

from ._files import UINT16_MAX, atomic_write

log = logging.getLogger(__name__)

#: Writers by format name: ``encode(labels, compression) -> bytes``, with a ``suffix`` attribute.
MASK_FORMATS: Registry[Callable[[np.ndarray, str], bytes]] = Registry("mask format")
#: TIFF compressions offered: name -> tifffile's ``compression`` argument.
TIFF_COMPRESSIONS = {"deflate": "zlib", "none": None}


def _suffix(suffix: str):
    def mark(fn):
        fn.suffix = suffix
        return fn

    return mark


@MASK_FORMATS.register("png")
@_suffix(".png")
def _encode_png(labels: np.ndarray, compression: str) -> bytes:
    import cv2

    if labels.dtype != np.uint16:
        raise ParameterError(f"PNG label images are 16-bit; got {labels.dtype} (use the tiff format)")
    ok, data = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise OSError("OpenCV could not encode the label map as PNG")
    return data.tobytes()


@MASK_FORMATS.register("tiff")
@_suffix(".tif")
def _encode_tiff(labels: np.ndarray, compression: str) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, labels, photometric="minisblack", compression=TIFF_COMPRESSIONS[compression])
    return buffer.getvalue()


def encode_label_image(labels: np.ndarray, *, fmt: str = "png", compression: str = "deflate") -> bytes:
    """Bytes of a label image file.

    Parameters
    ----------
    labels : (H, W) ndarray of uint16 or uint32 (uint32 only for ``tiff``), 0 = background.
    fmt : a name of :data:`MASK_FORMATS` ("png" or "tiff").
    compression : a name of :data:`TIFF_COMPRESSIONS` (TIFF only; PNG is always zlib).
    """
    encode = MASK_FORMATS.get(fmt)
    if compression not in TIFF_COMPRESSIONS:
        raise ParameterError(f"compression must be one of {sorted(TIFF_COMPRESSIONS)}, got {compression!r}")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype not in (np.uint16, np.uint32):
        raise ParameterError(f"a label image is a 2-D uint16/uint32 map, got {labels.dtype} {labels.shape}")
    return encode(np.ascontiguousarray(labels), compression)


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_masks` wrote: ``files`` per image ID, and how many maps needed 32 bits."""

    out_dir: Path
    files: dict[str, tuple[Path, ...]] = field(default_factory=dict)
    n_uint32: int = 0

    @property
    def n_images(self) -> int:
        return len(self.files)


def export_masks(masks_dir: "str | Path", out_dir: "str | Path", *, fmt: str = "png",
                 ids: Iterable[str] | None = None, nuclei: bool = False, compression: str = "deflate",
                 progress: bool = True) -> ExportSummary:
    """Write the entries of a mask cache as label images at the original size.

    Parameters
    ----------
    masks_dir : folder of a mask cache; opened with :meth:`MaskCache.reader` (one parameter set).
    out_dir : folder for the files (created).
    fmt : "png" (16-bit) or "tiff" (16 or 32-bit).
    ids : image IDs to export (default: every "ok" entry).
    nuclei : also write ``{ID}_nuclei`` files.
    compression : TIFF compression, "deflate" or "none".
    progress : draw a tqdm bar on stderr.

    Raises
    ------
    CacheError
        No cache, an empty or mixed one, IDs without an entry (all named), or, for ``png``,
        entries whose ids need 32 bits (all named; nothing is written then).
    """
    from tqdm import tqdm

    from .cache import MaskCache

    encode = MASK_FORMATS.get(fmt)
    reader = MaskCache(masks_dir).reader()
    wanted = reader.ids() if ids is None else list(dict.fromkeys(str(i) for i in ids))
    absent = [i for i in wanted if i not in reader]
    if absent:
        raise CacheError(f"{len(absent)} of the {len(wanted)} IDs have no entry in mask cache {masks_dir} "
                         f"({_listed(absent)}); segment them with `cellcls segment --out {masks_dir}`")
    wide = _wide_ids(reader, wanted)
    if wide and fmt == "png":
        raise CacheError(f"{len(wide)} images have cell ids above {UINT16_MAX} ({_listed(wide)}), which a 16-bit "
                         "PNG cannot hold; export them with --format tiff (32-bit). Nothing was written")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[Path, ...]] = {}
    for image_id in tqdm(wanted, desc="export masks", unit="img", disable=not progress, file=sys.stderr):
        entry = reader.read(image_id, upscale=True)
        maps = [("cells", entry.cells)] + ([("nuclei", entry.nuclei)] if nuclei else [])
        written = []
        for name, labels in maps:
            path = out / f"{image_id}_{name}{encode.suffix}"
            atomic_write(path, encode_label_image(labels, fmt=fmt, compression=compression))
            written.append(path)
        files[image_id] = tuple(written)
    log.info("exported %d images to %s as %s", len(files), out, fmt)
    return ExportSummary(out, files, len(wide))


def _wide_ids(reader: "object", ids: list[str]) -> list[str]:
    """IDs among ``ids`` whose entry is stored uint32 (ids > 65535), from the manifest."""
    manifest = reader.cache.manifest()
    dtypes = dict(zip(manifest["ID"].astype(str), manifest["dtype"].astype(str)))
    return [i for i in ids if dtypes.get(i) == "uint32"]


def _listed(ids: list[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
