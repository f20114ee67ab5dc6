"""Training augmentation is seeded: same seed, same stream; other seed, worker or epoch, another stream.

albumentations 2.x transforms draw from the Compose's own generators, not from numpy's or torch's
global state, so ``seed_everything`` alone never made two augmented runs repeat. The pipelines of
:func:`train.augment.build_transform` seed themselves from ``seed`` (default: ``torch.initial_seed()``,
which ``seed_everything`` sets) mixed with the DataLoader worker's seed (distinct per worker, and per
epoch unless the workers persist, in which case each worker's stream simply continues).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from train.augment import AUGMENTATIONS, build_transform

RANDOM = [name for name in AUGMENTATIONS.names() if name != "none"]


def _images(n: int = 6, side: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 1, (side, side, 4)).astype(np.float32) for _ in range(n)]


def _stream(transform, images) -> np.ndarray:
    return np.stack([transform(image) for image in images])


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_augmentations_other_seed_others(name):
    images = _images()
    first = _stream(build_transform(name, train=True, size=32, crop=24, seed=7), images)
    again = _stream(build_transform(name, train=True, size=32, crop=24, seed=7), images)
    other = _stream(build_transform(name, train=True, size=32, crop=24, seed=8), images)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert len({a.tobytes() for a in first}) == len(images)  # one stream: each call draws anew


def test_default_seed_follows_seed_everything():
    import pytorch_lightning as pl

    images = _images()
    pl.seed_everything(3, verbose=False)
    first = _stream(build_transform("seed002", train=True, size=32), images)
    pl.seed_everything(3, verbose=False)
    again = _stream(build_transform("seed002", train=True, size=32), images)
    pl.seed_everything(4, verbose=False)
    other = _stream(build_transform("seed002", train=True, size=32), images)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_evaluation_form_has_no_randomness():
    images = _images(2)
    a = _stream(build_transform("seed002", train=False, size=32, seed=1), images)
    b = _stream(build_transform("seed002", train=False, size=32, seed=2), images)
    assert np.array_equal(a, b)


class _Same(Dataset):
    """The same image ``n`` times: any difference between items is the augmentation's."""

    def __init__(self, transform, n: int) -> None:
        self.transform, self.image, self.n = transform, _images(1)[0], n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        return torch.from_numpy(self.transform(self.image)), index


def _epochs(loader: DataLoader, epochs: int) -> list[dict[int, bytes]]:
    out = []
    for _ in range(epochs):
        seen = {}
        for x, index in loader:
            seen.update({int(i): a.numpy().tobytes() for i, a in zip(index, x)})
        out.append(seen)
    return out


@pytest.mark.parametrize("persistent", [False, True])
def test_workers_and_epochs_get_their_own_streams_and_runs_repeat(persistent):
    def run() -> list[dict[int, bytes]]:
        torch.manual_seed(11)
        dataset = _Same(build_transform("d4", train=True, size=16, seed=5), n=16)
        loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=persistent,
                            multiprocessing_context="fork")
        return _epochs(loader, 2)

    first, again = run(), run()
    assert first == again  # the same seeds: the same augmented items, worker processes or not
    by_worker = [[first[0][i] for i in range(b, b + 4)] for b in (0, 4)]  # batch 0 -> worker 0, batch 1 -> worker 1
    assert by_worker[0] != by_worker[1]  # not one stream copied into every worker
    assert [first[0][i] for i in range(16)] != [first[1][i] for i in range(16)]  # epoch 2 is not epoch 1 again
