"""A resized copy of an image folder, for training on whole images (``cellcls resize``).

Decoding full-size PNGs (4 x 2048² per sample) is what limits an image-level training run; a copy
at the training resolution is decoded ~16x faster. The copy keeps the layout of the original
(``{ID}_{red,green,blue,yellow}.png``), so anything that reads images with
:func:`cellcls.io.read_image` reads it as it reads the originals.

Size
    The LONGER side becomes ``size`` pixels and the aspect ratio is kept (the shorter side is
    ``round(short * size / long)``, at least 1): the competition's images are square, so they come
    out ``size x size``, and a non-square image is not distorted (the training transforms resize
    to the network's input anyway). Images whose longer side is already ``<= size`` are copied at
    their own size: INTER_AREA is an averaging filter for reductions, and enlarging would only
    interpolate.
Values
    ``cv2.INTER_AREA`` per channel, through :func:`cellcls.io.read_image_resized`; the stored
    dtype is kept (uint8 stays uint8, uint16 stays uint16). Output is always lossless PNG, even
    for TIFF or JPEG sources.
Resuming
    Each channel file is written to a temporary folder inside ``out`` and moved into place with
    :func:`os.replace` (atomic on one file system), so a file in ``out`` is either complete or
    absent. An image counts as done when all of its channel files exist with the expected size,
    which is checked from the PNG headers only (:func:`cellcls.io.image_shape`), so re-running
    skips finished images at the cost of a few bytes read per file. Two runs must not write into
    the same ``out`` at once (each run removes the temporary folders it finds at start).
Failures
    An image that cannot be read (missing channel, corrupt or truncated file, channels of
    different sizes) is logged with its ID, counted, and skipped; the run goes on.
    :attr:`ResizeSummary.exit_code` is 3 when some images failed.

``resize.json`` in ``out`` records the size, the rule, the source folder and the counts; a later
run with a different ``size`` into the same folder is refused (it would mix sizes) unless
``overwrite`` is set.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from cellcls.atomic import atomic_write_text
from cellcls.classes import CHANNELS
from cellcls.errors import CellclsError, ImageError, ParameterError
from cellcls.labels import read_ids_csv

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURES",
    "MANIFEST_NAME",
    "ResizeOutcome",
    "ResizeSummary",
    "target_shape",
    "is_resized",
    "resize_sample",
    "resize_folder",
    "read_ids_csv",
    "default_workers",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
#: Exit code of a run that finished but could not resize some images (as ``cellcls segment``).
EXIT_FAILURES = 3
#: The file in ``out`` that records how the copy was made.
MANIFEST_NAME = "resize.json"
_TMP_PREFIX = ".partial-"
_OUT_EXT = "png"


# --------------------------------------------------------------------------- maths
def target_shape(shape_hw: tuple[int, int], size: int) -> tuple[int, int]:
    """``(h, w)`` of the resized copy: longer side ``size`` px, aspect kept, never enlarged.

    Parameters
    ----------
    shape_hw : (int, int)
        ``(H, W)`` of the original, in pixels.
    size : int
        Longer side of the copy, in pixels (>= 1).

    Returns
    -------
    (int, int)
        ``(H, W)`` unchanged when ``max(H, W) <= size``; otherwise the longer side is ``size``
        and the shorter ``round(short * size / long)`` (Python's round), at least 1.

    Examples
    --------
    >>> target_shape((2048, 2048), 512)
    (512, 512)
    >>> target_shape((1000, 3000), 768)
    (256, 768)
    >>> target_shape((300, 200), 512)
    (300, 200)
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if min(h, w) < 1:
        raise ParameterError(f"image shape must be positive (H, W), got {shape_hw}")
    if int(size) < 1:
        raise ParameterError(f"size must be an integer >= 1 (pixels), got {size!r}")
    longer = max(h, w)
    if longer <= size:
        return h, w
    if h >= w:
        return int(size), max(1, round(w * size / h))
    return max(1, round(h * size / w)), int(size)


# --------------------------------------------------------------------------- one image
@dataclass(frozen=True)
class ResizeOutcome:
    """What happened to one image: ``status`` is ``"done"``, ``"skipped"`` (already there) or ``"failed"``.

    ``shape`` is the ``(h, w)`` written or found (pixels of the copy), ``original`` the source
    ``(H, W)``; both ``None`` for a failure, whose ``message`` says why.
    """

    image_id: str
    status: str
    shape: tuple[int, int] | None = None
    original: tuple[int, int] | None = None
    message: str = ""


def is_resized(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_id: str,
    *,
    size: int,
    channels: Sequence[str] = CHANNELS,
) -> bool:
    """Whether ``out_dir`` already holds a complete copy of ``image_id`` at ``size``.

    Reads only file headers: every channel PNG must exist in ``out_dir`` and all must be
    :func:`target_shape` of the source's header shape. Any problem (a missing or unreadable file,
    a source that cannot be read) means "not done".
    """
    from cellcls.io import image_shape

    out = Path(out_dir)
    if not all((out / f"{image_id}_{c}.{_OUT_EXT}").is_file() for c in channels):
        return False
    try:
        expected = target_shape(image_shape(images_dir, image_id, channels=channels), size)
        return image_shape(out, image_id, channels=channels) == expected
    except (CellclsError, OSError):
        return False


def resize_sample(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    image_id: str,
    *,
    size: int,
    channels: Sequence[str] = CHANNELS,
    threads: int | None = 1,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Write the resized copy of one image into ``out_dir``, each channel file atomically.

    Parameters
    ----------
    images_dir, out_dir : path
        Source folder and destination folder (created).
    image_id : str
    size : int
        Longer side of the copy, in pixels (see :func:`target_shape`).
    threads : int, optional
        Threads decoding the channel files (1 inside worker processes; ``None`` = one per channel).

    Returns
    -------
    shape, original : (int, int), (int, int)
        ``(h, w)`` written and ``(H, W)`` of the source, in pixels.

    Raises
    ------
    ImageError
        The source cannot be read (the message names the ID and the file); nothing is written.
    """
    from cellcls.io import image_shape, read_image_resized, write_image

    original = image_shape(images_dir, image_id, channels=channels)
    target = target_shape(original, size)
    image, decoded = read_image_resized(images_dir, image_id, size=target, channels=channels, threads=threads)
    if decoded != original:  # a header that lies about the pixels it holds
        raise ImageError(f"image {image_id!r}: the file headers say {original} (HxW) but the pixels are {decoded}")
    out = Path(out_dir)
    tmp = out / f"{_TMP_PREFIX}{image_id}.{os.getpid()}"
    try:
        written = write_image(tmp, image_id, image, ext=_OUT_EXT, channels=channels)
        for path in written.values():
            os.replace(path, out / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return (int(image.shape[0]), int(image.shape[1])), original


def _process(images_dir: str, out_dir: str, image_id: str, size: int, channels: tuple[str, ...],
             threads: int | None) -> ResizeOutcome:
    """Resize one image, safe to run in a worker process: never raises for a bad image."""
    try:
        shape, original = resize_sample(images_dir, out_dir, image_id, size=size, channels=channels,
                                        threads=threads)
    except (CellclsError, OSError) as exc:
        return ResizeOutcome(image_id, "failed", message=f"{type(exc).__name__}: {exc}")
    return ResizeOutcome(image_id, "done", shape=shape, original=original)


# --------------------------------------------------------------------------- a folder
@dataclass
class ResizeSummary:
    """Counts of one :func:`resize_folder` run; ``failures`` maps image ID -> reason."""

    out_dir: str
    size: int
    requested: int = 0
    done: int = 0
    skipped: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 0

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_OK`, or :data:`EXIT_FAILURES` when some images failed."""
        return EXIT_FAILURES if self.failures else EXIT_OK

    def format(self) -> str:
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"resized {self.done} image(s) to longer side {self.size} px, skipped {self.skipped} already done, "
            f"failed {self.failed} (of {self.requested} requested)",
            f"time: {self.seconds:.1f} s" + (f" ({rate:.2f} images/s, {self.workers} worker process(es))"
                                              if self.done else ""),
            f"out: {self.out_dir} (record: {Path(self.out_dir) / MANIFEST_NAME})",
        ]
        if self.failures:
            shown = list(self.failures)[:10]
            more = f" and {self.failed - 10} more" if self.failed > 10 else ""
            lines.append("failed IDs (see the log for reasons): " + ", ".join(shown) + more)
        return "\n".join(lines)


def default_workers() -> int:
    """``min(4, CPU count)`` worker processes."""
    return min(4, os.cpu_count() or 1)




def _check_manifest(out: Path, size: int, overwrite: bool) -> None:
    path = out / MANIFEST_NAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
        old_size = int(previous["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s); it will be rewritten", path, exc)
        return
    if old_size != size and not overwrite:
        raise ParameterError(
            f"{out} holds a copy at --size {old_size} ({path}); resizing to {size} there would mix sizes. "
            "Use another --out, or --overwrite to redo every image at the new size"
        )


def _remove_stale_partials(out: Path) -> None:
    for entry in out.glob(f"{_TMP_PREFIX}*"):
        if entry.is_dir():
            log.debug("removing %s left by an interrupted run", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _write_manifest(out: Path, images_dir: Path, summary: ResizeSummary) -> None:
    record = {
        "size": summary.size,
        "rule": "longer side resized to size, aspect ratio kept, never enlarged",
        "interpolation": "cv2.INTER_AREA",
        "format": _OUT_EXT,
        "dtype": "as the source (uint8 or uint16)",
        "source": str(images_dir.resolve()),
        "count": summary.done + summary.skipped,
        "failed": summary.failed,
        "failed_ids": sorted(summary.failures),
    }
    atomic_write_text(out / MANIFEST_NAME, json.dumps(record, indent=2) + "\n")


def _outcomes(items: Iterable[ResizeOutcome | tuple], *, workers: int) -> Iterator[ResizeOutcome]:
    """Yield one outcome per item: an outcome passes through, a task tuple goes to :func:`_process`.

    Tasks run in this process (``workers == 0``) or in a pool of ``workers`` processes, created at
    the first task (a re-run over a finished copy starts none), with at most ``2 * workers`` in
    flight; pool outcomes come in completion order. Workers are spawned, not forked: the parent may
    hold threads (tqdm, the decoding pool), and forking a threaded process can deadlock the child.
    """
    import multiprocessing
    from concurrent.futures.process import BrokenProcessPool

    pool: ProcessPoolExecutor | None = None
    pending: set[Future] = set()
    try:
        for item in items:
            if isinstance(item, ResizeOutcome):
                yield item
            elif workers == 0:
                yield _process(*item)
            else:
                if pool is None:
                    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
                pending.add(pool.submit(_process, *item))
                if len(pending) >= 2 * workers:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in finished)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in finished)
    except BrokenProcessPool as exc:
        raise CellclsError(
            "a resize worker process died (killed for memory?); the images finished so far are kept: "
            "re-run the same command to resume, with a smaller --num-workers"
        ) from exc
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def resize_folder(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    size: int,
    ids: Sequence[str] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    channels: Sequence[str] = CHANNELS,
) -> ResizeSummary:
    """Resize every image of ``images_dir`` (or the given ``ids``) into ``out_dir``.

    Parameters
    ----------
    images_dir, out_dir : path
        Source folder of ``{ID}_{channel}.{png,tif,jpg}`` files; destination folder (created).
    size : int
        Longer side of the copies, in pixels (see :func:`target_shape`).
    ids : sequence of str, optional
        Images to resize (default: every ID of ``images_dir`` with all channel files).
    workers : int, optional
        Worker processes (default :func:`default_workers`); 0 works in this process.
    overwrite : bool
        Redo images already present in ``out_dir``.
    progress : bool
        Draw a tqdm bar.

    Returns
    -------
    ResizeSummary
        Its ``exit_code`` is 3 when some images failed; each failure is logged with its ID.

    Raises
    ------
    ParameterError
        ``size`` < 1, ``workers`` < 0, or ``out_dir`` already holds a copy at another size.
    MissingChannelError
        ``images_dir`` does not exist (and no ``ids`` were given).
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from cellcls.io import list_image_ids

    if int(size) < 1:
        raise ParameterError(f"size must be an integer >= 1 (pixels), got {size!r}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ParameterError(f"workers must be >= 0, got {workers}")
    src, out = Path(images_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ParameterError(f"--out must differ from --images ({src}): the copy would replace the originals")
    channels = tuple(channels)
    image_ids = list(dict.fromkeys(ids)) if ids is not None else list_image_ids(src, channels=channels)
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, int(size), overwrite)
    _remove_stale_partials(out)
    workers = min(workers, len(image_ids)) if image_ids else 0
    # One process decodes its 4 channels in parallel threads; several processes share the cores.
    threads = None if workers <= 1 else 1
    summary = ResizeSummary(out_dir=str(out), size=int(size), requested=len(image_ids), workers=workers)
    log.info("resizing %d image(s) from %s to longer side %d px in %s (%d worker process(es))",
             len(image_ids), src, size, out, workers)

    def items() -> Iterator[ResizeOutcome | tuple]:
        # The done check (a few header bytes per file) runs here, so a finished copy needs no workers.
        for image_id in image_ids:
            if not overwrite and is_resized(src, out, image_id, size=int(size), channels=channels):
                yield ResizeOutcome(image_id, "skipped")
            else:
                yield str(src), str(out), image_id, int(size), channels, threads

    start = time.perf_counter()
    with logging_redirect_tqdm(), tqdm(total=len(image_ids), desc="resize", unit="img",
                                       disable=not progress) as bar:
        for outcome in _outcomes(items(), workers=workers):
            if outcome.status == "failed":
                summary.failures[outcome.image_id] = outcome.message
                log.error("image %s not resized: %s", outcome.image_id, outcome.message)
            elif outcome.status == "skipped":
                summary.skipped += 1
            else:
                summary.done += 1
            bar.update(1)
            bar.set_postfix(done=summary.done, skipped=summary.skipped, failed=summary.failed, refresh=False)
    summary.seconds = time.perf_counter() - start
    _write_manifest(out, src, summary)
    return summary
