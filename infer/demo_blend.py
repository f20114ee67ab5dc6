"""Blends of two score tables scored with the competition metric (the demo's blend choice and report).

``cellcls predict --scores`` writes a cell model's and an image model's scores of every cell of a set
of images; :func:`score_blends` turns them into one submission per candidate blend (every rule of
:data:`infer.blend.BLEND_RULES`, modifiers included: the cell-table rows they need are measured from
the mask cache) and scores each against a solution. The demo calls it twice, with different roles:

* on VALIDATION images of the train set (:func:`choose_blend_on_validation`): the blend of the
  submission is the best candidate there;
* on the TEST images, after the fact: every candidate's test mAP is reported beside the chosen one,
  so a reader sees what the choice cost or won. Nothing is selected on those figures.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from cellcls.errors import CellclsError

__all__ = ["BLEND_CANDIDATES", "REPORT_BLENDS", "score_blends", "choose_blend_on_validation", "blend_file_name"]

#: candidates of the validation choice, simplest first (on a tie the earlier wins)
BLEND_CANDIDATES = ("cell", "mean:w=0.8", "mean:w=0.7", "mean:w=0.6", "mean:w=0.5", "product12", "cell+dark",
                    "mean:w=0.8+dark")
#: the rules reported on the test set besides the candidates ({scale}: the masks' image scale)
REPORT_BLENDS = BLEND_CANDIDATES + ("fourth", "fourth:negative=blend", "cell+border4", "cell+area7:image_scale={scale}",
                                    "mean:w=0.7+border4")


def blend_file_name(spec: str) -> str:
    """A file-name form of a blend spec (``mean:w=0.7+border4`` -> ``mean_w0.7+border4``)."""
    return spec.replace(":", "_").replace("=", "").replace(",", "_")


def _tables(cell_scores: Path, image_scores: Path) -> dict[str, tuple[Any, Any, Any, str]]:
    """ID -> (cell ids, cell-model scores (n, 19), image score (19,), mask key) from two score tables."""
    from cellcls.scores import iter_image_scores, read_scores

    image = {image_id: scores[0] for image_id, _, scores, _ in iter_image_scores(read_scores(image_scores))}
    out = {}
    for image_id, cell_ids, scores, mask_key in iter_image_scores(read_scores(cell_scores)):
        out[image_id] = (cell_ids, scores, image.get(image_id, scores.mean(axis=0)), mask_key)
    return out


def _cell_rows(entry: Any, cell_ids: Any, specs: Sequence[Any], images: Path | None) -> Any:
    """The cell-table rows of ``cell_ids`` (in that order) with the columns the modifiers of ``specs``
    read; the image is read from ``images`` only when one of them needs it (``dark``)."""
    from cellcls.io import read_image
    from cellcls.masks.table import entry_cell_table

    from .blend import add_modifier_columns

    image = read_image(images, entry.image_id) if any(spec.uses("dark") for spec in specs) else None
    rows = add_modifier_columns(entry_cell_table(entry), entry, specs, image=image)
    return rows.set_index("cell_id").loc[list(cell_ids)].reset_index()


def score_blends(cell_scores: Path, image_scores: Path, masks: Path, sample: Path, solution: Path,
                 out_dir: Path, *, candidates: Sequence[str] = BLEND_CANDIDATES,
                 prefix: str = "val", images: Path | None = None) -> dict[str, float]:
    """mAP@0.6 of every candidate blend of two score tables of the same images.

    Parameters
    ----------
    cell_scores, image_scores : ``cellcls predict --scores`` tables (cell-only, image-only) of the images.
    masks : their mask cache (the cells the scores belong to; its image scale fills ``{scale}``).
    sample : the sample submission of those images. solution : their truth in the submission format
        (rows of other images are ignored).
    out_dir : where each candidate's submission is written (``{prefix}_{spec}.csv``).
    candidates : blend specs (:meth:`infer.blend.BlendSpec.parse`), ``{scale}`` allowed.
    images : folder of the images; needed by candidates with the ``dark`` modifier (it reads their green
        channel).

    Returns
    -------
    {spec as parsed: mAP@0.6}, in the order of ``candidates``.
    """
    from cellcls.masks import MaskCache
    from cellcls.metric import evaluate, read_solution
    from cellcls.submission import SubmissionWriter, read_sample_submission

    from .blend import BlendSpec, blend

    reader = MaskCache(masks).reader()
    scale = float(reader.params.get("image_scale", 1.0) or 1.0)
    specs = [BlendSpec.parse(text.format(scale=f"{scale:g}")) for text in candidates]
    if images is None and any(spec.uses("dark") for spec in specs):
        raise CellclsError("blend candidates with the 'dark' modifier need the images folder (images=)")
    per_image = _tables(cell_scores, image_scores)
    sample_rows = read_sample_submission(sample)
    wanted = {row.id for row in sample_rows}
    truths = {k: v for k, v in read_solution(solution).items() if k in wanted}
    entries = {image_id: reader.read(image_id) for image_id in per_image}
    rows = {image_id: _cell_rows(entries[image_id], cell_ids, specs, images)
            for image_id, (cell_ids, *_rest) in per_image.items()}
    results: dict[str, float] = {}
    for spec in specs:
        path = Path(out_dir) / f"{prefix}_{blend_file_name(str(spec))}.csv"
        with SubmissionWriter(path, sample_rows) as writer:
            for image_id, (cell_ids, cell, image, mask_key) in per_image.items():
                blended = blend(cell, image, rows[image_id], spec=spec)
                writer.add(image_id, entries[image_id].cells, blended, cell_ids=cell_ids, mask_key=mask_key,
                           expected_mask_key=entries[image_id].mask_key)
        results[str(spec)] = float(evaluate(truths, path).map)
    return results


def choose_blend_on_validation(cell_scores: Path, image_scores: Path, masks: Path, sample: Path,
                               solution: Path, out_dir: Path, *,
                               candidates: Sequence[str] = BLEND_CANDIDATES,
                               images: Path | None = None) -> tuple[str, dict[str, float]]:
    """The best of ``candidates`` on validation images (see :func:`score_blends` for the arguments).

    Returns
    -------
    (best spec, {spec: mAP@0.6}); on equal scores the earlier candidate wins.
    """
    results = score_blends(cell_scores, image_scores, masks, sample, solution, out_dir, candidates=candidates,
                           images=images)
    best = max(results, key=lambda k: (results[k], -list(results).index(k)))
    return best, results
