"""``cellcls demo`` (and ``make demo``): the whole recipe, from images to a scored submission.

Every step is a ``cellcls`` command run through the plugin CLI (:func:`cellcls.cli.main`), printed as
``$ cellcls ...`` before it runs, so what the demo does is what a user would type. Stages::

    world      cellcls synth (only without --data)
    folds      cellcls folds            5 folds, grouped by antibody when train.csv has a group column
    stats      cellcls stats            channel mean/std of train + test
    segment    cellcls segment          train and test into mask caches (+ segment-score on a world with truth)
    prior      cellcls prior-submission the floor: every cell gets the train class frequencies
    train      cellcls train            a cell-crop model and a whole-image model, validated on fold 0
    blend      cellcls predict          fold-0 validation images scored by both; the blend rule is picked
                                        on them when the data has per-cell truth (solution_train.csv)
    pseudo     cellcls predict + train  optional: the cell model relabels the train cells (soft labels)
                                        and fine-tuned on them
    predict    cellcls predict          every test cell: cell-only, image-only and the blend (with TTA)
    check      cellcls check-submission
    evaluate   cellcls evaluate         when the data has solution.csv

The figures end in ``OUT/summary.json`` and a table printed last. Nothing is tuned on the test set:
the blend is chosen on validation images of the TRAIN set, checkpoints are the last epoch's.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from cellcls.cli import main as cellcls_main
from cellcls.errors import CellclsError

from .demo_blend import BLEND_CANDIDATES, REPORT_BLENDS, choose_blend_on_validation, score_blends
from .pseudo import write_pseudo_labels

__all__ = ["DemoOptions", "DemoRun", "DemoData", "train_argv", "run_demo", "format_summary", "choose_blend_on_validation",
           "config_path", "report_argv", "DEFAULT_BLEND", "BLEND_CANDIDATES",
           "SUMMARY_KEYS"]

log = logging.getLogger(__name__)

#: learning rate of the pseudo-label fine-tuning (the first model's recipe starts at 3e-3)
PSEUDO_LR = 1.0e-3
#: the blend used when the data has no per-cell truth to choose one (4th place's weights)
DEFAULT_BLEND = "mean:w=0.7"
#: the figures every summary.json has (None where the data cannot give them)
SUMMARY_KEYS = ("data", "n_train", "n_test", "cells_found", "cells_true", "segment_f1", "image_macro_f1",
                "map_prior", "map_image", "map_cell", "map_blend", "map_submission", "blend", "blend_choice",
                "map_blends_test",
                "pseudo", "submission", "stage_s", "stage_cpu_s", "total_s")


@dataclass(frozen=True)
class DemoOptions:
    """What one demo run does (see ``cellcls demo --help``).

    Attributes
    ----------
    out : folder everything is written into.
    data : a Kaggle-layout folder to use instead of a synthetic world (None: synthesise one).
    n_train, n_test, size_px, seed : the synthetic world (ignored with ``data``); size in pixels.
    image_scale : pixel size of ``data``'s images relative to full-resolution HPA (None: auto).
    cell_epochs, image_epochs : training epochs of the two models.
    crop_px : cell crop side in pixels.
    image_px : side of the image model's input in pixels.
    pseudo : run the pseudo-label round.
    pseudo_epochs : epochs of its fine-tuning (from the first cell model, at :data:`PSEUDO_LR`).
    tta : TTA of both models at prediction.
    progress : progress bars of the steps.
    """

    out: Path
    data: Path | None = None
    n_train: int = 200
    n_test: int = 50
    size_px: int = 512
    seed: int = 0
    image_scale: float | None = None
    cell_epochs: int = 6
    image_epochs: int = 6
    crop_px: int = 48
    image_px: int = 128
    pseudo: bool = True
    pseudo_epochs: int = 3
    tta: str = "flips"
    progress: bool = False


@dataclass
class DemoRun:
    """The state of a run: stage times (s) and figures, filled as the stages go."""

    options: DemoOptions
    n_stages: int
    stage_s: dict[str, float] = field(default_factory=dict)
    stage_cpu_s: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def stage(self, name: str, title: str) -> "_Stage":
        """Context manager timing one stage and printing its progress line."""
        return _Stage(self, name, title)


class _Stage:
    def __init__(self, run: DemoRun, name: str, title: str) -> None:
        self.run, self.name, self.title = run, name, title

    def __enter__(self) -> "_Stage":
        self.run.done += 1
        elapsed = time.perf_counter() - self.run.t0
        print(f"\n[{self.run.done}/{self.run.n_stages}] {self.name}: {self.title}  (t = {elapsed:.0f} s)", flush=True)
        self.start, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds, cpu = time.perf_counter() - self.start, time.process_time() - self.cpu
        self.run.stage_s[self.name] = round(self.run.stage_s.get(self.name, 0.0) + seconds, 1)
        self.run.stage_cpu_s[self.name] = round(self.run.stage_cpu_s.get(self.name, 0.0) + cpu, 1)
        if exc[0] is None:
            print(f"    {self.name} took {seconds:.1f} s ({cpu:.1f} s of CPU)", flush=True)


def _cellcls(argv: Sequence[str], *, ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run one ``cellcls`` command as a user would type it; raise CellclsError on another exit code."""
    argv = [str(a) for a in argv]
    print("$ cellcls " + " ".join(argv), flush=True)
    code = cellcls_main(argv)
    if code not in ok_codes:
        raise CellclsError(f"demo step `cellcls {argv[0]}` failed with exit code {code}; see the messages above")
    return code


# ----------------------------------------------------------------------------- layout of the data
@dataclass(frozen=True)
class DemoData:
    """The paths of a Kaggle-layout data folder (:meth:`of` checks the required ones exist)."""

    root: Path
    train: Path
    test: Path
    labels: Path
    sample: Path
    solution: Path | None
    solution_train: Path | None
    truth: Path | None

    @classmethod
    def of(cls, root: Path) -> "DemoData":
        root = Path(root)
        need = [root / "train", root / "test", root / "train.csv", root / "sample_submission.csv"]
        missing = [str(p) for p in need if not p.exists()]
        if missing:
            raise CellclsError(f"--data {root} is not in Kaggle layout: missing {', '.join(missing)} (it needs "
                               "train/, test/, train.csv and sample_submission.csv; solution.csv is optional)")

        def maybe(path: Path) -> Path | None:
            return path if path.exists() else None

        return cls(root, root / "train", root / "test", root / "train.csv", root / "sample_submission.csv",
                   maybe(root / "solution.csv"), maybe(root / "solution_train.csv"), maybe(root / "truth"))


def _has_group(labels: Path) -> bool:
    header = labels.read_text().splitlines()[0] if labels.stat().st_size else ""
    return "group" in [c.strip() for c in header.split(",")]


def _write_subset_sample(labels: Path, folds: Path, fold: int, images: Path, out: Path) -> int:
    """A sample submission of the train images of ``fold`` (their sizes read from the PNG headers)."""
    import pandas as pd

    from cellcls.io import image_shape

    table = pd.read_csv(folds, dtype={"ID": str})
    ids = table.loc[table["fold"] == fold, "ID"].tolist()
    rows = []
    for image_id in ids:
        height, width = image_shape(images, image_id)[:2]
        rows.append({"ID": image_id, "ImageWidth": width, "ImageHeight": height, "PredictionString": ""})
    pd.DataFrame(rows, columns=["ID", "ImageWidth", "ImageHeight", "PredictionString"]).to_csv(out, index=False)
    return len(rows)


def config_path(name: str) -> Path:
    """A recipe of ``configs/`` beside the package (an editable or source install)."""
    path = Path(__file__).resolve().parents[1] / "configs" / name
    if not path.is_file():
        raise CellclsError(f"demo recipe {path} not found; cellcls demo needs the source tree's configs/ folder "
                           "(install with `pip install -e .` from a checkout)")
    return path


def _read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ----------------------------------------------------------------------------- figures
def _cells_found(masks: Path) -> int:
    import pandas as pd

    manifest = Path(masks) / "manifest.csv"
    if not manifest.is_file():
        return 0
    table = pd.read_csv(manifest)
    column = next((c for c in ("n_cells", "cells") if c in table.columns), None)
    return int(table[column].sum()) if column else 0


def _cells_true(truth: Path | None, ids: Sequence[str]) -> int | None:
    import pandas as pd

    if truth is None or not (truth / "cells.csv").is_file():
        return None
    table = pd.read_csv(truth / "cells.csv", dtype={"ID": str})
    return int(table["ID"].isin(set(ids)).sum())


def _image_truth_from_cells(truth: Path | None, ids: Sequence[str]) -> "Any":
    """(n, 19) bool image labels = union of the true labels of each image's cells (None without truth)."""
    import numpy as np
    import pandas as pd

    from cellcls.classes import NUM_CLASSES

    if truth is None or not (truth / "cells.csv").is_file():
        return None
    table = pd.read_csv(truth / "cells.csv", dtype={"ID": str, "labels": str})
    position = {image_id: i for i, image_id in enumerate(ids)}
    out = np.zeros((len(ids), NUM_CLASSES), dtype=bool)
    for image_id, labels in zip(table["ID"], table["labels"].fillna("")):
        if image_id in position:
            for token in str(labels).split("|"):
                if token.strip():
                    out[position[image_id], int(token)] = True
    return out


def _image_macro_f1(scores_path: Path, checkpoint: Path, truth: Path | None) -> float | None:
    """Macro F1 of the image model's per-image scores at its checkpoint's thresholds."""
    import numpy as np

    from cellcls.checkpoints import read_inference_checkpoint
    from cellcls.image_metrics import f1_scores
    from cellcls.scores import SCORE_COLUMNS, read_scores

    frame = read_scores(scores_path)
    first = frame.drop_duplicates("ID")
    ids = first["ID"].astype(str).tolist()
    targets = _image_truth_from_cells(truth, ids)
    if targets is None or not ids:
        return None
    _, meta = read_inference_checkpoint(checkpoint)
    thresholds = np.asarray(meta.thresholds, dtype=np.float64) if meta.thresholds else 0.5
    probs = first[list(SCORE_COLUMNS)].to_numpy(dtype=np.float64)
    value = float(f1_scores(targets, probs, thresholds)["macro_f1"])
    return value if np.isfinite(value) else None


# ----------------------------------------------------------------------------- the run
def _stage_count(options: DemoOptions, data: DemoData) -> int:
    return 9 + (options.data is None) + bool(options.pseudo) + (data.solution is not None)


def train_argv(config: Path, out: Path, data: DemoData, masks: Path | None, options: DemoOptions, *, epochs: int,
               extra: Sequence[str] = ()) -> list[str]:
    """The ``cellcls train`` arguments of one demo model (``masks`` given: a cell model on its crops)."""
    argv = ["train", "--config", config, "--out", out, "--data.images", data.train, "--data.labels", data.labels,
            "--data.folds", options.out / "folds.csv", "--data.stats", options.out / "stats.json",
            "--max-epochs", epochs, "--data.progress", "false", "--trainer.enable_progress_bar",
            str(options.progress).lower(), "--trainer.enable_model_summary", "false",
            "--seed_everything", options.seed]
    if masks is not None:
        argv += ["--data.masks", masks, "--data.crop_size", options.crop_px]
        # reported per epoch (val/cell_map) where the train images have per-cell truth; never used to select
        argv += ["--data.solution", data.solution_train] if data.solution_train is not None else []
    return argv + list(extra)


def _predict(checkpoints: Sequence[Path], images: Path, masks: Path, sample: Path, *, blend: str, tta: str,
             out: Path | None = None, scores: Path | None = None, config: Path | None = None,
             progress: bool = False) -> None:
    argv: list[Any] = ["predict", "--images", images, "--masks", masks, "--sample", sample]
    for ckpt in checkpoints:
        argv += ["--checkpoint", ckpt]
    argv += ["--blend", blend, "--tta", tta]
    argv += ["--out", out] if out is not None else []
    argv += ["--scores", scores] if scores is not None else []
    argv += ["--config", config] if config is not None else []
    argv += [] if progress else ["--no-progress"]
    _cellcls(argv, ok_codes=(0, 3))  # 3: some images had no cells and got the placeholder row


def _evaluate(solution: Path | None, submission: Path, json_path: Path) -> float | None:
    if solution is None:
        return None
    _cellcls(["evaluate", "--solution", solution, "--submission", submission, "--json", json_path])
    return float(_read_json(json_path)["map"])


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run every stage into ``options.out``; return the summary (also written to ``OUT/summary.json``).

    Raises
    ------
    CellclsError
        A step failed (the message names the command; its own messages are above) or ``data`` is
        not in Kaggle layout.
    """
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    quiet = [] if options.progress else ["--no-progress"]
    if options.data is None:
        world = out / "world"
        planned = DemoData(world, world / "train", world / "test", world / "train.csv", world / "sample_submission.csv",
                        world / "solution.csv", world / "solution_train.csv", world / "truth")
    else:
        planned = DemoData.of(options.data)
    run = DemoRun(options, _stage_count(options, planned))
    fig = run.figures
    fig["data"] = str(planned.root)

    if options.data is None:
        with run.stage("world", "synthetic HPA-like world with per-cell truth"):
            _cellcls(["synth", "--out", world, "--train", options.n_train, "--test", options.n_test,
                      "--size", options.size_px, "--seed", options.seed, *quiet])
    data = DemoData.of(planned.root)

    with run.stage("folds", "multilabel stratified folds (proteins kept within a fold)"):
        group = ["--group-col", "group"] if _has_group(data.labels) else []
        _cellcls(["folds", "--labels", data.labels, "--k", 5, "--seed", options.seed, *group,
                  "--out", out / "folds.csv"])
    with run.stage("stats", "per-channel mean/std over train + test"):
        _cellcls(["stats", "--images", data.train, data.test, "--out", out / "stats.json"])

    masks_train, masks_test = out / "masks" / "train", out / "masks" / "test"
    scale = ["--image-scale", options.image_scale] if options.image_scale is not None else []
    with run.stage("segment", "every train and test image into cells (mask caches)"):
        _cellcls(["segment", "--images", data.train, "--out", masks_train, *scale, *quiet], ok_codes=(0, 3))
        _cellcls(["segment", "--images", data.test, "--out", masks_test, "--ids", data.sample, *scale, *quiet],
                 ok_codes=(0, 3))
        import pandas as pd

        test_ids = pd.read_csv(data.sample, dtype={"ID": str})["ID"].tolist()
        fig["n_test"] = len(test_ids)
        fig["n_train"] = int(len(pd.read_csv(data.labels)))
        fig["cells_found"] = _cells_found(masks_test)
        fig["cells_true"] = _cells_true(data.truth, test_ids)
        fig["segment_f1"] = None
        if data.truth is not None and any(data.truth.glob("*_cells.png")):
            _cellcls(["segment-score", "--masks", masks_test, "--truth", data.truth,
                      "--json", out / "segment_score.json", *quiet])
            fig["segment_f1"] = float(_read_json(out / "segment_score.json")["f1"])

    with run.stage("prior", "the floor: every cell gets the train class frequencies"):
        prior = out / "prior_submission.csv"
        _cellcls(["prior-submission", "--masks", masks_test, "--sample", data.sample, "--labels", data.labels,
                  "--out", prior, *quiet])
        fig["map_prior"] = _evaluate(data.solution, prior, out / "score_prior.json")

    runs = out / "runs"
    with run.stage("train", f"cell model ({options.cell_epochs} epochs) and image model "
                            f"({options.image_epochs} epochs), validated on fold 0"):
        _cellcls(train_argv(config_path("demo_recipe_cell.yaml"), runs / "cell", data, masks_train, options,
                             epochs=options.cell_epochs))
        _cellcls(train_argv(config_path("demo_recipe_image.yaml"), runs / "image", data, None, options,
                             epochs=options.image_epochs, extra=["--data.image_size", options.image_px]))
    cell_ckpt = runs / "cell" / "checkpoints" / "last.ckpt"
    image_ckpt = runs / "image" / "checkpoints" / "last.ckpt"
    image_only = out / "image_only.yaml"
    image_only.write_text("image_on_crops: false\n")

    with run.stage("blend", "fold-0 validation images scored by both models; the blend is picked there"):
        val_sample = out / "val_sample.csv"
        _write_subset_sample(data.labels, out / "folds.csv", 0, data.train, val_sample)
        val = out / "validation"
        val.mkdir(exist_ok=True)
        _predict([cell_ckpt], data.train, masks_train, val_sample, blend="cell", tta=options.tta,
                 scores=val / "cell.parquet", progress=options.progress)
        _predict([image_ckpt], data.train, masks_train, val_sample, blend="cell", tta=options.tta,
                 scores=val / "image.parquet", config=image_only, progress=options.progress)
        if data.solution_train is not None:
            best, scores = choose_blend_on_validation(val / "cell.parquet", val / "image.parquet", masks_train,
                                                      val_sample, data.solution_train, val, images=data.train)
            print("validation mAP@0.6 of each blend:  " + ",  ".join(f"{k} {v:.3f}" for k, v in scores.items()))
            fig["blend_choice"] = scores
        else:
            best = DEFAULT_BLEND
            fig["blend_choice"] = None
            print(f"no per-cell truth of the train images (solution_train.csv): default blend {best}")
        fig["blend"] = best

    fig["pseudo"] = None
    if options.pseudo:
        with run.stage("pseudo", "pseudo-label round: the cell model relabels every train cell within its "
                                 "image's labels, and is fine-tuned on those soft labels"):
            raw, soft = out / "pseudo_scores.parquet", out / "pseudo_labels.parquet"
            # no TTA here: the soft labels are rescaled per image anyway, and this pass covers every train cell
            _cellcls(["predict", "--images", data.train, "--masks", masks_train, "--checkpoint", cell_ckpt,
                      "--tta", "none", "--blend", "cell", "--scores", raw, *quiet], ok_codes=(0, 3))
            n = write_pseudo_labels(raw, data.labels, soft)
            print(f"soft labels of {n} train cells (cell scores kept on their image's labels) -> {soft}")
            # fine-tuned from the first model rather than trained anew: a third of the time for the same gain
            _cellcls(train_argv(config_path("demo_recipe_cell.yaml"), runs / "cell_pseudo", data, masks_train, options,
                                 epochs=options.pseudo_epochs,
                                 extra=["--cell-labels", soft, "--model.pretrained_file", cell_ckpt,
                                        "--model.lr", PSEUDO_LR, "--model.warmup_epochs", 0]))
            cell_ckpt = runs / "cell_pseudo" / "checkpoints" / "last.ckpt"
            fig["pseudo"] = str(cell_ckpt)

    with run.stage("predict", f"every test cell, TTA {options.tta}: cell-only, image-only, blend {best}"):
        test_dir = out / "test_scores"
        test_dir.mkdir(exist_ok=True)
        _predict([cell_ckpt], data.test, masks_test, data.sample, blend="cell", tta=options.tta,
                 out=test_dir / "cell_only.csv", scores=test_dir / "cell.parquet", progress=options.progress)
        _predict([image_ckpt], data.test, masks_test, data.sample, blend="cell", tta=options.tta,
                 out=test_dir / "image_only.csv", scores=test_dir / "image.parquet", config=image_only,
                 progress=options.progress)
        submission = out / "submission.csv"
        _predict([cell_ckpt, image_ckpt], data.test, masks_test, data.sample, blend=best, tta=options.tta,
                 out=submission, scores=out / "scores.parquet", progress=options.progress)
        fig["submission"] = str(submission)
    with run.stage("check", "the submission against the sample"):
        _cellcls(["check-submission", submission, "--sample", data.sample])
    fig["image_macro_f1"] = _image_macro_f1(test_dir / "image.parquet", image_ckpt, data.truth)
    fig.update(map_image=None, map_cell=None, map_blend=None, map_submission=None, map_blends_test=None)
    if data.solution is not None:
        with run.stage("evaluate", "competition metric (mAP at mask IoU 0.6) of every submission"):
            fig["map_cell"] = _evaluate(data.solution, test_dir / "cell_only.csv", test_dir / "score_cell.json")
            fig["map_image"] = _evaluate(data.solution, test_dir / "image_only.csv", test_dir / "score_image.json")
            fig["map_blend"] = _evaluate(data.solution, submission, out / "score.json")
            fig["map_submission"] = fig["map_blend"]
            # reported only: the submission's blend was chosen on validation images above
            fig["map_blends_test"] = score_blends(test_dir / "cell.parquet", test_dir / "image.parquet", masks_test,
                                                  data.sample, data.solution, test_dir, candidates=REPORT_BLENDS,
                                                  prefix="test", images=data.test)
            print("test mAP@0.6 of every blend rule (reported, not used to choose):  "
                  + ",  ".join(f"{k} {v:.3f}" for k, v in fig["map_blends_test"].items()))
    fig["stage_s"] = dict(run.stage_s)
    fig["stage_cpu_s"] = dict(run.stage_cpu_s)
    fig["total_s"] = round(time.perf_counter() - run.t0, 1)
    fig["options"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()}
    summary = {key: fig.get(key) for key in SUMMARY_KEYS} | {"options": fig["options"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------- the report page
def report_argv(out: Path, summary: dict[str, Any]) -> list[str]:
    """``cellcls report`` arguments for a finished demo folder: every input it made that exists."""
    out, root = Path(out), Path(summary["data"])
    argv: list[str] = ["report", "--out", str(out / "report"), "--title", f"cellcls demo: {root}"]
    evaluations = (("prior", out / "score_prior.json"), ("image", out / "test_scores" / "score_image.json"),
                   ("cell", out / "test_scores" / "score_cell.json"), ("blend", out / "score.json"))
    for name, path in evaluations:
        argv += ["--evaluation", f"{name}={path}"] if path.is_file() else []
    if (out / "segment_score.json").is_file():
        argv += ["--segmentation", f"test={out / 'segment_score.json'}"]
    for name in ("cell", "image", "cell_pseudo"):
        for log_csv in sorted((out / "runs" / name / "logs").glob("version_*/metrics.csv"))[-1:]:
            argv += ["--train-log", f"{name}={log_csv}"]
    labelled = out / "pseudo_scores.parquet"
    labelled = labelled if labelled.is_file() else out / "validation" / "cell.parquet"
    if labelled.is_file():
        argv += ["--scores", str(labelled), "--labels", str(root / "train.csv")]
    if (out / "scores.parquet").is_file():
        argv += ["--images", str(root / "test"), "--masks", str(out / "masks" / "test"),
                 "--overlay-scores", str(out / "scores.parquet")]
        argv += ["--truth", str(root / "truth")] if (root / "truth").is_dir() else []
    return argv


# ----------------------------------------------------------------------------- the printed table
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_summary(summary: dict[str, Any], out: Path) -> str:
    """The closing table of a demo run (what summary.json holds, for people)."""
    lines = [f"== demo summary ({summary['data']}; {summary['n_train']} train / {summary['n_test']} test images)"]
    cells = _fmt(summary["cells_found"]) + (f" (truth {summary['cells_true']})" if summary["cells_true"] else "")
    rows = [
        ("test cells found", cells),
        ("segmentation F1 at IoU 0.6", _fmt(summary["segment_f1"])),
        ("image model macro F1 (test images)", _fmt(summary["image_macro_f1"])),
        ("test mAP@0.6, prior (floor)", _fmt(summary["map_prior"])),
        ("test mAP@0.6, image model only", _fmt(summary["map_image"])),
        ("test mAP@0.6, cell model only", _fmt(summary["map_cell"])),
        (f"test mAP@0.6, blend {summary['blend']} (submission)", _fmt(summary["map_blend"])),
        ("pseudo-label round", "yes" if summary["pseudo"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    lines += [f"  {k:<{width}}  {v}" for k, v in rows]
    if summary.get("map_blends_test"):
        lines.append("  test mAP@0.6 of each blend rule (reported only; the submission's was chosen on validation):")
        lines += [f"    {spec:<{width - 2}}  {value:.3f}" for spec, value in summary["map_blends_test"].items()]
    times = ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_s"].items())
    cpu = sum(summary.get("stage_cpu_s", {}).values())
    lines.append(f"  time per stage (s): {times}; total {summary['total_s']:.0f} s ({cpu:.0f} s of CPU)")
    lines.append(f"  submission: {summary['submission']}; figures: {Path(out) / 'summary.json'}")
    return "\n".join(lines)
