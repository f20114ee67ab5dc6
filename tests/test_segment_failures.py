"""A network failure (CUDA out of memory, any RuntimeError of ``predict``) costs one image, not the run.

What a user relies on: the batch the network failed on is retried image by image, so its other
images are segmented as in a clean run; the image that fails alone too is logged by ID and recorded
as "failed" in the cache (a re-run redoes it); the run goes on and ends with exit code 3; the
Lightning (DDP) path does the same.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
import torch

from cellcls.io import list_image_ids, read_image_resized
from cellcls.masks import MaskCache
from segment.backends import ClassicalBackend
from segment.pipeline import EXIT_FAILURES, EXIT_OK, run_segmentation

N_IMAGES = 6
BATCH = 3
POISONED = 1  # index of the image the network "cannot take", in the first batch


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """6 train images of 192² at image scale 0.25."""
    from cellcls.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n_train=N_IMAGES, n_test=0, size_px=192, seed=5, progress=False)
    return out


class PoisonedBackend(ClassicalBackend):
    """The classical backend whose device part raises for every batch holding one given image.

    The image is recognised by its pixels (``predict`` sees arrays, not IDs). ``events`` logs each
    ``predict`` call as ``("predict", batch size)``.
    """

    def __init__(self, poison: np.ndarray, *, error: type[RuntimeError] = RuntimeError,
                 message: str = "CUDA out of memory. Tried to allocate 2.00 GiB", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.poison = poison
        self.error = error
        self.message = message
        self.events: list[tuple[str, int]] = []

    def predict(self, images: Sequence[np.ndarray]) -> list[Any]:
        self.events.append(("predict", len(images)))
        if any(image.shape == self.poison.shape and np.array_equal(image, self.poison) for image in images):
            raise self.error(self.message)
        return super().predict(images)


def poisoned_backend(world: Path, **kwargs: Any) -> tuple[PoisonedBackend, str]:
    ids = list_image_ids(world / "train")
    image, _ = read_image_resized(world / "train", ids[POISONED], scale=1.0)
    return PoisonedBackend(image, scale=1.0, image_scale=0.25, **kwargs), ids[POISONED]


def arrays(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = MaskCache(root)
    return {i: (e.cells, e.nuclei) for i in cache.ok_ids() for e in [cache.read(i)]}


@pytest.fixture(scope="module")
def clean(world, tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = tmp_path_factory.mktemp("clean")
    summary = run_segmentation(world / "train", out, ClassicalBackend(scale=1.0, image_scale=0.25),
                               batch_size=BATCH, num_workers=0, progress=False)
    assert summary.exit_code == EXIT_OK
    masks = arrays(out)
    assert len(masks) == N_IMAGES and all(cells.max() > 0 for cells, _ in masks.values())
    return masks


def test_failed_batch_is_retried_one_by_one_and_only_the_poisoned_image_fails(world, clean, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    backend, poisoned = poisoned_backend(world)
    out = tmp_path / "masks"
    summary = run_segmentation(world / "train", out, backend, batch_size=BATCH, num_workers=0, progress=False)

    assert summary.exit_code == EXIT_FAILURES == 3
    assert summary.failed == 1 and summary.failed_ids == [poisoned]
    assert summary.done == N_IMAGES - 1
    # Batch of 3 fails, its images go one by one, the second batch runs whole.
    assert backend.events == [("predict", 3), ("predict", 1), ("predict", 1), ("predict", 1), ("predict", 3)]
    cache = MaskCache(out)
    key = backend.params_hash()
    statuses = {i: cache.status(i, key) for i in list_image_ids(world / "train")}
    assert statuses.pop(poisoned) == "failed"
    assert set(statuses.values()) == {"ok"}
    # The retried images are the masks a clean run makes.
    got = arrays(out)
    assert set(got) == set(clean) - {poisoned}
    for image_id, (cells, nuclei) in got.items():
        assert np.array_equal(cells, clean[image_id][0]) and np.array_equal(nuclei, clean[image_id][1])
    manifest = cache.manifest().set_index("ID")
    assert manifest.loc[poisoned, "status"] == "failed"
    failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and poisoned in failures[0] and "out of memory" in failures[0]

    # The failure is not final: a re-run with a healthy network redoes exactly that image.
    healthy = ClassicalBackend(scale=1.0, image_scale=0.25)
    rerun = run_segmentation(world / "train", out, healthy, batch_size=BATCH, num_workers=0, progress=False)
    assert (rerun.skipped, rerun.done, rerun.exit_code) == (N_IMAGES - 1, 1, EXIT_OK)
    assert np.array_equal(MaskCache(out).read(poisoned).cells, clean[poisoned][0])


def test_cuda_out_of_memory_releases_the_cuda_cache_before_each_retry(world, tmp_path, monkeypatch):
    backend, poisoned = poisoned_backend(world, error=torch.cuda.OutOfMemoryError)
    real_empty_cache = torch.cuda.empty_cache  # a no-op while CUDA is not initialised

    def empty_cache() -> None:
        backend.events.append(("empty_cache", 0))
        real_empty_cache()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    first_batch = list_image_ids(world / "train")[:BATCH]
    summary = run_segmentation(world / "train", tmp_path / "masks", backend, ids=first_batch, batch_size=BATCH,
                               num_workers=0, progress=False)
    assert summary.failed_ids == [poisoned] and summary.exit_code == EXIT_FAILURES
    assert backend.events == [
        ("predict", 3), ("empty_cache", 0),  # the batch: out of memory
        ("predict", 1), ("predict", 1), ("empty_cache", 0), ("predict", 1),  # the poisoned one, alone
    ]


def test_other_runtime_errors_are_retried_without_touching_cuda(world, tmp_path, monkeypatch):
    backend, poisoned = poisoned_backend(world, message="cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: backend.events.append(("empty_cache", 0)))
    first_batch = list_image_ids(world / "train")[:BATCH]
    summary = run_segmentation(world / "train", tmp_path / "masks", backend, ids=first_batch, batch_size=BATCH,
                               num_workers=0, progress=False)
    assert summary.failed_ids == [poisoned]
    assert backend.events == [("predict", 3), ("predict", 1), ("predict", 1), ("predict", 1)]


def test_lightning_path_retries_and_records_the_failure_too(world, clean, tmp_path, caplog):
    from segment.lightning import run_segmentation_lightning

    caplog.set_level(logging.ERROR)
    backend, poisoned = poisoned_backend(world)
    out = tmp_path / "lightning"
    summary = run_segmentation_lightning(world / "train", out, backend, batch_size=BATCH, num_workers=0,
                                         accelerator="cpu", progress=False)
    assert summary is not None
    assert summary.failed_ids == [poisoned] and summary.exit_code == EXIT_FAILURES
    assert summary.done == N_IMAGES - 1
    assert backend.events[:4] == [("predict", 3), ("predict", 1), ("predict", 1), ("predict", 1)]
    assert MaskCache(out).status(poisoned, backend.params_hash()) == "failed"
    got = arrays(out)
    assert set(got) == set(clean) - {poisoned}
    assert all(np.array_equal(got[i][0], clean[i][0]) for i in got)
    assert any(poisoned in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
