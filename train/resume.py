"""What makes ``--resume last`` continue a killed run exactly: a current ``last.ckpt`` and the RNG states.

Two Lightning callbacks, both installed by :class:`train.cli.TrainCLI`:

* :class:`LatestCheckpoint` is the ``checkpoint`` section's ``ModelCheckpoint``, with ``last.ckpt``
  rewritten after every validation (every epoch end when there is none). Lightning 2.6 writes
  ``last.ckpt`` only at a step where a top-k file is written too, so with ``save_top_k: 1`` on a
  monitored metric it stopped following the run after the best epoch and a resume went back there.
* :class:`RngState` stores the global RNG states (torch CPU and CUDA, numpy, ``random``) in every
  checkpoint and puts them back when a run resumes from it, so the next epoch's
  shuffle (the ``RandomSampler`` seeds itself from torch's global generator) is the one the
  uninterrupted run drew. Together, a run killed after an epoch's checkpoint and resumed ends with
  the same weights as one never killed, on CPU with ``num_workers: 0`` and ``augment: none``.
  Not covered: augmented runs (their pipelines are seeded, train.augment, so uninterrupted runs
  repeat, but a resumed run restarts each stream) and DataLoader worker processes, which draw their
  seeds when they start.

States are stored as plain tensors and lists: checkpoints stay readable with
``torch.load(weights_only=True)``.

Plus :class:`SameFolderCheckpointIO`, the trainer's checkpoint writer: Lightning's own writes the temp
file to the SYSTEM temp folder and moves it into place, a copy when that is another file system (a
kill during it leaves a truncated ``last.ckpt``); this one writes the temp file beside the target and
renames it (:func:`os.replace`), so a checkpoint file is always the old one or the new one.
"""
from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from cellcls.atomic import atomic_file, remove_stale_temp_files

__all__ = ["LatestCheckpoint", "RngState", "SameFolderCheckpointIO"]


class LatestCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (``save_last: true``) is the latest state, improved or not.

    Same arguments as ``ModelCheckpoint``. ``save_last: link`` keeps Lightning's own behaviour.
    """

    @property
    def state_key(self) -> str:
        # ModelCheckpoint's key (the class name is part of it): runs saved before this class resume fully.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._catch_up_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._catch_up_last(trainer)

    def _catch_up_last(self, trainer: pl.Trainer) -> None:
        # Skipped when this step is saved already (a new best wrote last.ckpt with it), in sanity checks
        # and outside fit.
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class RngState(pl.Callback):
    """Saves the global RNG states in each checkpoint; restoring a checkpoint puts them back.

    Lightning restores callbacks before it builds the training loops, so the states are back before the
    resumed epoch's DataLoader draws its seeds, as in the uninterrupted run after the same checkpoint.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        n = state_dict["numpy"]
        np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        p = state_dict["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


class SameFolderCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes go to a temp file in the checkpoint's folder, then ``os.replace``.

    Remote paths (``s3://`` ...) keep Lightning's writer. Installed by :class:`train.cli.TrainCLI`
    in place of the default ``TorchCheckpointIO``. Before its first write to a folder it removes the
    temp files a killed save left there (:func:`cellcls.atomic.remove_stale_temp_files`: an hour old).
    """

    def __init__(self) -> None:
        super().__init__()
        self._swept: set[str] = set()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in self._swept:
            remove_stale_temp_files(folder)
            self._swept.add(folder)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)
