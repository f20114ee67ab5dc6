"""What the weak labels cost: the demo's cell recipe trained on image labels vs on the world's cell truth.

    python benchmarks/weak_label_ceiling.py --demo DEMO_OUT [--epochs N] [--no-train]

DEMO_OUT is a finished ``cellcls demo`` folder on a synthetic world (it holds ``world/`` with
``truth/``, ``masks/train``, ``folds.csv``, ``stats.json`` and ``runs/cell``). Printed:

1. Label quality of the weak targets: per class, how many train cells the image labels broadcast
   call positive and what share of them truly show the class (cells matched to the truth at mask
   IoU >= 0.6; an unmatched segmented cell counts as showing nothing); how many cells are Negative
   and how many images carry the Negative label (the only source a broadcast model has for it); how
   well the targets rank the truth (mean AP over classes) broadcast and with the protein signal folded
   in (``cellcls.signal``, the demo's ``dark_negative``).
2. The pseudo round's starting point: mAP@0.6 of the first cell model's own scores
   (``pseudo_scores.parquet``) on the cells it trained on and on the held-out fold-0 cells. The two are
   different images, so their gap mixes memorisation with how hard each set is; compare a set with
   itself (an out-of-fold run) before calling it memorisation.
3. The ceiling (unless ``--no-train``): the same recipe, epochs and seed trained on the TRUTH of each
   cell (``cellcls train --cell-labels``), its validation cell mAP per epoch beside the demo's own
   broadcast run and its pseudo round (read from their ``metrics.csv``), and its TEST mAP@0.6 (flip TTA,
   cell only) beside the demo's cell-only figure.

Nothing here is used by the demo: it explains its score. Takes about the demo's cell-training time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cellcls.classes import NEGATIVE, NUM_CLASSES  # noqa: E402
from cellcls.errors import CellclsError  # noqa: E402
from cellcls.show import short_name  # noqa: E402

#: mask IoU at which a segmented cell takes a truth cell's labels (the metric's threshold)
MATCH_IOU = 0.6


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, required=True, help="a finished `cellcls demo --out` folder")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the truth run (default: the demo's)")
    parser.add_argument("--out", type=Path, default=None, help="where the truth run goes (default DEMO/ceiling)")
    parser.add_argument("--no-train", action="store_true", help="only the label-quality table and the pseudo round's starting point")
    return parser.parse_args(argv)


def truth_cell_labels(demo: Path) -> "tuple[object, dict[str, np.ndarray]]":
    """(score table of the truth labels of every segmented train cell, {ID: (19,) image labels})."""
    import pandas as pd

    from cellcls.labels import read_train_csv
    from cellcls.masks import MaskCache
    from cellcls.scores import score_frame
    from cellcls.show import match_cells, read_truth

    world = demo / "world"
    reader = MaskCache(demo / "masks" / "train").reader()
    labels = read_train_csv(world / "train.csv")
    parts = []
    for image_id in labels.ids:
        entry = reader.read(image_id, upscale=True)
        truth_map, truth_labels = read_truth(world / "truth", image_id)
        matches = match_cells(entry.cells, truth_map, iou_threshold=MATCH_IOU)
        cell_ids = np.unique(entry.cells)
        cell_ids = cell_ids[cell_ids > 0]
        scores = np.zeros((len(cell_ids), NUM_CLASSES), dtype=np.float64)
        for row, cell_id in enumerate(cell_ids):
            classes = truth_labels.get(matches.get(int(cell_id), -1), (NEGATIVE,))
            scores[row, list(classes)] = 1.0
        parts.append(score_frame(image_id, cell_ids, scores, mask_key=entry.mask_key, source="truth"))
    image_labels = dict(zip(labels.ids, labels.targets.astype(bool)))
    return pd.concat(parts, ignore_index=True), image_labels


def _truth_and_broadcast(table, image_labels: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(n, 19) bool cell truth of the rows of ``table``, and their image labels broadcast (n, 19) bool."""
    from cellcls.scores import SCORE_COLUMNS

    return table[list(SCORE_COLUMNS)].to_numpy() > 0.5, np.stack([image_labels[i] for i in table["ID"]])


def label_quality(table, image_labels: dict[str, np.ndarray]) -> list[tuple[str, int, int, float]]:
    """Per class: (name, broadcast-positive cells, of them truly positive, precision)."""
    truth, broadcast = _truth_and_broadcast(table, image_labels)
    rows = []
    for c in range(NUM_CLASSES):
        n = int(broadcast[:, c].sum())
        hit = int((broadcast[:, c] & truth[:, c]).sum())
        rows.append((short_name(c), n, hit, hit / n if n else float("nan")))
    return rows


def train_cell_darkness(demo: Path, table) -> np.ndarray:
    """:func:`cellcls.signal.entry_cell_darkness` of every row of ``table`` (segmented train cells)."""
    from cellcls.io import read_image
    from cellcls.masks import MaskCache
    from cellcls.signal import entry_cell_darkness

    reader = MaskCache(demo / "masks" / "train").reader()
    parts = {}
    for image_id, rows in table.groupby("ID", sort=False):
        image = read_image(demo / "world" / "train", image_id)
        parts[image_id] = dict(zip(rows["cell_id"], entry_cell_darkness(image, reader.read(image_id),
                                                                        rows["cell_id"].tolist())))
    return np.array([parts[i][c] for i, c in zip(table["ID"], table["cell_id"])], dtype=np.float32)


def target_quality(table, image_labels: dict[str, np.ndarray], darkness: np.ndarray) -> dict[str, float]:
    """Mean over classes of the AP of each target column against the cell truth: broadcast targets,
    the same with the protein signal folded in (what ``dark_negative`` trains on), and darkness alone
    as a ranking of the Negative cells."""
    from sklearn.metrics import average_precision_score

    from cellcls.signal import dark_cell_targets

    truth, broadcast = _truth_and_broadcast(table, image_labels)
    broadcast = broadcast.astype(np.float32)

    def mean_ap(targets: np.ndarray) -> float:
        return float(np.mean([average_precision_score(truth[:, c], targets[:, c])
                              for c in range(NUM_CLASSES) if truth[:, c].any()]))

    return {"broadcast": mean_ap(broadcast), "broadcast + darkness": mean_ap(dark_cell_targets(broadcast, darkness)),
            "Negative AP of darkness": float(average_precision_score(truth[:, NEGATIVE], darkness))}


def _subset_map(scores_path: Path, demo: Path, ids: set[str], name: str, out: Path) -> float:
    """mAP@0.6 of a score table's cells of ``ids`` against the train solution."""
    from cellcls.masks import MaskCache
    from cellcls.metric import evaluate, read_solution
    from cellcls.scores import iter_image_scores, read_scores
    from cellcls.submission import SampleRow, SubmissionWriter

    reader = MaskCache(demo / "masks" / "train").reader()
    per = [p for p in iter_image_scores(read_scores(scores_path)) if p[0] in ids]
    entries = {image_id: reader.read(image_id) for image_id, *_ in per}
    sample = [SampleRow(image_id, e.original_shape[1], e.original_shape[0]) for image_id, e in entries.items()]
    submission = out / f"submission_{name}.csv"
    with SubmissionWriter(submission, sample) as writer:
        for image_id, cell_ids, scores, mask_key in per:
            writer.add(image_id, entries[image_id].cells, scores, cell_ids=cell_ids, mask_key=mask_key,
                       expected_mask_key=entries[image_id].mask_key)
    truths = {k: v for k, v in read_solution(demo / "world" / "solution_train.csv").items() if k in entries}
    return float(evaluate(truths, submission).map)


def trained_vs_held_out(demo: Path, out: Path) -> tuple[float, float] | None:
    """(mAP on the first model's training cells, on the held-out fold-0 cells) of ``pseudo_scores.parquet``."""
    import pandas as pd

    scores = demo / "pseudo_scores.parquet"
    if not scores.is_file():
        return None
    folds = pd.read_csv(demo / "folds.csv", dtype={"ID": str})
    fold0 = set(folds.loc[folds["fold"] == 0, "ID"])
    rest = set(folds["ID"]) - fold0
    return (_subset_map(scores, demo, rest, "trained_on", out), _subset_map(scores, demo, fold0, "held_out", out))


def val_curve(run: Path) -> list[float]:
    """val/cell_map per epoch of a training run folder (its last logs/version_*/metrics.csv)."""
    import pandas as pd

    logs = sorted((run / "logs").glob("version_*/metrics.csv"))
    if not logs:
        return []
    frame = pd.read_csv(logs[-1])
    if "val/cell_map" not in frame:
        return []
    return [float(v) for v in frame.dropna(subset=["val/cell_map"]).sort_values("epoch")["val/cell_map"]]


def train_on_truth(demo: Path, recorded: dict, labels_path: Path, out: Path, epochs: int) -> None:
    """The demo's cell-model training command (:func:`infer.demo.train_argv`, the demo's ``recorded``
    options) with ``--cell-labels``, the protein-signal shaping off: truth labels need no guessing."""
    from cellcls.cli import main as cellcls_main
    from infer.demo import DemoData, DemoOptions, config_path, train_argv

    options = DemoOptions(**{**recorded, "out": demo, "data": None})
    argv = train_argv(config_path("demo_recipe_cell.yaml"), out, DemoData.of(demo / "world"), demo / "masks" / "train",
                      options, epochs=epochs, extra=["--cell-labels", labels_path, "--data.dark_negative", "false"])
    code = cellcls_main([str(a) for a in argv])
    if code != 0:
        raise CellclsError(f"the truth-label training run failed (exit {code}); see its messages above")


def test_map(demo: Path, checkpoint: Path, out: Path) -> float:
    """Test mAP@0.6 of a cell checkpoint, cell scores only, flip TTA (as the demo predicts)."""
    from cellcls.cli import main as cellcls_main

    world = demo / "world"
    submission = out / "test_truth_run.csv"
    argv = ["predict", "--images", world / "test", "--masks", demo / "masks" / "test", "--sample",
            world / "sample_submission.csv", "--checkpoint", checkpoint, "--blend", "cell", "--tta", "flips",
            "--out", submission, "--no-progress"]
    if cellcls_main([str(a) for a in argv]) not in (0, 3):
        raise CellclsError("predicting the test cells with the truth-label model failed; see the messages above")
    from cellcls.metric import evaluate, read_solution

    return float(evaluate(read_solution(world / "solution.csv"), submission).map)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    demo = args.demo
    need = [demo / "world" / "truth", demo / "masks" / "train", demo / "folds.csv", demo / "summary.json"]
    missing = [str(p) for p in need if not p.exists()]
    if missing:
        raise SystemExit(f"{demo} is not a finished demo folder on a synthetic world: missing {', '.join(missing)}")
    summary = json.loads((demo / "summary.json").read_text())
    from cellcls.scores import write_scores

    table, image_labels = truth_cell_labels(demo)
    out = args.out or demo / "ceiling"
    out.mkdir(parents=True, exist_ok=True)
    labels_path = write_scores(table, out / "truth_cell_labels.parquet")

    print(f"1. weak labels of {len(table)} segmented train cells ({len(image_labels)} images)")
    print(f"{'class':>22} {'broadcast +':>12} {'truly +':>8} {'precision':>9}")
    for name, n, hit, precision in label_quality(table, image_labels):
        print(f"{name:>22} {n:>12} {hit:>8} {precision:>9.2f}")
    negative_cells = int((table[f"p{NEGATIVE}"] > 0.5).sum())
    negative_images = sum(bool(v[NEGATIVE]) for v in image_labels.values())
    print(f"Negative cells in truth: {negative_cells} ({negative_cells / len(table):.0%}); images labelled "
          f"Negative: {negative_images}")
    quality = target_quality(table, image_labels, train_cell_darkness(demo, table))
    print("targets against the cell truth (mean AP over classes): "
          + ",  ".join(f"{k} {v:.3f}" for k, v in quality.items()))

    memo = trained_vs_held_out(demo, out)
    if memo is not None:
        print(f"\n2. first cell model's scores (pseudo_scores.parquet): mAP@0.6 on the cells it trained on "
              f"{memo[0]:.3f}, on held-out fold-0 cells {memo[1]:.3f} (other images: not a memorisation figure)")

    curves = {"first model (demo runs/cell)": val_curve(demo / "runs" / "cell"),
              "pseudo round (demo runs/cell_pseudo)": val_curve(demo / "runs" / "cell_pseudo")}
    if not args.no_train:
        options = summary.get("options", {})
        train_on_truth(demo, options, labels_path, out / "truth_run", args.epochs or int(options.get("cell_epochs", 6)))
        curves["cell truth (this script)"] = val_curve(out / "truth_run")
        test = test_map(demo, out / "truth_run" / "checkpoints" / "last.ckpt", out)
        print(f"\ntest mAP@0.6, cell only: trained on cell truth {test:.3f}; the demo (weak labels"
              f"{' + pseudo round' if summary.get('pseudo') else ''}) {summary.get('map_cell') or float('nan'):.3f}")
    print("\n3. validation cell mAP@0.6 per epoch (fold-0 images, same recipe)")
    for name, curve in curves.items():
        shown = "  ".join(f"{v:.3f}" for v in curve) if curve else "-"
        print(f"{name:>38}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
