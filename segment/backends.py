"""Segmentation backends: a named registry of "RGBY images in, (nuclei, cell) label maps out".

Backends
--------
``hpa``
    The two HPA-Cell-Segmentation DPNUnets (nuclei + 3-channel cell weights) followed by
    ``segment.labelling.label_cell``: the method the Kaggle ground truth was made with.
``classical``
    ``segment.classical.segment_classical``: thresholds + watershed, no weights. Meant for a
    machine without the HPA weight files (tests, demos); its masks are not the ground truth's.
``auto`` (not a backend: resolved by :func:`resolve_backend`)
    ``hpa`` when both weight files are found, else ``classical``, with the reason logged.

Scales
------
``scale`` is the resize factor applied to the stored images before segmentation (0.25: a 2048²
image is segmented at 512²); ``image_scale`` is the pixel size of the stored images relative to
real HPA full-resolution images (1.0 for Kaggle data). Pixel cut-offs (areas, radii) are full-
resolution constants scaled by the effective scale ``scale * image_scale``. Backends take both as
numbers; ``cellcls segment --scale auto`` picks ``scale = 0.25 / image_scale``
(``segment.scales.resolve_scale``); the key holds the resulting numbers, so ``auto`` and the same
value given explicitly share cache entries.

Cache key
---------
Each backend lists the ingredients of its results in :meth:`SegmentationBackend.key_ingredients`
(weights SHA-256, labelling / classical parameters and algorithm versions, the hpa backend's
preprocessing version, scales, TTA); :meth:`key_params` is that dict with the backend name, recorded
readably in every cache entry, and :meth:`params_hash` is the SHA-256 of its canonical JSON. The
device and autocast precision are NOT part of the key: a cache made on a GPU (float16) is reused
on the CPU and vice versa; the maps agree up to rounding.
"""
from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from cellcls.registry import Registry

__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "SegmentationBackend",
    "HpaBackend",
    "ClassicalBackend",
    "build_backend",
    "resolve_backend",
]

log = logging.getLogger(__name__)

LabelPair = tuple[np.ndarray, np.ndarray]


class SegmentationBackend(ABC):
    """What the pipeline needs from a backend.

    Work is split in two so the pipeline can overlap them: :meth:`predict` (the device part, one
    batch) and :meth:`postprocess` (CPU part, one image, pure, picklable inputs and outputs).
    :meth:`segment` chains them.

    Attributes
    ----------
    name : str
        Registry name, stored in the cache entries.
    scale, image_scale : float
        See the module docstring; ``effective_scale = scale * image_scale``.
    """

    name: str = ""

    def __init__(self, *, scale: float, image_scale: float) -> None:
        if not (scale > 0 and image_scale > 0):
            raise ValueError(f"scale and image_scale must be > 0, got {scale}, {image_scale}")
        self.scale = float(scale)
        self.image_scale = float(image_scale)

    @property
    def effective_scale(self) -> float:
        """Pixel size of the segmented images relative to HPA full resolution."""
        return self.scale * self.image_scale

    @abstractmethod
    def key_ingredients(self) -> dict[str, Any]:
        """JSON-serialisable description of everything that changes this backend's output."""

    def key_params(self) -> dict[str, Any]:
        """``{"backend": name, **key_ingredients()}``: what the cache key is built from (JSON values)."""
        return {"backend": self.name, **self.key_ingredients()}

    def params_hash(self) -> str:
        """SHA-256 hex digest of the canonical JSON of :meth:`key_params`: the cache key."""
        text = json.dumps(self.key_params(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def predict(self, images: Sequence[np.ndarray]) -> list[Any]:
        """Device part for a batch of RGBY ``(h, w, 4)`` uint8/uint16 images at segmentation scale.

        Returns one picklable intermediate per image for :meth:`postprocess` (default: the image).
        """
        return list(images)

    @abstractmethod
    def postprocess(self, intermediate: Any) -> LabelPair:
        """CPU part for one image: ``(nuclei_labels, cell_labels)``, ``(h, w)`` unsigned ints."""

    def postprocess_fn(self) -> Callable[[Any], LabelPair]:
        """A picklable callable equivalent to :meth:`postprocess` (for worker processes)."""
        return self.postprocess

    def segment(self, images: Sequence[np.ndarray]) -> list[LabelPair]:
        """``(nuclei_labels, cell_labels)`` for each RGBY image, ``(h, w)`` uint16/uint32, 0 = background."""
        return [self.postprocess(x) for x in self.predict(images)]

    def to(self, device: Any) -> "SegmentationBackend":
        """Move networks to ``device`` (no-op for weight-free backends)."""
        return self

    def modules(self) -> list[Any]:
        """``torch.nn.Module`` objects the backend runs (for Lightning to register); none by default."""
        return []

    def describe(self) -> str:
        """One line for logs and the run summary."""
        return f"{self.name} (scale {self.scale:g}, image scale {self.image_scale:g})"


BACKENDS: Registry[Callable[..., SegmentationBackend]] = Registry("segmentation backend")
BACKEND_CHOICES = ("auto", "hpa", "classical")


# --------------------------------------------------------------------------- hpa


class _HpaLabeller:
    """Picklable ``(nuclei_map, cell_map) -> (nuclei_labels, cell_labels)`` with fixed LabelParams."""

    def __init__(self, params: Any) -> None:
        self.params = params

    def __call__(self, maps: tuple[np.ndarray, np.ndarray]) -> LabelPair:
        from segment.labelling import label_cell

        return label_cell(maps[0], maps[1], params=self.params)


class HpaBackend(SegmentationBackend):
    """HPA nuclei + cell DPNUnets, then ``label_cell`` with ``LabelParams().scaled(scale * image_scale)``.

    Build it with :meth:`from_weights` (the published files) or :meth:`from_networks` (any two
    networks with DPNUnet's I/O, e.g. randomly initialised ones for benchmarks).
    """

    name = "hpa"

    def __init__(
        self,
        nuclei_net: Any,
        cell_net: Any,
        *,
        weights_sha256: dict[str, str],
        scale: float,
        image_scale: float = 1.0,
        device: Any = "cpu",
        batch_size: int = 8,
        tta: str = "none",
        amp: bool = True,
        label_params: Any = None,
    ) -> None:
        from segment.labelling import LabelParams
        from segment.predict import HpaPredictor

        super().__init__(scale=scale, image_scale=image_scale)
        self.weights_sha256 = dict(weights_sha256)
        self.tta = tta
        base = LabelParams() if label_params is None else label_params
        self.label_params = base.scaled(self.effective_scale)
        self.predictor = HpaPredictor(nuclei_net, cell_net, device=device, batch_size=batch_size, tta=tta, amp=amp)
        self._labeller = _HpaLabeller(self.label_params)

    @classmethod
    def from_weights(cls, *, weights_dir: str | Path | None = None, device: Any = "cpu", **kwargs: Any) -> "HpaBackend":
        """Load both published weight files (found by ``segment.weights.find_weights``).

        Raises ``WeightsNotFoundError`` listing every place looked when a file is missing.
        """
        from segment.network import load_dpn_unet
        from segment.weights import find_weights

        paths = {kind: find_weights(kind, weights_dir=weights_dir) for kind in ("nuclei", "cell")}
        sha = {kind: _sha256(path) for kind, path in paths.items()}
        log.info("HPA weights: nuclei %s, cell %s", paths["nuclei"], paths["cell"])
        nets = {kind: load_dpn_unet(path, device="cpu") for kind, path in paths.items()}
        return cls(nets["nuclei"], nets["cell"], weights_sha256=sha, device=device, **kwargs)

    @classmethod
    def from_networks(cls, nuclei_net: Any, cell_net: Any, *, weights_id: str = "unknown", **kwargs: Any) -> "HpaBackend":
        """Wrap two networks; ``weights_id`` stands in for the weights checksum in the cache key."""
        return cls(nuclei_net, cell_net, weights_sha256={"nuclei": weights_id, "cell": weights_id}, **kwargs)

    def key_ingredients(self) -> dict[str, Any]:
        from segment.predict import PREPROCESS_VERSION

        return {
            "weights_sha256": self.weights_sha256,
            "preprocess_version": PREPROCESS_VERSION,
            "label_params": self.label_params.hash(),
            "scale": self.scale,
            "image_scale": self.image_scale,
            "tta_cell": self.tta,
        }

    def predict(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return self.predictor(images)

    def postprocess(self, intermediate: tuple[np.ndarray, np.ndarray]) -> LabelPair:
        return self._labeller(intermediate)

    def postprocess_fn(self) -> Callable[[Any], LabelPair]:
        return self._labeller

    def to(self, device: Any) -> "HpaBackend":
        self.predictor.to(device)
        return self

    def modules(self) -> list[Any]:
        return self.predictor.modules()

    def describe(self) -> str:
        tta = f", cell TTA {self.tta}" if self.tta != "none" else ""
        return f"hpa on {self.predictor.device} (scale {self.scale:g}, image scale {self.image_scale:g}{tta})"


def _sha256(path: Path) -> str:
    from segment.weights import sha256_file

    return sha256_file(path)


@BACKENDS.register("hpa")
def _build_hpa(
    *,
    scale: float,
    image_scale: float = 1.0,
    weights_dir: str | Path | None = None,
    device: Any = "cpu",
    batch_size: int = 8,
    tta: str = "none",
    **_: Any,
) -> HpaBackend:
    return HpaBackend.from_weights(
        weights_dir=weights_dir, device=device, scale=scale, image_scale=image_scale, batch_size=batch_size, tta=tta
    )


# --------------------------------------------------------------------------- classical


class _ClassicalSegmenter:
    """Picklable RGBY image -> (nuclei_labels, cell_labels) with the classical method."""

    def __init__(self, effective_scale: float, params: Any) -> None:
        self.effective_scale = effective_scale
        self.params = params

    def __call__(self, image: np.ndarray) -> LabelPair:
        from cellcls.io import to_float01
        from segment.classical import segment_classical

        return segment_classical(to_float01(image), scale=self.effective_scale, params=self.params)


class ClassicalBackend(SegmentationBackend):
    """``segment.classical.segment_classical`` at the effective scale; no weights, CPU only.

    ``params``: a ``segment.classical.ClassicalParams`` (default: its defaults).
    """

    name = "classical"

    def __init__(self, *, scale: float, image_scale: float = 1.0, params: Any = None) -> None:
        from segment.classical import ClassicalParams

        super().__init__(scale=scale, image_scale=image_scale)
        self.params = ClassicalParams() if params is None else params
        self._segmenter = _ClassicalSegmenter(self.effective_scale, self.params)

    def key_ingredients(self) -> dict[str, Any]:
        import dataclasses

        return {
            "classical_params": dataclasses.asdict(self.params),
            # the hashes carry the classical method's and the labelling algorithm's versions
            "classical_hash": self.params.hash(),
            "label_params": self.params.labels.scaled(self.effective_scale).hash(),
            "scale": self.scale,
            "image_scale": self.image_scale,
        }

    def postprocess(self, intermediate: np.ndarray) -> LabelPair:
        return self._segmenter(intermediate)

    def postprocess_fn(self) -> Callable[[Any], LabelPair]:
        return self._segmenter


@BACKENDS.register("classical")
def _build_classical(*, scale: float, image_scale: float = 1.0, **_: Any) -> ClassicalBackend:
    return ClassicalBackend(scale=scale, image_scale=image_scale)


# --------------------------------------------------------------------------- choosing


def resolve_backend(name: str, *, weights_dir: str | Path | None = None) -> tuple[str, str]:
    """Turn ``"auto"`` into a registered backend name; returns ``(name, reason)``.

    ``auto`` gives ``"hpa"`` when both HPA weight files are found, else ``"classical"``; the
    reason names the files found or every place looked. Other names are checked against
    :data:`BACKENDS` (an unknown one raises ``RegistryError`` listing the choices).
    """
    if name != "auto":
        BACKENDS.get(name)
        return name, f"--backend {name} requested"
    from cellcls.errors import WeightsNotFoundError
    from segment.weights import find_weights

    found: dict[str, Path] = {}
    for kind in ("nuclei", "cell"):
        try:
            found[kind] = find_weights(kind, weights_dir=weights_dir)
        except WeightsNotFoundError as exc:
            looked = [line.strip(" -") for line in str(exc).splitlines() if line.startswith("  - ")]
            return "classical", f"no HPA {kind} weights in [{'; '.join(looked) or exc}]; using classical backend"
    return "hpa", f"HPA weights found ({found['nuclei']}, {found['cell']}); using hpa backend"


def build_backend(name: str, **options: Any) -> SegmentationBackend:
    """Construct a registered backend (not ``auto``: see :func:`resolve_backend`).

    Options: ``scale``, ``image_scale``, and for ``hpa`` also ``weights_dir``, ``device``,
    ``batch_size``, ``tta``; options a backend does not use are ignored.
    """
    return BACKENDS.get(name)(**options)
