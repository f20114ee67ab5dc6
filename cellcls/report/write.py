""":func:`write_report`: the report folder (``index.html`` + PNGs) from whatever inputs are given.

Every section is optional. A section whose inputs were not given says "not available" and which
option would fill it; a section whose inputs cannot be read says "could not be made" with the
error (and :attr:`Report.failed` lists it), and the other sections are still written.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np

from ..classes import CLASS_NAMES, NUM_CLASSES
from ..atomic import atomic_write_text
from ..errors import CellclsError, ReportError
from ..show import SHORT_NAMES
from . import figures
from .data import Disagreements, disagreements, load_evaluation, load_segmentation, read_training_log, training_curves
from .html import Section, figure, note, page, table

if TYPE_CHECKING:
    import pandas as pd

    from ..labels import LabelTable

__all__ = ["OverlaySpec", "Report", "write_report", "default_name", "SECTIONS"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Section keys (page anchors) and titles, in page order.
SECTIONS: dict[str, str] = {
    "scores": "Per-class AP", "overlays": "Overlays", "segmentation": "Segmentation",
    "training": "Training curves", "disagreement": "Cell model vs image labels",
}


@dataclass(frozen=True)
class OverlaySpec:
    """What to draw as overlays (:func:`cellcls.show.show_image` sheets).

    images : folder of ``{ID}_{red,green,blue,yellow}`` files. masks : mask cache of those images.
    scores : score table made on ``masks`` (each cell's top classes). truth : a synthetic world's
    ``truth/`` (wrong cells outlined red). ids : the image IDs, or how many to take (the first IDs of
    the mask cache, sorted, that the score table also has). size : composite side, pixels.
    """

    images: PathLike
    masks: PathLike
    scores: PathLike | None = None
    truth: PathLike | None = None
    ids: Sequence[str] | int = 3
    size: int = 480


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote: the page, every file, and each section's status."""

    index: Path
    files: tuple[Path, ...]
    sections: tuple[Section, ...]

    @property
    def failed(self) -> tuple[str, ...]:
        """Keys of the sections whose inputs could not be read."""
        return tuple(s.key for s in self.sections if s.status == "failed")

    def summary(self) -> str:
        """One line per section: ``key: status``."""
        return "\n".join(f"{s.key:>13}: {s.status}" for s in self.sections)


def _save(out: Path, name: str, rgb: np.ndarray, written: list[str]) -> str:
    from ..show import write_png

    write_png(out / name, rgb)
    written.append(name)
    return name


def _missing(key: str, what: str) -> Section:
    return Section(key, SECTIONS[key], "not available", note(f"Not available: {what}.", kind="missing"))


# ----------------------------------------------------------------------------- sections
def _scores_section(out: Path, evaluations: Mapping[str, Any]) -> Section:
    loaded = {name: load_evaluation(source) for name, source in evaluations.items()}
    written: list[str] = []
    chart, shown = figures.ap_figure(loaded)
    png = _save(out, "ap_per_class.png", chart, written)
    left_out = figures.omitted_classes(shown)
    names = list(loaded)
    rows = [[name, e.map, e.n_images, int(np.isfinite(e.ap).sum())] for name, e in loaded.items()]
    body = table(["evaluation", "mAP", "images", "classes with ground truth"], rows, numeric=[False, True, True, True])
    body += figure(png, "AP per class of each evaluation (n/a: the class has no ground truth in the solution)"
                   + (f"; not drawn, no ground truth anywhere: {', '.join(left_out)}" if left_out else ""))
    per_class = [[c, CLASS_NAMES[c], int(max(e.n_gt[c] for e in loaded.values()))]
                 + [float(loaded[n].ap[c]) for n in names] for c in range(NUM_CLASSES)]
    body += "<details><summary>AP per class as a table</summary>" + table(
        ["id", "class", "#GT cells"] + names, per_class, numeric=[True, False, True] + [True] * len(names)) + "</details>"
    return Section("scores", SECTIONS["scores"], "ok", body, tuple(written))


def _pick_ids(spec: OverlaySpec) -> tuple[list[str], bool]:
    """The IDs to draw and whether to draw them with ``spec.scores`` (False: the table has none of them)."""
    if not isinstance(spec.ids, int):
        return [str(i) for i in spec.ids], spec.scores is not None
    from ..masks import MaskCache

    ids = sorted(MaskCache(spec.masks).reader().ids())
    if spec.scores is None:
        return ids[:spec.ids], False
    from ..scores import read_scores

    scored = set(read_scores(spec.scores)["ID"].astype(str))
    with_scores = [i for i in ids if i in scored]
    return (with_scores[:spec.ids], True) if with_scores else (ids[:spec.ids], False)


def _overlays_section(out: Path, spec: OverlaySpec) -> Section:
    from ..show import quantize, show_image

    written: list[str] = []
    parts, problems = [], []
    ids, use_scores = _pick_ids(spec)
    if spec.scores is not None and not use_scores:
        problems.append(note(f"The score table {spec.scores} has no row for an image of the mask cache {spec.masks}; "
                             "cells are drawn without classes (pass the table made on these masks).", kind="missing"))
    for k, image_id in enumerate(ids):
        try:
            rendered = show_image(spec.images, image_id, masks=spec.masks, scores=spec.scores if use_scores else None,
                                  truth=spec.truth, size=spec.size, top_k=2)
        except (CellclsError, OSError) as exc:
            log.warning("overlay of %s not drawn: %s", image_id, exc)
            problems.append(note(f"{image_id}: not drawn ({exc})", kind="failed"))
            continue
        png = _save(out, f"overlay_{k:02d}.png", quantize(rendered.image, 64), written)
        judged = f", {len(rendered.wrong)} cells wrong, {len(rendered.missed)} missed" if spec.truth else ""
        parts.append(figure(png, f"{image_id}: {len(rendered.labels)} labels{judged}"))
    if not ids:
        return _missing("overlays", f"the mask cache {spec.masks} lists no image")
    legend = ("White outlines: cells with their top two classes. " + (
        "Red: the cell's best class is not a true label of its true cell (true labels below); orange: true cells "
        "no predicted cell matched." if spec.truth else "Add --truth (a synthetic world's truth/) to mark wrong "
        "cells."))
    status = "ok" if parts else "failed"
    return Section("overlays", SECTIONS["overlays"], status, note(legend) + "".join(problems + parts), tuple(written))


def _segmentation_section(out: Path, results: Mapping[str, Any]) -> Section:
    loaded = {name: load_segmentation(source) for name, source in results.items()}
    written: list[str] = []
    body = table(["segmentation", "images", "matched", "false", "missed", "precision", "recall", "F1"],
                 [[n, r.get("n_images"), r.get("tp"), r.get("fp"), r.get("fn"), float(r["precision"]),
                   float(r["recall"]), float(r["f1"])] for n, r in loaded.items()],
                 numeric=[False] + [True] * 7)
    charts = [figure(_save(out, "segmentation.png", figures.segmentation_figure(loaded), written),
                     "cell precision, recall and F1 (one-to-one matching at mask IoU >= 0.6)")]
    per_image = figures.per_image_f1_figure(loaded)
    if per_image is not None:
        charts.append(figure(_save(out, "segmentation_per_image.png", per_image, written),
                             "per-image F1, sorted: the left end shows the worst images"))
    body += '<div class="row">' + "".join(charts) + "</div>"
    for name, r in loaded.items():
        worst = sorted(((i, f) for i, f in (r.get("per_image") or {}).items() if f < 1.0), key=lambda kv: kv[1])[:5]
        if worst:
            body += note(f"{name}, worst images: " + ", ".join(f"{i} (F1 {f:.2f})" for i, f in worst))
    return Section("segmentation", SECTIONS["segmentation"], "ok", body, tuple(written))


def _training_section(out: Path, logs: Mapping[str, PathLike]) -> Section:
    written: list[str] = []
    body = ""
    for k, (name, path) in enumerate(logs.items()):
        curves = training_curves(read_training_log(path))
        body += f"<h3>{_escape(name)}</h3>"
        if not curves:
            body += note(f"{path}: no metric logged yet", kind="missing")
            continue
        charts = []
        for j, (title, group) in enumerate(curves.items()):
            x_label = "epoch" if "epoch" in title else "step"
            png = _save(out, f"training_{k:02d}_{j}.png", figures.curve_figure(title, group, x_label=x_label), written)
            charts.append(figure(png, f"{name}: {title}"))
        body += '<div class="row">' + "".join(charts) + "</div>"
    return Section("training", SECTIONS["training"], "ok", body, tuple(written))


def _escape(text: object) -> str:
    import html

    return html.escape(str(text))


def _names(class_ids: Sequence[int]) -> str:
    return ", ".join(SHORT_NAMES[c] for c in class_ids) or "-"


def _cell_rows(frame: "pd.DataFrame") -> list[list[object]]:
    return [[r.ID, int(r.cell_id), f"{r.class_id} {SHORT_NAMES[r.class_id]}", float(r.p_class),
             f"{SHORT_NAMES[r.best_class]} {r.p_best:.2f}" + (" (Negative)" if r.called_negative else ""),
             _names(r.image_labels)] for r in frame.itertuples()]


_CELL_HEADERS = ["image", "cell", "class", "P(class)", "model's best class", "image labels"]
_CELL_NUMERIC = [False, True, False, True, False, False]


def _disagreement_section(out: Path, found: Disagreements, top_n: int) -> Section:
    if found.n_cells == 0:
        return _missing("disagreement", "no scored cell belongs to an image of the label file")
    written: list[str] = []
    t = found.threshold
    chart, shown = figures.disagreement_figure(found)
    png = _save(out, "disagreement.png", chart, written)
    left_out = figures.omitted_classes(shown)
    s = found.summary
    body = note(f"{found.n_cells} cells of {found.n_images} labelled images. Image labels are weak: a class of the "
                "image need not be in every cell. The tables list where the cell model disagrees most: a cell of an "
                "image labelled with a class that the model scores low (the label may be wrong for that cell, or "
                "the model misses it), and a cell of an image without the class that the model scores high.")
    body += figure(png, f"share of cells per class: image label yes but P < {t:g}; image label no but P >= {t:g}"
                   + (f"; not drawn (no image has the class, no cell scores it): {', '.join(left_out)}"
                      if left_out else ""))
    body += table(["id", "class", "cells, image yes", f"P < {t:g}", "called Negative", "cells, image no",
                   f"P >= {t:g}"],
                  [[int(r.class_id), CLASS_NAMES[r.class_id], int(r.pos_cells), int(r.pos_low),
                    int(r.pos_called_negative), int(r.neg_cells), int(r.neg_high)] for r in s.itertuples()],
                  numeric=[True, False, True, True, True, True, True])
    missed = found.missed.sort_values("p_class", kind="stable").head(top_n)
    extra = found.extra.sort_values("p_class", ascending=False, kind="stable").head(top_n)
    body += (f"<h3>Image says yes, cell model says no: the {len(missed)} lowest P(class)</h3>"
             + table(_CELL_HEADERS, _cell_rows(missed), numeric=_CELL_NUMERIC))
    body += (f"<h3>Image says no, cell model says yes: the {len(extra)} highest P(class)</h3>"
             + table(_CELL_HEADERS, _cell_rows(extra), numeric=_CELL_NUMERIC))
    body += "<h3>By class</h3>"
    for c in range(NUM_CLASSES):
        m, e = found.missed[found.missed["class_id"] == c], found.extra[found.extra["class_id"] == c]
        if len(m) == 0 and len(e) == 0:
            continue
        body += (f"<details><summary>{c} {_escape(CLASS_NAMES[c])}: {len(m)} + {len(e)} cells</summary>"
                 + "<p>image says yes, lowest P:</p>" + table(_CELL_HEADERS, _cell_rows(m), numeric=_CELL_NUMERIC)
                 + "<p>image says no, highest P:</p>" + table(_CELL_HEADERS, _cell_rows(e), numeric=_CELL_NUMERIC)
                 + "</details>")
    return Section("disagreement", SECTIONS["disagreement"], "ok", body, tuple(written))


# ----------------------------------------------------------------------------- entry
def default_name(path: PathLike) -> str:
    """The name an input is shown under when none is given: the file stem, or for a training log
    ``RUN/logs/version_N/metrics.csv`` the run folder ``RUN``."""
    path = Path(path)
    if path.name == "metrics.csv" and path.parent.parent.name == "logs" and path.parent.parent.parent.name:
        return path.parent.parent.parent.name
    return path.stem


def _named(sources: Any, what: str) -> dict[str, Any]:
    """``{name: source}`` from a mapping, a sequence of paths (named by file stem) or one path/dict."""
    if sources is None:
        return {}
    if isinstance(sources, Mapping) and what == "segmentation" and "f1" in sources:
        return {"segmentation": sources}
    if isinstance(sources, Mapping):
        return dict(sources)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    named: dict[str, Any] = {}
    for source in sources:
        path = Path(source)
        name = default_name(path)
        if name in named:
            raise ReportError(f"two {what} inputs are both named {name!r}; name them (NAME=PATH)")
        named[name] = source
    return named


def _guarded(key: str, build: Callable[[], Section]) -> Section:
    try:
        return build()
    except (CellclsError, OSError) as exc:
        log.warning("report section %r could not be made: %s", key, exc)
        return Section(key, SECTIONS[key], "failed", note(f"Could not be made: {exc}", kind="failed"))


def write_report(out_dir: PathLike, *, evaluations: Mapping[str, Any] | Sequence[PathLike] | None = None,
                 segmentation: Mapping[str, Any] | Sequence[PathLike] | PathLike | None = None,
                 train_logs: Mapping[str, PathLike] | Sequence[PathLike] | PathLike | None = None,
                 scores: "PathLike | pd.DataFrame | None" = None, labels: "PathLike | LabelTable | None" = None,
                 overlays: OverlaySpec | None = None, top_n: int = 10, threshold: float = 0.5,
                 title: str = "cellcls report") -> Report:
    """Write ``out_dir/index.html`` and its PNGs; every input is optional.

    Parameters
    ----------
    evaluations : ``{name: evaluate JSON path or dict}`` (e.g. ``{"prior": ..., "cell": ..., "blend": ...}``);
        per-class AP bars and the mAP table.
    segmentation : ``segment-score`` JSON(s): one path or result dict, or ``{name: path or dict}``.
    train_logs : CSVLogger ``metrics.csv`` path(s), or ``{run name: path}``.
    scores, labels : a per-cell score table (path or frame) and image labels (``train.csv`` path or
        LabelTable): the disagreement tables, ``top_n`` cells per list, P cut ``threshold``.
    overlays : :class:`OverlaySpec`; a few :func:`cellcls.show.show_image` sheets.

    Returns
    -------
    Report. A section without inputs says "not available"; one whose inputs cannot be read says
    so with the error (listed in :attr:`Report.failed`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    evaluations, segmentation = _named(evaluations, "evaluation"), _named(segmentation, "segmentation")
    train_logs = _named(train_logs, "training log")

    def disagreement() -> Section:
        from ..labels import LabelTable, read_train_csv
        from ..scores import check_score_table, read_scores

        frame = read_scores(scores) if isinstance(scores, (str, os.PathLike)) else check_score_table(scores)
        table_ = labels if isinstance(labels, LabelTable) else read_train_csv(labels)
        return _disagreement_section(out, disagreements(frame, table_, top_n=top_n, threshold=threshold), top_n)

    sections = [
        _guarded("scores", lambda: _scores_section(out, evaluations)) if evaluations else
        _missing("scores", "no evaluation given (--evaluation NAME=score.json, from `cellcls evaluate --json`)"),
        _guarded("overlays", lambda: _overlays_section(out, overlays)) if overlays is not None else
        _missing("overlays", "needs --images and --masks (and --scores, --truth for classes and marks)"),
        _guarded("segmentation", lambda: _segmentation_section(out, segmentation)) if segmentation else
        _missing("segmentation", "no segmentation score given (--segmentation seg.json, from `cellcls segment-score "
                 "--json`)"),
        _guarded("training", lambda: _training_section(out, train_logs)) if train_logs else
        _missing("training", "no training log given (--train-log RUN/logs/version_0/metrics.csv)"),
        _guarded("disagreement", disagreement) if scores is not None and labels is not None else
        _missing("disagreement", "needs a score table and image labels (--scores scores.parquet --labels train.csv)"),
    ]
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_ok = sum(s.status == "ok" for s in sections)
    index = out / "index.html"
    atomic_write_text(index, page(title, f"made {made} by cellcls report; {n_ok} of {len(sections)} sections filled",
                                  sections))
    files = tuple(out / f for s in sections for f in s.files)
    log.info("report: %s (%d files)", index, len(files) + 1)
    return Report(index=index, files=files, sections=tuple(sections))
