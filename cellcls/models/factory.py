"""``create_model``: any timm backbone, one of the registered heads, optional local weights.

A head name in :data:`HEADS` maps to a small *assembler* ``(name, *, in_chans, num_classes, drop_rate,
timm_kwargs, **head_kwargs) -> (backbone, head)``; ``head`` is ``None`` when timm's own classifier is kept.
Registering a new head is one decorated function.
"""
from __future__ import annotations

import difflib
import logging
from typing import Any, Callable, Mapping

import timm
import torch
from torch import nn

from ..classes import NUM_CHANNELS, NUM_CLASSES
from ..errors import RegistryError
from ..registry import Registry
from .heads import BestfittingHead2019, EmbeddingHead2019

__all__ = ["CellModel", "HEADS", "create_model", "list_models", "list_heads"]

_logger = logging.getLogger(__name__)

Assembler = Callable[..., "tuple[nn.Module, nn.Module | None]"]
HEADS: Registry[Assembler] = Registry("model head")


class CellModel(nn.Module):
    """A timm backbone and a head; what :func:`create_model` returns.

    Attributes
    ----------
    backbone : nn.Module
        The timm model (with its own classifier for ``head='timm'``, feature-only otherwise).
    head : nn.Module or None
        The head over the feature map; ``None`` means timm's own ``forward_head``.
    config : dict
        The keyword arguments that rebuild this architecture with ``create_model(**config)`` (timm
        keyword arguments spread in; no weights, no file paths): what a training module should store in
        its hyper-parameters, e.g. as ``hparams['model']``.
    num_classes : int
        Length of the output of :meth:`forward`.
    num_features : int
        Length of the output of :meth:`embed`.

    State-dict keys are ``backbone.*`` and ``head.*``.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None, *, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = dict(config)
        self.in_chans = int(self.config["in_chans"])
        self.num_classes = int(self.config["num_classes"])
        self.num_features = int(head.num_features if head is not None else backbone.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone feature map: ``(N, in_chans, H, W)`` float -> ``(N, C, H/s, W/s)`` (s = stride, often 32)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images (N, {self.in_chans}, H, W); got shape {tuple(x.shape)}"
            )
        return self.backbone.forward_features(x)

    def forward_head(self, features: torch.Tensor, *, pre_logits: bool = False) -> torch.Tensor:
        """Head on a feature map: logits ``(N, num_classes)``, or ``(N, num_features)`` with ``pre_logits``."""
        if self.head is None:
            return self.backbone.forward_head(features, pre_logits=pre_logits)
        return self.head(features, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, in_chans, H, W)`` float -> logits ``(N, num_classes)`` (cosines for ``embedding2019``)."""
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features before the last layer, ``(N, num_features)``: timm's pooled features for ``head='timm'``,
        the hidden layer for ``bestfitting2019``, the 512-d embedding for ``embedding2019``."""
        return self.forward_head(self.forward_features(x), pre_logits=True)


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean one of: {', '.join(close)}" if close else ""
    raise RegistryError(
        f"unknown timm model {name!r}{hint}. cellcls.models.list_models('*pattern*') lists the names."
    )


def _features_backbone(name: str, in_chans: int, timm_kwargs: Mapping[str, Any]) -> nn.Module:
    if "global_pool" in timm_kwargs:
        raise ValueError("global_pool is set by the 2019 heads themselves (avg+max); drop it from timm_kwargs")
    return timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=0, global_pool="",
                             **timm_kwargs)


@HEADS.register("timm")
def _timm_head(name: str, *, in_chans: int, num_classes: int, drop_rate: float | None,
               timm_kwargs: Mapping[str, Any]) -> tuple[nn.Module, None]:
    """timm's own pooling and classifier; ``drop_rate`` is timm's (dropout before the classifier, default 0)."""
    extra = {} if drop_rate is None else {"drop_rate": drop_rate}
    backbone = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes,
                                 **extra, **timm_kwargs)
    return backbone, None


@HEADS.register("bestfitting2019")
def _bestfitting_head(name: str, *, in_chans: int, num_classes: int, drop_rate: float | None,
                      timm_kwargs: Mapping[str, Any], **head_kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """:class:`~cellcls.models.heads.BestfittingHead2019`; ``drop_rate`` is its last dropout (default 0.5)."""
    backbone = _features_backbone(name, in_chans, timm_kwargs)
    extra = {} if drop_rate is None else {"drop_rate": drop_rate}
    return backbone, BestfittingHead2019(backbone.num_features, num_classes, **extra, **head_kwargs)


@HEADS.register("embedding2019")
def _embedding_head(name: str, *, in_chans: int, num_classes: int, drop_rate: float | None,
                    timm_kwargs: Mapping[str, Any], **head_kwargs: Any) -> tuple[nn.Module, nn.Module]:
    """:class:`~cellcls.models.heads.EmbeddingHead2019` (``embedding_dim=512``); ``drop_rate`` default 0.5."""
    backbone = _features_backbone(name, in_chans, timm_kwargs)
    extra = {} if drop_rate is None else {"drop_rate": drop_rate}
    return backbone, EmbeddingHead2019(backbone.num_features, num_classes, **extra, **head_kwargs)


def create_model(
    name: str,
    *,
    in_chans: int = NUM_CHANNELS,
    num_classes: int = NUM_CLASSES,
    head: str = "timm",
    pretrained_file: str | None = None,
    drop_rate: float | None = None,
    head_kwargs: Mapping[str, Any] | None = None,
    **timm_kwargs: Any,
) -> CellModel:
    """Build a classifier over any timm backbone; weights only ever come from a local file.

    Parameters
    ----------
    name : str
        A timm model name (``cellcls.models.list_models('resnet*')``), e.g. ``'densenet121'`` as in 2019.
    in_chans : int
        Image channels (4 = red, green, blue, yellow).
    num_classes : int
        Outputs of ``forward`` (19 HPA 2021 classes; antibody ids for ``embedding2019``).
    head : str
        ``'timm'`` (timm's pooling and classifier), ``'bestfitting2019'``, ``'embedding2019'``
        (see :mod:`cellcls.models.heads`); ``list_heads()`` lists them.
    pretrained_file : str or PathLike, optional
        Local weights laid over the new model (see :func:`cellcls.models.load_pretrained`): a timm/ImageNet
        state dict (.pth/.pt/.bin/.safetensors; stem adapted to ``in_chans``, classifier left fresh) or one
        of our Lightning ``.ckpt`` files. Nothing is ever downloaded.
    drop_rate : float, optional
        Dropout before the last layer; ``None`` = the head's default (timm: 0, 2019 heads: 0.5).
    head_kwargs : mapping, optional
        Options of the head, e.g. ``{'embedding_dim': 256}`` or ``{'hidden_dim': 1024}``.
    **timm_kwargs
        Passed to ``timm.create_model`` (e.g. ``drop_path_rate=0.1``). ``pretrained`` is refused.

    Returns
    -------
    CellModel
        ``forward``: ``(N, in_chans, H, W)`` float -> ``(N, num_classes)`` float (logits; cosines in [-1, 1]
        for ``embedding2019``). In training mode, as ``nn.Module`` objects are.

    Raises
    ------
    RegistryError
        Unknown timm name or head (the message lists close names / the heads).
    WeightsNotFoundError, WeightsError
        ``pretrained_file`` is missing, unreadable, or does not fit.
    ValueError
        ``pretrained=True`` in ``timm_kwargs``.

    Examples
    --------
    >>> model = create_model("resnet18", head="bestfitting2019")
    >>> model(torch.zeros(2, 4, 64, 64)).shape
    torch.Size([2, 19])
    """
    if timm_kwargs.pop("pretrained", False):
        raise ValueError(
            "cellcls never downloads weights: pass pretrained_file='path/to/weights.safetensors' "
            "(a timm/ImageNet state dict kept on disk) instead of pretrained=True"
        )
    _check_name(name)
    assemble = HEADS.get(head)
    head_kwargs = dict(head_kwargs or {})
    backbone, head_module = assemble(name, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate,
                                     timm_kwargs=timm_kwargs, **head_kwargs)
    config = dict(name=name, head=head, in_chans=in_chans, num_classes=num_classes, drop_rate=drop_rate,
                  head_kwargs=head_kwargs, **timm_kwargs)
    model = CellModel(backbone, head_module, config=config)
    if pretrained_file is not None:
        from .pretrained import load_pretrained

        load_pretrained(model, pretrained_file)
    return model


def list_models(pattern: str = "*", **kwargs: Any) -> list[str]:
    """timm model names matching a glob ``pattern`` (``timm.list_models``), e.g. ``'efficientnet_b*'``."""
    return timm.list_models(pattern, **kwargs)


def list_heads() -> list[str]:
    """Names accepted by ``create_model(head=...)``."""
    return HEADS.names()
