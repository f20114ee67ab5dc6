"""Segmentation on many GPUs or nodes with PyTorch Lightning (``Trainer.predict``, DDP).

Same per-batch work as :mod:`segment.pipeline` (DataLoader decode -> backend network ->
``label_cell`` -> cache write), run by a LightningModule's ``predict_step`` in every rank. Each
rank segments its own share ``todo[rank::world_size]`` of the IDs to do and writes those cache
entries itself (cache writes are atomic per file, ranks touch disjoint IDs); rank 0 rebuilds
``manifest.csv`` once all ranks are done.

Command line (``cellcls segment`` switches to this path when ``--devices`` > 1 or
``--num-nodes`` > 1)::

    cellcls segment --images test/ --out masks/ --backend hpa --device cuda --devices 4
    # two nodes of 8 GPUs (run on every node, with MASTER_ADDR, MASTER_PORT, NODE_RANK set,
    # or under SLURM's srun, which Lightning detects):
    cellcls segment --images test/ --out masks/ --device cuda --devices 8 --num-nodes 2

Every rank re-runs the command (Lightning's DDP launcher re-executes the script), builds its own
backend (weights are read once per rank) and computes the same to-do list before any rank
writes (a barrier separates the two).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable

import pytorch_lightning as pl
import torch
from torch import nn

from cellcls.masks import MaskCache
from segment.pipeline import (
    ImageRecord,
    SegmentDataset,
    SegmentSummary,
    label_and_write,
    make_loader,
    segment_records,
)

__all__ = ["SegmentModule", "SegmentDataModule", "run_segmentation_lightning"]

log = logging.getLogger(__name__)


class SegmentModule(pl.LightningModule):
    """Wraps a segmentation backend; ``predict_step`` segments one batch and writes the cache.

    The backend's networks are registered as submodules so Lightning moves them to the rank's
    device. ``predict_step`` returns ``[(image_id, n_cells or None, error or None), ...]``; as in
    the plain loop, a batch the network fails on (CUDA out of memory...) is retried image by image
    and an image that fails alone too is recorded as failed while the rank goes on.
    """

    def __init__(self, backend: Any, cache_root: str | Path) -> None:
        super().__init__()
        self.backend = backend
        self.networks = nn.ModuleList(backend.modules())
        self.cache = MaskCache(cache_root)
        self.common = dict(scale=backend.scale, backend=backend.name, params_hash=backend.params_hash(),
                           params=backend.key_params())

    def predict_step(self, batch: list[ImageRecord], batch_idx: int) -> list[tuple[str, int | None, str | None]]:
        if getattr(self.backend, "predictor", None) is not None and self.backend.predictor.device != self.device:
            self.backend.to(self.device)
        outcomes: list[tuple[str, int | None, str | None]] = []
        segment_records(
            batch,
            self.backend,
            submit=lambda *args, **kwargs: outcomes.append(label_and_write(*args, **kwargs)),
            on_failure=lambda image_id, error: outcomes.append((image_id, None, error)),
            cache=self.cache,
            common=self.common,
        )
        for image_id, _, error in outcomes:
            if error is not None:
                log.error("%s; skipped", error)
        return outcomes


class SegmentDataModule(pl.LightningDataModule):
    """The IDs still to segment, split across ranks (``todo[rank::world_size]``, no padding)."""

    def __init__(
        self,
        images_dir: str | Path,
        ids: list[str],
        cache_root: str | Path,
        params_hash: str,
        *,
        params: dict[str, Any] | None = None,
        scale: float,
        batch_size: int,
        num_workers: int,
        overwrite: bool,
    ) -> None:
        super().__init__()
        self.images_dir = Path(images_dir)
        self.ids = ids
        self.cache = MaskCache(cache_root)
        self.params_hash = params_hash
        self.params = params
        self.scale = scale
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.overwrite = overwrite
        self.todo: list[str] = []
        self.share: list[str] = []

    def setup(self, stage: str) -> None:
        self.todo = self.cache.todo(self.ids, self.params_hash, overwrite=self.overwrite)
        if self.trainer.is_global_zero:
            mixing = self.cache.mixing_warning(self.params_hash, params=self.params, replacing=self.todo)
            if mixing:
                log.warning(mixing)
        # Every rank must see the to-do list before any rank writes an entry.
        self.trainer.strategy.barrier("segment-todo")
        rank, world = self.trainer.global_rank, self.trainer.world_size
        self.share = self.todo[rank::world]
        log.info("rank %d/%d: %d of %d image(s) to segment", rank, world, len(self.share), len(self.todo))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # numpy records; the backend moves what it needs

    def predict_dataloader(self) -> Any:
        dataset = SegmentDataset(self.images_dir, self.share, scale=self.scale,
                                 threads=1 if self.num_workers > 0 else None)
        return make_loader(dataset, batch_size=self.batch_size, num_workers=self.num_workers)


def run_segmentation_lightning(
    images_dir: str | Path,
    out_dir: str | Path,
    backend: Any,
    *,
    ids: Iterable[str] | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    overwrite: bool = False,
    devices: int = 1,
    num_nodes: int = 1,
    accelerator: str = "auto",
    progress: bool = True,
) -> SegmentSummary | None:
    """Like :func:`segment.pipeline.run_segmentation`, under ``Trainer.predict`` with DDP.

    Returns the summary on global rank 0 (built from the cache once every rank is done) and
    None on the other ranks. ``accelerator``: "cpu", "gpu"/"cuda" or "auto".
    """
    from cellcls.io import list_image_ids

    all_ids = list(dict.fromkeys(ids)) if ids is not None else list_image_ids(images_dir)
    key = backend.params_hash()
    data = SegmentDataModule(images_dir, all_ids, out_dir, key, params=backend.key_params(), scale=backend.scale,
                             batch_size=batch_size, num_workers=num_workers, overwrite=overwrite)
    module = SegmentModule(backend, out_dir)
    distributed = devices * num_nodes > 1
    trainer = pl.Trainer(
        accelerator="gpu" if accelerator == "cuda" else accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy="ddp" if distributed else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        use_distributed_sampler=False,  # the DataModule splits the IDs itself, without duplicates
        inference_mode=True,
    )
    start = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    trainer.strategy.barrier("segment-done")
    seconds = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    cache = MaskCache(out_dir)
    cache.write_manifest()
    statuses = {image_id: cache.status(image_id, key) for image_id in data.todo}
    failed_ids = [i for i, s in statuses.items() if s != "ok"]
    manifest = cache.manifest()
    done = manifest["ID"].isin([i for i, s in statuses.items() if s == "ok"])
    cells = int(manifest.loc[done, "n_cells"].fillna(0).sum())
    return SegmentSummary(
        requested=len(all_ids),
        done=len(data.todo) - len(failed_ids),
        skipped=len(all_ids) - len(data.todo),
        failed=len(failed_ids),
        backend=f"{backend.describe()} x {devices * num_nodes} rank(s) (Lightning)",
        seconds=seconds,
        cache_dir=Path(out_dir),
        failed_ids=failed_ids,
        cells=cells,
    )
