"""The heads of the HPA 2019 winner (bestfitting), rebuilt over any timm CNN feature map.

Every head here takes the backbone's last feature map ``(N, C, h, w)`` float and pools it itself with
:class:`ConcatPool2d` (global average and global max side by side, ``(N, 2C)``). ``C`` is the backbone's
``num_features`` (1024 for DenseNet-121, 2048 for ResNet-50).

What the 2019 code does, and where this module departs from it
---------------------------------------------------------------
* Classifier (``networks/densenet.py``, ``dropout=True``): concat pool -> BN(2C) -> Dropout(0.5) ->
  FC(2C -> C) -> ReLU -> BN(C) -> Dropout(0.5) -> FC(C -> classes). The "FC(1024)" of the write-up is
  ``C`` of DenseNet-121, so the hidden width defaults to ``C`` here as in that code; both dropouts are 0.5
  there (the write-up leaves the second one unnamed).
* Embedding (``networks/resnet_ml.py``): concat pool -> BN(2C) -> Dropout(0.25) -> FC(2C -> C) -> ReLU ->
  BN(C) -> Dropout(0.5) -> FC(C -> 512) -> BN(512) -> :class:`ArcMarginProduct`. ("1024x -> 512x" in the
  write-up is 2C -> C with ResNet's expansion x.) The 2019 code called ``F.dropout`` without
  ``training=``, so its embedding dropouts stayed on at test time; here they are ``nn.Dropout`` modules and
  switch off in ``eval()``, so embeddings are deterministic.
* :class:`ArcMarginProduct`: the 2019 code initialised the weight uniformly in ``+-1/sqrt(in_features)``
  with ``xavier_uniform_`` commented out; this one uses ``xavier_uniform_``. The cosines are clamped to
  [-1, 1] so that ``sqrt(1 - cos^2)`` in the ArcFace loss never sees a rounding error above 1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConcatPool2d", "BestfittingHead2019", "EmbeddingHead2019", "ArcMarginProduct"]


def _check_feature_map(x: torch.Tensor, head: str) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"the {head} head needs a CNN feature map (N, C, h, w); the backbone gave shape "
            f"{tuple(x.shape)}. Use head='timm' for transformer backbones."
        )


class ConcatPool2d(nn.Module):
    """Global average pool and global max pool, concatenated.

    ``forward(x)``: ``(N, C, h, w)`` float -> ``(N, 2C)`` float, the ``C`` averages first.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x.mean(dim=(2, 3)), x.amax(dim=(2, 3))), dim=1)


def _mlp_trunk(in_features: int, hidden_dim: int, pool_drop_rate: float) -> nn.Sequential:
    """BN(2C) -> Dropout -> FC(2C -> hidden) -> ReLU -> BN(hidden): the part both 2019 heads share."""
    return nn.Sequential(
        nn.BatchNorm1d(2 * in_features),
        nn.Dropout(pool_drop_rate),
        nn.Linear(2 * in_features, hidden_dim),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden_dim),
    )


class BestfittingHead2019(nn.Module):
    """The 2019 winner's classifier head.

    concat(avg, max) -> BN -> Dropout(``pool_drop_rate``) -> FC(2C -> ``hidden_dim``) -> ReLU -> BN ->
    Dropout(``drop_rate``) -> FC(``hidden_dim`` -> ``num_classes``).

    Parameters
    ----------
    in_features : int
        ``C``, channels of the backbone's feature map.
    num_classes : int
        Number of logits.
    hidden_dim : int, optional
        Width of the hidden FC; default ``in_features`` (1024 for DenseNet-121, as in 2019).
    pool_drop_rate, drop_rate : float
        Dropout after the first BN and before the last FC (both 0.5 in 2019).

    ``forward(x, pre_logits=False)``: ``(N, C, h, w)`` float -> logits ``(N, num_classes)``, or with
    ``pre_logits=True`` the hidden features after the second BN, ``(N, hidden_dim)``.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        hidden_dim: int | None = None,
        pool_drop_rate: float = 0.5,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        hidden_dim = in_features if hidden_dim is None else hidden_dim
        self.num_features = hidden_dim
        self.pool = ConcatPool2d()
        self.trunk = _mlp_trunk(in_features, hidden_dim, pool_drop_rate)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        _check_feature_map(x, "bestfitting2019")
        x = self.trunk(self.pool(x))
        return x if pre_logits else self.fc(self.drop(x))


class ArcMarginProduct(nn.Module):
    """Cosine similarity of each feature vector to each class centre, for the ArcFace loss.

    ``cosine = normalize(features) @ normalize(weight).T``, clamped to [-1, 1]; the margin itself is applied
    by the loss (``cellcls.losses.create_loss('arcface', s=30, m=0.5)``), not here.

    Parameters
    ----------
    in_features : int
        Length ``D`` of a feature vector (512 in 2019).
    out_features : int
        Number of classes ``K`` (antibody ids in 2019).

    ``forward(features)``: ``(N, D)`` float -> cosines ``(N, K)`` float in [-1, 1].
    ``weight``: ``(K, D)``, initialised with ``xavier_uniform_``.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))
        return cosine.clamp(-1.0, 1.0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class EmbeddingHead2019(nn.Module):
    """The 2019 winner's metric-learning head: a BN-ed embedding and its ArcFace cosines.

    concat(avg, max) -> BN -> Dropout(``pool_drop_rate``) -> FC(2C -> ``hidden_dim``) -> ReLU -> BN ->
    Dropout(``drop_rate``) -> FC(``hidden_dim`` -> ``embedding_dim``) -> BN -> ArcMarginProduct.

    Parameters
    ----------
    in_features : int
        ``C``, channels of the backbone's feature map.
    num_classes : int
        Number of ArcFace classes ``K``.
    embedding_dim : int
        Length of the embedding (512 in 2019).
    hidden_dim : int, optional
        Width of the hidden FC; default ``in_features`` (2048 for ResNet-50, as in 2019).
    pool_drop_rate, drop_rate : float
        Dropout after the first BN (0.25) and before the embedding FC (0.5).

    ``forward(x, pre_logits=False)``: ``(N, C, h, w)`` float -> cosines ``(N, num_classes)`` in [-1, 1], or
    with ``pre_logits=True`` the embedding ``(N, embedding_dim)`` (not normalised; compare embeddings with
    cosine similarity).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        embedding_dim: int = 512,
        hidden_dim: int | None = None,
        pool_drop_rate: float = 0.25,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        hidden_dim = in_features if hidden_dim is None else hidden_dim
        self.num_features = embedding_dim
        self.pool = ConcatPool2d()
        self.trunk = _mlp_trunk(in_features, hidden_dim, pool_drop_rate)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(hidden_dim, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim)
        self.arc = ArcMarginProduct(embedding_dim, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        _check_feature_map(x, "embedding2019")
        embedding = self.bn(self.fc(self.drop(self.trunk(self.pool(x)))))
        return embedding if pre_logits else self.arc(embedding)
