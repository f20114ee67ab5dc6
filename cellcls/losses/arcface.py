"""ArcFace loss on cosines, as the 2019 HPA winner trained its antibody-embedding network.

Input: cosines (N, K) between L2-normalised embeddings and L2-normalised class weights (the output of an
ArcMarginProduct layer) and integer class labels (N,). With c = cos(theta) of the true class and
sin(theta) = sqrt(clamp(1 - c^2, 0, 1)):

    phi = cos(theta + m) = c cos(m) - sin(theta) sin(m)       where c > th = cos(pi - m)
        = c - mm,  mm = sin(pi - m) m                         elsewhere (theta + m would pass pi)
    easy_margin=True instead: phi where c > 0, else c (no margin on obtuse angles)
    margin logits = s * (phi on the true class, the cosine elsewhere)
    loss = (CE(margin logits) + w * CE(plain logits)) / (1 + w)

with plain logits = the cosines UNSCALED (as the 2019 code: ``classify_loss(cosine, labels)``; pass
``scale_plain=True`` for s * cosines) and w = ``plain_weight`` = 1 (2019: the mean of the two). CE is
torch's cross-entropy, mean over the batch. At |c| = 1 the derivative of sin(theta) (infinite) is taken
as 0, so gradients stay finite. An empty batch gives 0, attached to the graph.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_arcface, check_number
from ._registry import LOSSES

__all__ = ["ARCFACE_SCALE", "ARCFACE_MARGIN", "ARCFACE_PLAIN_WEIGHT", "ArcFaceLoss", "arcface_logits"]

ARCFACE_SCALE = 30.0
ARCFACE_MARGIN = 0.5
#: Weight of the plain cross-entropy next to the margin one (2019: 1, i.e. their mean).
ARCFACE_PLAIN_WEIGHT = 1.0


def _safe_sine(cosines: torch.Tensor) -> torch.Tensor:
    """sqrt(clamp(1 - c^2, 0, 1)) with a zero (not infinite) gradient where it is 0."""
    sin2 = torch.clamp(1.0 - cosines * cosines, 0.0, 1.0)
    positive = sin2 > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sin2, torch.ones_like(sin2))), torch.zeros_like(sin2))


def arcface_logits(cosines: torch.Tensor, labels: torch.Tensor, *, s: float = ARCFACE_SCALE,
                   m: float = ARCFACE_MARGIN, easy_margin: bool = False) -> torch.Tensor:
    """The margin logits s * (phi on the true class, cosine elsewhere).

    Parameters
    ----------
    cosines : (N, K) floating tensor, values in [-1, 1]
    labels : (N,) int64 tensor, values in [0, K)
    s, m : scale and additive angular margin (radians)
    easy_margin : apply the margin only where the cosine is > 0

    Returns
    -------
    (N, K) tensor, same dtype as ``cosines``
    """
    phi = cosines * math.cos(m) - _safe_sine(cosines) * math.sin(m)
    if easy_margin:
        phi = torch.where(cosines > 0, phi, cosines)
    else:
        phi = torch.where(cosines > math.cos(math.pi - m), phi, cosines - math.sin(math.pi - m) * m)
    true_class = F.one_hot(labels, cosines.shape[1]).bool()
    return s * torch.where(true_class, phi, cosines)


@LOSSES.register("arcface")
class ArcFaceLoss(nn.Module):
    """ArcFace: mean of the margin cross-entropy and the plain cross-entropy (the 2019 winner's weighting).

    Parameters
    ----------
    s : float > 0
        Logit scale (2019: 30).
    m : float in [0, pi/2]
        Additive angular margin, radians (2019: 0.5).
    easy_margin : bool
        Margin only where cos(theta) > 0 (2019: False).
    plain_weight : float >= 0
        w in (CE_margin + w CE_plain) / (1 + w); 0 gives plain ArcFace.
    scale_plain : bool
        Scale the plain logits by s too (2019: False, the cosines themselves).

    Call with ``(cosines (N, K) float, labels (N,) int64)``; returns a () tensor.
    """

    def __init__(self, *, s: float = ARCFACE_SCALE, m: float = ARCFACE_MARGIN, easy_margin: bool = False,
                 plain_weight: float = ARCFACE_PLAIN_WEIGHT, scale_plain: bool = False) -> None:
        super().__init__()
        self.s = check_number("arcface", "s", s, low=0.0, low_inclusive=False)
        self.m = check_number("arcface", "m", m, low=0.0, high=math.pi / 2)
        self.plain_weight = check_number("arcface", "plain_weight", plain_weight, low=0.0)
        self.easy_margin = bool(easy_margin)
        self.scale_plain = bool(scale_plain)

    def forward(self, cosines: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosines, labels = check_arcface("arcface", cosines, labels)
        if cosines.shape[0] == 0:
            return cosines.sum() * 0.0
        margin = F.cross_entropy(arcface_logits(cosines, labels, s=self.s, m=self.m, easy_margin=self.easy_margin),
                                 labels)
        plain = F.cross_entropy(cosines * self.s if self.scale_plain else cosines, labels)
        return (margin + self.plain_weight * plain) / (1.0 + self.plain_weight)

    def extra_repr(self) -> str:
        return (f"s={self.s}, m={self.m}, easy_margin={self.easy_margin}, plain_weight={self.plain_weight}, "
                f"scale_plain={self.scale_plain}")
