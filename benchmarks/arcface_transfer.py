"""Label transfer by ArcFace embeddings on a synthetic world: image-level test mAP before and after.

    python benchmarks/arcface_transfer.py --world WORLD --checkpoint CKPT [--masks MASKS] [--tta flips]
        [--thresholds 0.5 0.65 0.8] [--embeddings TRAIN.npz TEST.npz]

WORLD is a ``cellcls synth`` world (some of its test images come from proteins also in train;
``truth/images.csv`` says which group each image has); CKPT a ``cellcls train --task arcface``
checkpoint trained on WORLD/train, on whole images or on cell crops (then MASKS/train and MASKS/test
are the mask caches of the train and test images, default WORLD/masks). The test images' scores are
the train class frequencies (the prior baseline: every image the same), then
:func:`cellcls.neighbors.transfer_labels` replaces the scores of each test image whose nearest train
image (cosine of the embeddings) reaches the threshold by that image's labels.

The threshold is picked on TRAIN, never on test: the checkpoint's held-out images
(:func:`train.arcface.arcface_split` with its fold; the network never trained on them) query the
other train images with the same rule, and the threshold of the candidate grid giving the highest
held-out mAP wins (ties: the higher threshold). Those images all have their group in the index, so
the pick is optimistic for a test set with new groups; the table shows the fixed thresholds too.

Printed per threshold, for all test images and separately for those whose group occurs / does not
occur in train: image-level mAP (mean over classes of AP, :mod:`cellcls.image_metrics`) before and
after; how many were touched, how many of those matched an image of their own group, how many matched
an image of their own group OR with exactly their label set (what transfer needs for mAP); a control
(the same touched images given a RANDOM train image's labels, 200 draws: what tie-breaking alone
does), its mean and sd, after - mean, and how many draws reach "after" (an empirical p-value: with
few images a lucky match list beats the mean easily); and whether every untouched row stayed
bit-identical.

``--embeddings`` reuses the files of ``cellcls embed`` (train, then test; any row order, every
image of the world's split present) instead of embedding the images again; the checkpoint is still
read for its fold (the held-out split) and its description.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
GRID = tuple(np.round(np.arange(0.30, 0.99, 0.05), 2))
CONTROL_DRAWS = 200


def _truth(world: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    from cellcls.labels import parse_label_string

    table = pd.read_csv(world / "truth" / "images.csv", dtype=str)
    table = table[table["split"] == split].sort_values("ID")
    targets = np.zeros((len(table), 19), dtype=np.uint8)
    for row, text in enumerate(table["labels"]):
        targets[row, list(parse_label_string(text))] = 1
    return table["ID"].tolist(), targets, table["group"].to_numpy()


def _map(y: np.ndarray, scores: np.ndarray) -> float:
    from cellcls.image_metrics import mean_average_precision

    keep = y.any(axis=0)  # classes without a positive among these rows have no AP
    return mean_average_precision(y[:, keep], scores[:, keep]) if keep.any() else float("nan")


def _transfer(prior: np.ndarray, sims: np.ndarray, nn_labels: np.ndarray, threshold: float):
    from cellcls.neighbors import transfer_labels

    return transfer_labels(prior, sims, nn_labels[:, None, :].astype(np.float32), threshold=threshold)


def pick_threshold(emb: np.ndarray, y: np.ndarray, groups: np.ndarray, fold: int) -> tuple[float, dict]:
    """Threshold of :data:`GRID` maximising held-out train mAP (queries: held-out images; index: the rest)."""
    from cellcls.neighbors import cosine_topk
    from train.arcface import arcface_split

    train, val = arcface_split([str(g) for g in groups], fold=fold)  # rows must be in train.csv order
    sims, idx = cosine_topk(emb[val], emb[train], k=1, progress=False)
    prior = np.repeat(y[train].mean(axis=0, keepdims=True), int(val.sum()), axis=0)
    nn = y[train][idx[:, 0]]
    scores = {t: _map(y[val], _transfer(prior, sims, nn, t)[0]) for t in GRID}
    best = max(GRID, key=lambda t: (round(scores[t], 6), t))
    same = float(np.mean(groups[train][idx[:, 0]] == groups[val]))
    return float(best), {"held_out": int(val.sum()), "map_prior": _map(y[val], prior), "map": scores[best],
                         "precision_at_1": same}


def _control(prior, touched, train_y, rows, test_y, rng) -> np.ndarray:
    """(CONTROL_DRAWS,) mAP on ``rows`` when the touched images get random train images' labels."""
    values = []
    for _ in range(CONTROL_DRAWS):
        after = prior.copy()
        after[touched] = train_y[rng.integers(0, len(train_y), int(touched.sum()))]
        values.append(_map(test_y[rows], after[rows]))
    return np.asarray(values)


def _load_embeddings(path: Path, ids: list[str]) -> np.ndarray:
    """Rows of a ``cellcls embed`` file in the order of ``ids`` (every ID must be in the file)."""
    from cellcls.embeddings import read_embeddings

    emb = read_embeddings(path)
    row_of = {str(i): r for r, i in enumerate(emb.ids)}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise SystemExit(f"{path} lacks {len(missing)} image(s) of the world, e.g. {missing[0]}: embed the "
                         f"whole split")
    return emb.embeddings[[row_of[i] for i in ids]]


def _row(name: str, part: str, rows, prior, after, touched, same_group, same_set, control, test_y) -> str:
    before, later = _map(test_y[rows], prior[rows]), _map(test_y[rows], after[rows])
    identical = bool(np.array_equal(after[rows & ~touched], prior[rows & ~touched]))
    t = touched & rows
    mean, sd, beaten = control.mean(), control.std(), int((control >= later).sum())
    return (f"| {name} | {part} ({int(rows.sum())}) | {int(t.sum())} | {int((t & same_group).sum())} | "
            f"{int((t & (same_group | same_set)).sum())} | {before:.4f} | {later:.4f} | {mean:.4f} +- {sd:.4f} | "
            f"{later - mean:+.4f} | {beaten}/{len(control)} | after > before and > control | {later / before:.2f} | "
            f"{identical} |")


def main(argv: list[str] | None = None) -> int:
    from cellcls.neighbors import cosine_topk
    from infer.embed import embed_images, read_arcface_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--masks", type=Path, help="folder with the train/ and test/ mask caches (cell-crop "
                        "checkpoints; default WORLD/masks)")
    parser.add_argument("--tta", default="flips")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    parser.add_argument("--embeddings", type=Path, nargs=2, metavar=("TRAIN", "TEST"),
                        help="`cellcls embed` files of WORLD/train and WORLD/test (skips embedding; --tta unused)")
    args = parser.parse_args(argv)

    checkpoint = read_arcface_checkpoint(args.checkpoint)
    masks = (args.masks or args.world / "masks") if checkpoint.on_cells else None
    train_ids, train_y, train_groups = _truth(args.world, "train")
    test_ids, test_y, test_groups = _truth(args.world, "test")
    if args.embeddings:
        train_emb = _load_embeddings(args.embeddings[0], train_ids)
        test_emb = _load_embeddings(args.embeddings[1], test_ids)
    else:
        train_emb = embed_images(checkpoint, args.world / "train", train_ids, masks=masks and masks / "train",
                                 tta=args.tta, progress=False)
        test_emb = embed_images(checkpoint, args.world / "test", test_ids, masks=masks and masks / "test",
                                tta=args.tta, progress=False)
    # the split depends on the row order within each group: rebuild it in train.csv order, as training did
    csv_order = np.array([train_ids.index(i) for i in pd.read_csv(args.world / "train.csv", dtype=str)["ID"]])
    picked, held = pick_threshold(train_emb[csv_order], train_y[csv_order], train_groups[csv_order],
                                  checkpoint.meta.fold or 0)

    prior = np.repeat(train_y.mean(axis=0, keepdims=True), len(test_ids), axis=0)
    sims, idx = cosine_topk(test_emb, train_emb, k=1, progress=False)
    nn = idx[:, 0]
    shared = np.isin(test_groups, train_groups)
    same_group = train_groups[nn] == test_groups
    same_set = (train_y[nn] == test_y).all(axis=1)
    has_set = np.array([(train_y == row).all(axis=1).any() for row in test_y])
    everyone = np.ones(len(test_ids), dtype=bool)
    rng = np.random.default_rng(0)

    print(f"world {args.world}: {len(train_ids)} train / {len(test_ids)} test images, {int(shared.sum())} test "
          f"images of groups also in train, {int(has_set.sum())} whose exact label set some train image has; "
          f"checkpoint {args.checkpoint} ({checkpoint.describe()}, "
          f"{'embeddings from ' + ' and '.join(map(str, args.embeddings)) if args.embeddings else 'tta ' + args.tta})")
    print(f"nearest train image: same group for {int((same_group & shared).sum())} of {int(shared.sum())} "
          f"shared-group test images; same group or same label set for {int((same_group | same_set).sum())} of "
          f"{int((shared | has_set).sum())} test images that have one in train")
    print(f"threshold picked on train: {picked:.2f} (held-out train images: {held['held_out']}, precision@1 "
          f"{held['precision_at_1']:.3f}, mAP {held['map_prior']:.4f} -> {held['map']:.4f})")
    best = np.sort(sims[:, 0])
    print(f"nearest-train cosine of the test images: min {best[0]:.3f}, median {np.median(best):.3f}, "
          f"max {best[-1]:.3f}; shared-group images {np.median(sims[shared, 0]) if shared.any() else float('nan'):.3f} "
          f"median, new-group images {np.median(sims[~shared, 0]) if (~shared).any() else float('nan'):.3f} median")
    pair = train_emb @ train_emb.T
    print(f"spread of the train embeddings: mean pairwise cosine {pair[~np.eye(len(pair), dtype=bool)].mean():.3f}, "
          f"norm of their mean {np.linalg.norm(train_emb.mean(axis=0)):.3f} (near 1 = one shared direction "
          f"dominates: a collapsed embedding)")
    print("| threshold | test images | touched | touched, right group | touched, right group or label set | "
          "mAP before | mAP after | control (random labels), mean +- sd | after - control | control draws >= after | "
          "goal | ratio | untouched rows identical |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    parts = [("all", everyone), ("group in train", shared), ("group not in train", ~shared)]
    rows = [(f"{t:.2f}", t) for t in args.thresholds]
    rows.insert(0, (f"{picked:.2f} (train)", picked))
    for name, threshold in rows:
        after, touched = _transfer(prior, sims, train_y[nn], threshold)
        for part, rows_of in parts:
            if not rows_of.any():
                continue
            control = _control(prior, touched, train_y, rows_of, test_y, rng)
            print(_row(name, part, rows_of, prior, after, touched, same_group, same_set, control, test_y))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
