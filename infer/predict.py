"""Score every cell of a set of images with one or more checkpoints; stream a score table and a submission.

Flow, per image: read it (:func:`cellcls.io.read_image`, original size, 8 or 16 bits) -> its mask-cache
entry -> the cell table (original pixels) -> for each distinct crop recipe of the models, the crops of
every cell (:func:`cellcls.crops.crop_cells`, mode/size/margin from the checkpoint) -> for each image-task
model, the whole image resized to its ``image_size``. The raw image is dropped there; consecutive images
are gathered until ``group_cells`` cells, and each model then scores the group's crops (and whole images)
in batches of ``batch_size`` with its TTA (:func:`infer.tta.predict_tta`: probabilities, mean over views).

Ensemble: cell score = weighted mean over the models that score crops (cell-task checkpoints, and
image-task ones when ``image_on_crops``); image score = weighted mean over the image-task models of their
whole-image prediction. No crop-scoring model: every cell gets its image's score. No image-task model:
the image score is the mean of the image's cell scores. Then the blend (:mod:`infer.blend`) per image.

Rows go out as they are made: :class:`cellcls.scores.ScoreTableWriter` (ID, cell_id, mask_key, source,
p0..p18) and :class:`cellcls.submission.SubmissionWriter` (explicit cell ids, the entry's mask_key). An
image that cannot be read, has no mask entry, an entry of another size, or no cells gets the submission's
empty placeholder row and is named in the log and in :attr:`PredictSummary.placeholders`.

Out of fold (``fold_of``): each image is scored only by the checkpoints whose validation fold is the
image's fold (they never trained on it): the soft labels of a pseudo-label round.

Split by concern: the models and the ensemble means are in :mod:`infer.ensemble`, the time budget in
:mod:`infer.budget`; this module prepares images, runs the loop and writes. ``ScoringModel``,
``load_models``, ``resolve_device`` and ``TimeBudget`` are re-exported here.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from cellcls.errors import CacheError, CellclsError, ImageError

from .budget import TimeBudget, degrade, log_eta
from .config import InferConfig
from .ensemble import ScoringModel, fold_models, load_models, resolve_device, score_group

__all__ = ["ScoringModel", "load_models", "resolve_device", "PredictSummary", "TimeBudget", "predict_images",
           "STAGES"]

log = logging.getLogger(__name__)

#: Stages timed in :attr:`PredictSummary.timings` (seconds, summed over images).
STAGES = ("decode", "crop", "model", "blend", "encode")
_RULES_WITHOUT_IMAGE = frozenset({"cell", "fourth"})


# ----------------------------------------------------------------------------- per image
@dataclass
class _Prepared:
    image_id: str
    mask_key: str
    cells: np.ndarray          # label map at segmentation scale (for the submission)
    rows: Any                  # cell table (DataFrame), original pixels
    crops: dict[tuple, np.ndarray]
    images: dict[tuple, np.ndarray]
    timings: dict[str, float]

    @property
    def n_cells(self) -> int:
        return len(self.rows)


class _Skip(Exception):
    """An image that gets the placeholder row (the message says why)."""


def _prepare(image_id: str, images_dir: Path, reader, models: Sequence[ScoringModel], sample_shape,
             spec) -> _Prepared:
    from cellcls.crops import crop_cells
    from cellcls.io import read_image
    from cellcls.masks.table import entry_cell_table
    from cellcls.normalize import image_to_model_input

    from .blend import add_modifier_columns

    timings = dict.fromkeys(STAGES, 0.0)
    if reader is None or image_id not in reader:
        raise _Skip(_no_entry_reason(reader, image_id))
    t0 = time.perf_counter()
    try:
        entry = reader.read(image_id)
    except CacheError as exc:
        raise _Skip(f"unusable mask-cache entry: {exc}") from None
    if sample_shape is not None and tuple(sample_shape) != tuple(entry.original_shape):
        raise _Skip(f"the sample says {tuple(sample_shape)} but the mask entry was made from a "
                    f"{tuple(entry.original_shape)} image")
    rows = entry_cell_table(entry)
    if not len(rows):
        raise _Skip("no cells in its mask-cache entry")
    try:
        image = read_image(images_dir, image_id)
    except ImageError as exc:
        raise _Skip(f"unreadable image: {exc}") from None
    timings["decode"] = time.perf_counter() - t0
    if image.shape[:2] != tuple(entry.original_shape):
        raise _Skip(f"the image is {image.shape[:2]} but its mask entry was made from a "
                    f"{tuple(entry.original_shape)} image; re-segment it")
    t0 = time.perf_counter()
    rows = add_modifier_columns(rows, entry, [spec], image=image)
    crops: dict[tuple, np.ndarray] = {}
    images: dict[tuple, np.ndarray] = {}
    for m in models:
        if m.crops is not None and m.crops not in crops:
            mode, size, margin = m.crops
            crops[m.crops] = crop_cells(image, entry.cells, rows, mode=mode, size=size, margin=margin,
                                        image_id=image_id)
        key = (m.image_size, m.meta.mean, m.meta.std)
        if m.image_size is not None and key not in images:
            images[key] = image_to_model_input(image, m.image_size, m.meta.mean, m.meta.std)
    timings["crop"] = time.perf_counter() - t0
    return _Prepared(image_id, entry.mask_key, entry.cells, rows, crops, images, timings)


def _no_entry_reason(reader, image_id: str) -> str:
    """Why an image has no usable entry: the cache's own message (e.g. the segmentation's error)."""
    if reader is None:
        return "no mask-cache entry (the cache holds none)"
    try:
        reader.cache.read(image_id)
    except CacheError as exc:
        return f"no usable mask-cache entry: {exc}"
    return "its mask-cache entry was made with other segmentation parameters than the rest of the cache"


# ----------------------------------------------------------------------------- blending one image
def _blend_one(prepared: _Prepared, cell: np.ndarray | None, image: np.ndarray | None, spec) -> np.ndarray:
    from .blend import blend

    if cell is None:  # no crop-scoring model: every cell gets the image score
        cell = np.repeat(image[None, :], prepared.n_cells, axis=0)
    if image is None:
        image = cell.mean(axis=0)
    return blend(cell, image, prepared.rows, spec=spec)


# ----------------------------------------------------------------------------- summary
@dataclass
class PredictSummary:
    """What :func:`predict_images` did.

    Attributes
    ----------
    n_images : int
        Images asked for.
    n_scored : int
        Images whose cells were scored.
    n_cells : int
        Cells scored.
    placeholders : dict
        ID -> reason, for every image that got the empty placeholder row.
    timings : dict
        Seconds per stage (:data:`STAGES`), summed over images.
    degraded : list of str
        Work shed to meet the time budget, in order.
    wall_s : float
    """

    n_images: int = 0
    n_scored: int = 0
    n_cells: int = 0
    placeholders: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    degraded: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def format(self) -> str:
        lines = [f"scored {self.n_cells} cells of {self.n_scored} of {self.n_images} images in {self.wall_s:.1f} s"]
        if self.placeholders:
            lines.append(f"{len(self.placeholders)} image(s) got the empty placeholder row:")
            lines += [f"  {image_id}: {reason}" for image_id, reason in self.placeholders.items()]
        for step in self.degraded:
            lines.append(f"time budget: {step}")
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.timings.items())
        lines.append(f"stage times: {stages}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- the loop
def _prefetch(fn: Callable, items: Iterable, workers: int) -> Iterator:
    """``map(fn, items)`` with up to ``workers`` items prepared ahead in threads (0: in turn)."""
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _try_prepare(args) -> tuple[str, _Prepared | str]:
    image_id, prepare = args
    try:
        return image_id, prepare(image_id)
    except _Skip as exc:
        return image_id, str(exc)


def predict_images(
    ids: Sequence[str],
    *,
    images_dir: str | Path,
    reader,
    models: list[ScoringModel],
    config: InferConfig,
    device: str = "cpu",
    sample=None,
    submission_path: str | Path | None = None,
    scores_path: str | Path | None = None,
    fold_of: Mapping[str, int] | None = None,
    budget: TimeBudget | None = None,
    progress: bool = True,
    eta_every_s: float = 60.0,
) -> PredictSummary:
    """Score every cell of ``ids``; write the score table and/or the submission as it goes.

    Parameters
    ----------
    ids : image IDs, scored in this order (out of fold: grouped by fold).
    images_dir : folder of ``{ID}_{red,green,blue,yellow}.png|tif``.
    reader : :class:`cellcls.masks.CacheReader` of the masks, or None (no entries: every image is a placeholder).
    models : from :func:`load_models` (``models`` may shrink under a ``budget``).
    config : :class:`infer.config.InferConfig`.
    device : where the models run.
    sample : rows of ``sample_submission.csv`` (:func:`cellcls.submission.read_sample_submission`);
        needed for ``submission_path``; an image's size must match its sample row.
    submission_path, scores_path : outputs (either may be None). Scores: ``.parquet`` or ``.csv``.
    fold_of : ID -> fold: out-of-fold scoring, each image by the checkpoints validated on its fold.
    budget : shed TTA, then models, when the projected finish passes the deadline.
    progress : tqdm bar with ETA; also a log line with the ETA every ``eta_every_s`` seconds.

    Returns
    -------
    PredictSummary
    """
    from tqdm import tqdm

    from cellcls.scores import ScoreTableWriter
    from cellcls.submission import SubmissionWriter

    from .blend import BlendSpec

    spec = BlendSpec.parse(config.blend)
    images_dir = Path(images_dir)
    shapes = {row.id: row.shape for row in sample} if sample is not None else {}
    if submission_path is not None and sample is None:
        raise CellclsError("writing a submission needs the sample submission (IDs, order, sizes)")
    by_fold = fold_models(models, fold_of) if fold_of is not None else None
    ids = sorted(ids, key=lambda i: fold_of.get(i, -1)) if fold_of is not None else list(ids)
    summary = PredictSummary(n_images=len(ids))
    start = time.monotonic()
    sub = SubmissionWriter(submission_path, sample) if submission_path is not None else None
    table = ScoreTableWriter(scores_path) if scores_path is not None else None
    try:
        def models_for(image_id: str) -> list[ScoringModel]:
            if by_fold is None:
                return models
            return by_fold.get(fold_of.get(image_id), [])

        def prepare(image_id: str) -> _Prepared:
            chosen = models_for(image_id)
            if not chosen:
                raise _Skip(f"no checkpoint was validated on its fold {fold_of.get(image_id)}")
            return _prepare(image_id, images_dir, reader, chosen, shapes.get(image_id), spec)

        bar = tqdm(total=len(ids), desc="scoring cells", unit="img", disable=not progress)
        group: list[_Prepared] = []
        last_log = time.monotonic()
        done = 0

        def flush() -> None:
            nonlocal done, last_log
            if not group:
                return
            chosen = models_for(group[0].image_id)
            t0 = time.perf_counter()
            results = score_group(group, chosen, config, device)
            summary.timings["model"] += time.perf_counter() - t0
            source = " + ".join(f"{m.name} tta={m.tta}" for m in chosen) + f" | blend={spec}"
            for prepared, (cell, image) in zip(group, results):
                t0 = time.perf_counter()
                scores = _blend_one(prepared, cell, image, spec)
                t1 = time.perf_counter()
                _write(prepared, scores, source, sub, table)
                summary.timings["blend"] += t1 - t0
                summary.timings["encode"] += time.perf_counter() - t1
                summary.n_scored += 1
                summary.n_cells += prepared.n_cells
            done += len(group)
            bar.update(len(group))
            group.clear()
            elapsed = time.monotonic() - start
            if time.monotonic() - last_log >= eta_every_s:
                last_log = time.monotonic()
                log_eta(done, len(ids), elapsed, budget)
            if budget is not None and fold_of is None and budget.over(done, len(ids), elapsed):
                step = degrade(models)
                if step:
                    summary.degraded.append(step)
                    log.warning("time budget: projected finish after the deadline (%.0f s left); %s",
                                budget.left(), step)

        for image_id, prepared in _prefetch(_try_prepare, ((i, prepare) for i in ids), config.num_workers):
            if isinstance(prepared, str):
                summary.placeholders[image_id] = prepared
                log.warning("image %s gets the empty placeholder row: %s", image_id, prepared)
                done += 1
                bar.update(1)
                continue
            for stage in ("decode", "crop"):
                summary.timings[stage] += prepared.timings[stage]
            if group and (models_for(group[0].image_id) is not models_for(image_id)):
                flush()
            group.append(prepared)
            if sum(p.n_cells for p in group) >= config.group_cells or len(group) >= config.max_group_images:
                flush()
        flush()
        bar.close()
        if sub is not None:
            missing = [i for i in sub.missing if i not in summary.placeholders]
            for image_id in missing:
                summary.placeholders[image_id] = "not among the images scored"
            sub.close()
        if table is not None:
            table.close()
    except BaseException:
        if sub is not None:
            sub.abort()
        if table is not None:
            table.abort()
        raise
    summary.wall_s = time.monotonic() - start
    return summary


def _write(prepared: _Prepared, scores: np.ndarray, source: str, sub, table) -> None:
    cell_ids = prepared.rows["cell_id"].to_numpy(dtype=np.int64)
    if table is not None:
        table.add_image(prepared.image_id, cell_ids, scores, mask_key=prepared.mask_key, source=source)
    if sub is not None:
        _add_submission_row(sub, prepared, cell_ids, scores)


def _add_submission_row(sub, prepared: _Prepared, cell_ids: np.ndarray, scores: np.ndarray) -> None:
    """Explicit cell ids; the scores' mask_key (of the entry the crops were cut from) must be the encoded maps'."""
    sub.add(prepared.image_id, prepared.cells, scores, cell_ids=cell_ids, mask_key=prepared.mask_key,
            expected_mask_key=prepared.mask_key)


