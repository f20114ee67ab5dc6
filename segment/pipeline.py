"""A segmentation run: images folder in, mask cache out (what ``cellcls segment`` executes).

Flow: list the IDs -> ``MaskCache.todo`` drops those already done under the same parameters ->
a torch DataLoader decodes and area-resizes images in worker processes -> the backend's device
part runs per batch -> labelling + cache write per image (in the main process, or in a pool of
``label_workers`` processes so the CPU labelling of batch k overlaps the network on batch k+1)
-> ``manifest.csv`` is rebuilt at the end.

Robustness: an unreadable image (or one whose labelling raises, or one the network fails on even
alone after its batch failed, e.g. CUDA out of memory) is logged with its ID and the reason,
recorded as "failed" in the cache, and the run goes on (exit code 3). Each image is committed to the
cache as soon as it is labelled, so a killed run loses only the images in flight; re-running
redoes exactly the missing, failed, stale and corrupt entries.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from cellcls.labels import read_ids_csv  # noqa: F401 (re-exported: part of this module's API)

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURES",
    "ImageRecord",
    "SegmentDataset",
    "SegmentSummary",
    "collate_records",
    "label_and_write",
    "make_loader",
    "segment_records",
    "read_ids_csv",
    "resolve_image_scale",
    "resolve_device",
    "run_segmentation",
]

log = logging.getLogger(__name__)

EXIT_OK = 0
#: Exit code of a run that finished but could not segment some images (listed as failed in the cache).
EXIT_FAILURES = 3



# --------------------------------------------------------------------------- inputs




def resolve_image_scale(images_dir: str | os.PathLike, image_scale: str | float) -> tuple[float, str]:
    """``(image_scale, where it came from)``; ``"auto"`` reads ``world.json`` (a synthetic world).

    The image scale is the pixel size of the stored images relative to real HPA full-resolution
    images. ``auto`` looks for ``world.json`` in the images folder's parent, then in the folder
    itself, and takes its ``"scale"``; without one, 1.0 (real HPA pixels). A number is needed only
    for images whose pixels differ from HPA's with no world.json to say so. The resize applied
    before segmentation follows from it: ``segment.scales.resolve_scale``.
    """
    if image_scale != "auto":
        value = float(image_scale)
        if not value > 0:
            raise ValueError(f"--image-scale must be > 0 or 'auto', got {image_scale!r}")
        return value, "--image-scale"
    folder = Path(images_dir)
    for candidate in (folder.parent / "world.json", folder / "world.json"):
        if candidate.is_file():
            try:
                value = float(json.loads(candidate.read_text())["scale"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("cannot read 'scale' from %s (%s); assuming image scale 1.0", candidate, exc)
                return 1.0, f"default (unreadable {candidate})"
            return value, str(candidate)
    return 1.0, "default (no world.json: real HPA pixel size)"


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- dataset


@dataclass
class ImageRecord:
    """One decoded sample, or the reason it could not be decoded.

    ``image``: ``(h, w, 4)`` uint8/uint16 RGBY at segmentation scale; ``original_shape``: stored
    ``(H, W)``; ``error``: None, or a message naming the ID and file.
    """

    image_id: str
    image: np.ndarray | None = field(default=None, repr=False)
    original_shape: tuple[int, int] | None = None
    error: str | None = None


class SegmentDataset:
    """Map-style dataset of :class:`ImageRecord` (decode + INTER_AREA resize at ``scale``).

    A read error becomes a record with ``error`` set instead of an exception, so one bad file
    does not stop a DataLoader.
    """

    def __init__(self, images_dir: str | os.PathLike, ids: Sequence[str], *, scale: float, threads: int | None = None):
        self.images_dir = Path(images_dir)
        self.ids = list(ids)
        self.scale = float(scale)
        self.threads = threads

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> ImageRecord:
        from cellcls.errors import ImageError
        from cellcls.io import read_image_resized

        image_id = self.ids[index]
        try:
            image, original = read_image_resized(self.images_dir, image_id, scale=self.scale, threads=self.threads)
        except (ImageError, OSError) as exc:
            return ImageRecord(image_id, error=str(exc) or type(exc).__name__)
        return ImageRecord(image_id, image, tuple(original))


def collate_records(batch: list[ImageRecord]) -> list[ImageRecord]:
    """DataLoader ``collate_fn``: keep the records as a list (sizes differ, errors carry no array)."""
    return batch


def make_loader(dataset: SegmentDataset, *, batch_size: int, num_workers: int) -> Any:
    """In-order DataLoader of record lists; decoding in ``num_workers`` processes."""
    from torch.utils.data import DataLoader

    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_records,
        prefetch_factor=2 if num_workers > 0 else None,
    )


# --------------------------------------------------------------------------- label + write


def label_and_write(
    postprocess: Callable[[Any], tuple[np.ndarray, np.ndarray]],
    cache_root: str,
    image_id: str,
    intermediate: Any,
    *,
    original_shape: tuple[int, int],
    scale: float,
    backend: str,
    params_hash: str,
    params: dict[str, Any] | None = None,
) -> tuple[str, int | None, str | None]:
    """Label one image and commit it to the cache; returns ``(id, n_cells or None, error or None)``.

    A labelling error is recorded as a failed entry instead of raised (the run goes on). Cache
    errors (disk full, bad ID) do raise: the run cannot go on sensibly. ``params``: the backend's
    ``key_params()``, recorded readably in the entry.
    """
    from cellcls.masks import MaskCache

    cache = MaskCache(cache_root)
    try:
        nuclei, cells = postprocess(intermediate)
    except Exception as exc:  # noqa: BLE001 - any labelling failure of one image must not end the run
        message = f"image {image_id!r}: segmentation failed: {type(exc).__name__}: {exc}"
        cache.write_failure(image_id, message, params_hash=params_hash, backend=backend, params=params)
        return image_id, None, message
    cache.write(image_id, cells, nuclei, original_shape=original_shape, scale=scale, backend=backend,
                params_hash=params_hash, params=params)
    return image_id, int(len(np.unique(cells)) - (cells.min(initial=0) == 0)), None


class _Sink:
    """Runs :func:`label_and_write` inline or in a bounded process pool; collects outcomes."""

    def __init__(self, workers: int, on_done: Callable[[tuple[str, int | None, str | None]], None]) -> None:
        self.on_done = on_done
        self.pool: ProcessPoolExecutor | None = None
        self.pending: deque[Future] = deque()
        self.max_pending = 2 * workers
        if workers > 0:
            import multiprocessing

            # spawn: a fork of a process running torch threads (or CUDA) can deadlock.
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, *args: Any, **kwargs: Any) -> None:
        if self.pool is None:
            self.on_done(label_and_write(*args, **kwargs))
            return
        self.pending.append(self.pool.submit(label_and_write, *args, **kwargs))
        while len(self.pending) > self.max_pending:
            self.on_done(self.pending.popleft().result())

    def close(self, *, cancel: bool = False) -> None:
        if self.pool is None:
            return
        if cancel:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)
            return
        while self.pending:
            self.on_done(self.pending.popleft().result())
        self.pool.shutdown(wait=True)


# --------------------------------------------------------------------------- run


@dataclass
class SegmentSummary:
    """What a run did. ``seconds`` is wall time of the segmentation loop (after the cache check).

    ``cell_sizes`` (a ``segment.scales.CellSizes``: per-image cell counts and median areas) and
    ``warnings`` (from ``segment.scales.check_cell_sizes``) are filled in by the command after the
    run; :meth:`format` prints the warnings last, each as a ``WARNING:`` line.
    """

    requested: int
    done: int
    skipped: int
    failed: int
    backend: str
    seconds: float
    cache_dir: Path
    failed_ids: list[str] = field(default_factory=list)
    cells: int = 0
    cell_sizes: Any = None
    warnings: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else math.nan

    @property
    def exit_code(self) -> int:
        """:data:`EXIT_OK`, or :data:`EXIT_FAILURES` when some images failed."""
        return EXIT_FAILURES if self.failed else EXIT_OK

    def format(self) -> str:
        lines = [
            f"segmented {self.done} image(s), skipped {self.skipped} already cached, failed {self.failed}"
            f" (of {self.requested} requested)",
            f"backend: {self.backend}",
            f"time: {self.seconds:.1f} s ({self.images_per_s:.2f} images/s), {self.cells} cells found",
            f"cache: {self.cache_dir} (manifest: {Path(self.cache_dir) / 'manifest.csv'})",
        ]
        if self.failed_ids:
            shown = ", ".join(self.failed_ids[:10]) + (f" and {len(self.failed_ids) - 10} more" if self.failed > 10 else "")
            lines.append(f"failed IDs: {shown} (reasons in the log and in manifest.csv)")
        if self.cell_sizes is not None:
            lines.append(self.cell_sizes.describe())
        lines.extend(f"WARNING: {warning}" for warning in self.warnings)
        return "\n".join(lines)


def run_segmentation(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    backend: Any,
    *,
    ids: Iterable[str] | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    label_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> SegmentSummary:
    """Segment every image of ``images_dir`` (or ``ids``) into the mask cache ``out_dir``.

    Parameters
    ----------
    backend : SegmentationBackend
        From ``segment.backends.build_backend``; its ``scale`` is the resize factor and its
        ``params_hash()`` the cache key.
    ids : iterable of str, optional
        Default: every complete sample in ``images_dir``.
    batch_size : int
        Images per DataLoader batch and per forward pass.
    num_workers : int
        DataLoader decoding processes (0: decode in this process).
    label_workers : int
        Processes for labelling + cache writes (0: in this process, after each batch).
    overwrite : bool
        Redo entries that are already done.

    Returns
    -------
    SegmentSummary
        Its ``exit_code`` is 3 when some images failed. A batch the network fails on (any
        ``RuntimeError`` of ``backend.predict``, CUDA out of memory included) is retried image by
        image; an image that fails alone too is recorded as failed and the run goes on.
    """
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from cellcls.io import list_image_ids
    from cellcls.masks import MaskCache

    cache = MaskCache(out_dir)
    all_ids = list(dict.fromkeys(ids)) if ids is not None else list_image_ids(images_dir)
    key = backend.params_hash()
    todo = cache.todo(all_ids, key, overwrite=overwrite)
    mixing = cache.mixing_warning(key, params=backend.key_params(), replacing=todo)
    if mixing:
        log.warning(mixing)
    summary = SegmentSummary(requested=len(all_ids), done=0, skipped=len(all_ids) - len(todo), failed=0,
                             backend=backend.describe(), seconds=0.0, cache_dir=Path(out_dir))
    log.info("%d image(s) requested, %d already cached (key %s...), %d to segment with %s",
             len(all_ids), summary.skipped, key[:12], len(todo), backend.describe())
    if not todo:
        cache.write_manifest()
        return summary

    bar = tqdm(total=len(todo), unit="img", desc="segment", file=sys.stderr, disable=not progress, smoothing=0.1)

    def on_done(outcome: tuple[str, int | None, str | None]) -> None:
        image_id, n_cells, error = outcome
        if error is None:
            summary.done += 1
            summary.cells += int(n_cells or 0)
        else:
            summary.failed += 1
            summary.failed_ids.append(image_id)
            log.error("%s; skipped", error)
        bar.update(1)

    dataset = SegmentDataset(images_dir, todo, scale=backend.scale, threads=1 if num_workers > 0 else None)
    loader = make_loader(dataset, batch_size=batch_size, num_workers=num_workers)
    sink = _Sink(label_workers, on_done)
    common = dict(scale=backend.scale, backend=backend.name, params_hash=key, params=backend.key_params())
    start = time.perf_counter()
    try:
        with logging_redirect_tqdm():  # log lines above the bar, not through it
            for records in loader:
                segment_records(records, backend, submit=sink.submit, cache=cache, common=common,
                                on_failure=lambda image_id, error: on_done((image_id, None, error)))
            sink.close()
    except BaseException:
        sink.close(cancel=True)
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    cache.write_manifest()
    return summary


def segment_records(
    records: Sequence[ImageRecord],
    backend: Any,
    *,
    submit: Callable[..., None],
    on_failure: Callable[[str, str], None],
    cache: Any,
    common: dict[str, Any],
) -> None:
    """One batch: record failures, run the device part, hand each segmentable image to ``submit``.

    An unreadable image, or one the network fails on (see :func:`_predict_or_retry`: a failed batch
    is retried image by image), is written to the cache as "failed" and reported through
    ``on_failure(image_id, message)``; the other images of the batch go on.
    ``submit(postprocess, cache_root, image_id, intermediate, original_shape=, scale=, backend=,
    params_hash=, params=)`` takes :func:`label_and_write`'s arguments. Shared by the plain loop and the
    Lightning ``predict_step``.
    """

    def fail(image_id: str, message: str) -> None:
        cache.write_failure(image_id, message, params_hash=common["params_hash"], backend=common["backend"],
                            params=common.get("params"))
        on_failure(image_id, message)

    good = [r for r in records if r.error is None]
    for r in records:
        if r.error is not None:
            fail(r.image_id, r.error)
    if not good:
        return
    postprocess = backend.postprocess_fn()
    for r, intermediate, error in _predict_or_retry(backend, good):
        if error is not None:
            fail(r.image_id, error)
        else:
            submit(postprocess, str(cache.root), r.image_id, intermediate, original_shape=r.original_shape,
                   **common)


def _predict_or_retry(
    backend: Any, records: Sequence[ImageRecord]
) -> list[tuple[ImageRecord, Any, str | None]]:
    """``backend.predict`` on a batch; if it raises, once more image by image (batch 1).

    Catches ``RuntimeError``, which covers the backend's device errors (``torch.cuda.OutOfMemoryError``
    among them; after one the CUDA cache is emptied before the next try). Returns one
    ``(record, intermediate, None)`` per image, or ``(record, None, message)`` for an image that
    failed on its own too; the message names the ID and the error.
    """
    intermediates, error = _try_predict(backend, [r.image for r in records])
    if intermediates is not None:
        return [(r, intermediate, None) for r, intermediate in zip(records, intermediates)]
    log.warning("network failed on a batch of %d image(s) (%s): %s; retrying them one by one",
                len(records), ", ".join(r.image_id for r in records), error)
    outcomes: list[tuple[ImageRecord, Any, str | None]] = []
    for r in records:
        alone, error = _try_predict(backend, [r.image])
        if alone is None:
            outcomes.append((r, None, f"image {r.image_id!r}: network failed on it, also alone: {error}"))
        else:
            outcomes.append((r, alone[0], None))
    return outcomes


def _try_predict(backend: Any, images: list[np.ndarray]) -> tuple[list[Any] | None, str | None]:
    """``(intermediates, None)``, or ``(None, "Type: message")`` when ``predict`` raised a RuntimeError.

    After a CUDA out-of-memory error the allocator's cached blocks are released before returning.
    """
    try:
        return list(backend.predict(images)), None
    except RuntimeError as exc:
        message = f"{type(exc).__name__}: {exc}"
        out_of_memory = _is_cuda_out_of_memory(exc)
    # Outside the except block, so the traceback (and the tensors its frames hold) is already freed.
    if out_of_memory:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return None, message


def _is_cuda_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)
