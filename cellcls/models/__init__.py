"""Image classifiers: any timm backbone, the 2019 heads, weights from local files only.

Typical use (the files are yours; nothing is downloaded)::

    from cellcls.models import create_model, load_model_from_checkpoint
    model = create_model("densenet121", head="bestfitting2019", pretrained_file="densenet121.safetensors")
    model, hparams = load_model_from_checkpoint("fold0.ckpt")  # inference: the checkpoint is all it needs

``create_model`` (:mod:`.factory`) assembles a :class:`CellModel` from a timm name and a head registered in
:data:`HEADS` (``'timm'``, ``'bestfitting2019'``, ``'embedding2019'``; :mod:`.heads`); :mod:`.pretrained`
lays local weight files over it (an ImageNet stem adapted to 4 channels, or our own checkpoints).
"""
from .factory import HEADS, CellModel, create_model, list_heads, list_models
from .heads import ArcMarginProduct, BestfittingHead2019, ConcatPool2d, EmbeddingHead2019
from .pretrained import load_model_from_checkpoint, load_pretrained, model_config_from_hparams, read_checkpoint

__all__ = [
    "HEADS",
    "CellModel",
    "create_model",
    "list_heads",
    "list_models",
    "ArcMarginProduct",
    "BestfittingHead2019",
    "ConcatPool2d",
    "EmbeddingHead2019",
    "load_model_from_checkpoint",
    "load_pretrained",
    "model_config_from_hparams",
    "read_checkpoint",
]
