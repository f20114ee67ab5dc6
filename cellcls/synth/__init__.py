"""The synthetic HPA-like world: images with per-cell ground truth.

Real HPA data cannot be downloaded here, so the demo, tests and benchmarks run on this
world. Geometry is defined in full-resolution HPA pixels and multiplied by ``scale``.

* :func:`make_sample` -- one image (RGBY array), its cell and nucleus instance maps and
  the classes each cell shows.
* :func:`generate_world` -- a whole dataset in the Kaggle layout plus truth files.
* :func:`preview_sheet` -- a contact sheet with one image per class.
* :data:`PATTERNS` -- the drawing function of each class's green pattern, keyed by class id.
* :mod:`cellcls.synth.difficulty` -- reference mAPs (image labels broadcast to cells, class
  prior, per-cell oracle) showing how hard a world is; heterogeneity is set by
  :data:`cellcls.synth.proteins.CELL_SHARE`.
* :mod:`cellcls.synth.variants` -- draw a world differently (cell shapes, the ``alt`` green
  renderer, class mixes, Negative shares; preset ``shifted``), ``generate_world(variant=...)``.
"""
from .patterns import PATTERNS
from .sample import SynthSample, make_sample

__all__ = ["PATTERNS", "SynthSample", "make_sample", "generate_world", "WorldSummary", "preview_sheet"]


def __getattr__(name: str):  # the writers pull in file I/O; load them on first use
    if name in ("generate_world", "WorldSummary"):
        from . import world

        return getattr(world, name)
    if name == "preview_sheet":
        from .preview import preview_sheet

        return preview_sheet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
