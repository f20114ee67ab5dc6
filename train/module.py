"""``CellClassifier``: the LightningModule of ``cellcls train`` (image or cell multilabel classifier).

Its typed ``__init__`` IS the model section of the config (``--model.KEY``); ``save_hyperparameters()``
stores those plain values in every checkpoint, so :func:`cellcls.models.load_model_from_checkpoint`
rebuilds the network (state-dict keys ``model.*``) from the file alone.

Each validation epoch, on all validation samples (gathered over DDP ranks):

* ``val/loss`` (the training loss) and ``val/focal`` (focal loss, gamma 2: the 2019 selection metric),
* ``val/macro_f1``, ``val/micro_f1`` at 0.5 and ``val/macro_f1_rate`` at the rate-matching thresholds,
  beside ``val/prior_macro_f1`` (the best input-blind guess, :func:`train.metrics.prior_macro_f1`),
* ``val/ap_XX`` per class and their mean ``val/class_map``,
* ``val/cell_map``: mAP@0.6 of the validation cells, for the cell task on data with per-cell truth,
  beside ``val/cell_map_broadcast``: the same cells scored with their image's labels (the weak baseline).

Per-class thresholds that make the predicted positive rate on validation equal the training rate
(2019) are recomputed each epoch and saved in the checkpoint under ``"cellcls"`` with what inference
needs: classes, task, crop mode and size, channel statistics, model config and the ``mask_key``.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from cellcls.classes import NUM_CHANNELS, NUM_CLASSES
from cellcls.errors import CellclsError

from .metrics import f1_scores, per_class_ap, prior_macro_f1
from .schedules import make_schedule
from .thresholds import rate_matching_thresholds

__all__ = ["CellClassifier", "CHECKPOINT_KEY", "OPTIMIZERS"]

log = logging.getLogger(__name__)

#: Key of the inference metadata in our checkpoints.
CHECKPOINT_KEY = "cellcls"
#: Checkpoint metadata format version.
FORMAT_VERSION = 1
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class CellClassifier(pl.LightningModule):
    """Multilabel classifier over a timm backbone.

    Parameters
    ----------
    backbone : str
        timm model name (``resnet18``, ``efficientnet_b0``, ``seresnext26d_32x4d``, ``densenet121``).
    head : str
        ``timm`` or ``bestfitting2019`` (see :func:`cellcls.models.create_model`).
    in_chans, num_classes : int
    pretrained_file : str, optional
        Local weights laid over the new network (ImageNet state dict or one of our checkpoints).
    drop_rate : float, optional
        Dropout before the last layer (None = the head's default).
    head_kwargs, timm_kwargs : dict, optional
        Passed on to ``create_model``.
    loss : str or dict
        A name of :func:`cellcls.losses.create_loss` or its config mapping (``{name: focal, gamma: 2}``).
    optimizer : {"adam", "adamw"}
    lr, weight_decay : float
        Base learning rate and weight decay.
    schedule : str
        ``cosine``, ``step``, ``bestfitting2019`` or ``constant`` (:mod:`train.schedules`).
    warmup_epochs, min_lr : float
        Linear warm-up length; cosine floor.
    step_epochs, step_lrs : list of float, optional
        The ``step`` schedule: durations (epochs) and absolute learning rates.
    channels_last : bool
        Use channels-last memory format on GPU.
    """

    #: validation figures shown on the progress bar (the rest only in the logs)
    PROGRESS_METRICS: tuple[str, ...] = ("focal", "macro_f1", "cell_map")

    def __init__(
        self,
        backbone: str = "resnet18",
        head: str = "timm",
        in_chans: int = NUM_CHANNELS,
        num_classes: int = NUM_CLASSES,
        pretrained_file: str | None = None,
        drop_rate: float | None = None,
        head_kwargs: dict[str, Any] | None = None,
        timm_kwargs: dict[str, Any] | None = None,
        loss: str | dict[str, Any] = "bce",
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        schedule: str = "cosine",
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
        step_epochs: list[float] | None = None,
        step_lrs: list[float] | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        from cellcls.losses import create_loss
        from cellcls.models import create_model

        if optimizer not in OPTIMIZERS:
            raise CellclsError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        self.save_hyperparameters()
        self.model = create_model(backbone, in_chans=in_chans, num_classes=num_classes, head=head,
                                  pretrained_file=pretrained_file, drop_rate=drop_rate, head_kwargs=head_kwargs,
                                  **(timm_kwargs or {}))
        self.criterion = create_loss(loss)
        self.focal = create_loss("focal")
        self.thresholds: list[float] | None = None
        self.data_meta: dict[str, Any] = {}
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._broadcast_map: float | None = None

    # --------------------------------------------------------------- forward
    def _on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, S, S)`` float -> ``(N, num_classes)`` logits."""
        if self.hparams.channels_last and self._on_gpu():
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_fit_start(self) -> None:
        if self.hparams.channels_last and self._on_gpu():
            self.model.to(memory_format=torch.channels_last)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "inference_metadata"):
            self.data_meta = datamodule.inference_metadata()

    # --------------------------------------------------------------- steps
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        loss = self.criterion(self(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y, index = batch
        self._val_outputs.append((self(x).float().detach(), y.float(), index))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return torch.sigmoid(self(x).float())

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def _gathered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every validation sample once, in dataset order: (logits (N, C), targets (N, C)), on CPU."""
        logits = torch.cat([o[0] for o in self._val_outputs])
        targets = torch.cat([o[1] for o in self._val_outputs])
        index = torch.cat([o[2] for o in self._val_outputs])
        if self.trainer.world_size > 1:  # DistributedSampler pads with repeats; all ranks hold the same count
            logits, targets, index = (t.flatten(0, 1) if t.dim() > 2 else t.flatten()
                                      for t in self.all_gather((logits, targets, index)))
            logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1, targets.shape[-1])
        index = index.long().cpu()
        order = torch.argsort(index, stable=True)
        index, logits, targets = index[order], logits.cpu()[order], targets.cpu()[order]
        keep = torch.ones_like(index, dtype=torch.bool)
        keep[1:] = index[1:] != index[:-1]
        return logits[keep], targets[keep]

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs or self.trainer.sanity_checking:
            self._val_outputs = []
            return
        logits, targets = self._gathered()
        self._val_outputs = []
        metrics = self.validation_metrics(logits, targets)
        shown = self.PROGRESS_METRICS
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if k in shown}, prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in metrics.items() if k not in shown})
        log.info("epoch %d: %s", self.current_epoch,
                 ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("ap_")))

    @torch.no_grad()
    def validation_metrics(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Every validation figure (see the module docstring) from all (N, C) logits and targets.

        Also updates ``self.thresholds`` (rate matching on these predictions).
        """
        probs = torch.sigmoid(logits).numpy().astype(np.float64)
        y = targets.numpy()
        out: dict[str, float] = {
            "loss": float(self.criterion(logits, targets)),
            "focal": float(self.focal(logits, targets)),
        }
        out.update(f1_scores(probs, y, 0.5))
        rate = self.data_meta.get("train_rate")
        rate = np.asarray(rate, dtype=np.float64) if rate is not None else y.mean(axis=0)
        self.thresholds = [float(t) for t in rate_matching_thresholds(probs, rate)]
        out["macro_f1_rate"] = f1_scores(probs, y, np.asarray(self.thresholds))["macro_f1"]
        out["prior_macro_f1"] = prior_macro_f1(y)
        ap = per_class_ap(probs, y)
        out["class_map"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else math.nan
        out.update({f"ap_{c:02d}": float(v) for c, v in enumerate(ap) if np.isfinite(v)})
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        cells = getattr(datamodule, "val_cells", None)
        if cells is not None:
            out["cell_map"] = cells.score(probs)
            if self._broadcast_map is None:  # the weak baseline: each cell scored with its image's labels
                self._broadcast_map = cells.score(y)
            out["cell_map_broadcast"] = self._broadcast_map
        return out

    # --------------------------------------------------------------- optimisation
    def configure_optimizers(self):
        hp = self.hparams
        optimizer = OPTIMIZERS[hp.optimizer](self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = steps / max_epochs
        spec = dict(name=hp.schedule, lr=hp.lr, max_epochs=max_epochs, warmup_epochs=hp.warmup_epochs,
                    min_lr=hp.min_lr, step_epochs=hp.step_epochs, step_lrs=hp.step_lrs)
        _schedule(**spec)  # bad names or step lists fail here, before training
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _PerStep(spec, steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------- checkpoints
    def inference_metadata(self) -> dict[str, Any]:
        """Plain-typed record of everything inference needs besides the weights."""
        return {
            "format_version": FORMAT_VERSION,
            "model": dict(self.model.config),
            "thresholds": self.thresholds,
            **self.data_meta,
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.inference_metadata()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get(CHECKPOINT_KEY) or {}
        self.thresholds = meta.get("thresholds")
        self.data_meta = {k: v for k, v in meta.items() if k not in ("format_version", "model", "thresholds")}


def _schedule(*, name: str, step_epochs=None, step_lrs=None, **options):
    return _cached_schedule(name, None if step_epochs is None else tuple(step_epochs),
                            None if step_lrs is None else tuple(step_lrs), tuple(sorted(options.items())))


@functools.lru_cache(maxsize=16)
def _cached_schedule(name, step_epochs, step_lrs, options):
    return make_schedule(name, step_epochs=step_epochs, step_lrs=step_lrs, **dict(options))


class _PerStep:
    """LambdaLR multiplier: optimizer step -> epoch fraction -> schedule factor.

    Holds only plain values (LambdaLR saves ``__dict__`` in the checkpoint, which must load with
    ``torch.load(weights_only=True)``); the schedule object is rebuilt from them (cached).
    """

    def __init__(self, spec: dict[str, Any], steps_per_epoch: float) -> None:
        self.spec = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in spec.items()}
        self.steps_per_epoch = float(steps_per_epoch)

    def __call__(self, step: int) -> float:
        return _schedule(**self.spec)(step / self.steps_per_epoch)
