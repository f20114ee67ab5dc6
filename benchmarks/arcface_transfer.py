"""Label transfer by ArcFace embeddings on a synthetic world: image-level test mAP before and after.

    python benchmarks/arcface_transfer.py --world WORLD --checkpoint CKPT [--tta flips] [--thresholds 0.5 0.65 0.8]

WORLD is a ``cellcls synth`` world (about 30 % of its test images come from proteins also in train,
``truth/images.csv`` says which group each image has); CKPT a ``cellcls train --task arcface`` checkpoint
trained on WORLD/train. The test images' scores are the train class frequencies (the prior baseline:
every image the same), then :func:`cellcls.neighbors.transfer_labels` replaces the scores of each test
image whose nearest train image (cosine of the embeddings) reaches the threshold by that image's labels.
Printed: image-level mAP (mean over classes of AP, :mod:`cellcls.image_metrics`) before and after, on all
test images and on those whose group occurs / does not occur in train, how many were touched and how
many of those matched an image of their own group, and whether every untouched row stayed bit-identical.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _truth(world: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    from cellcls.labels import parse_label_string

    table = pd.read_csv(world / "truth" / "images.csv", dtype=str)
    table = table[table["split"] == split].sort_values("ID")
    targets = np.zeros((len(table), 19), dtype=np.uint8)
    for row, text in enumerate(table["labels"]):
        targets[row, list(parse_label_string(text))] = 1
    return table["ID"].tolist(), targets, table["group"].to_numpy()


def main(argv: list[str] | None = None) -> int:
    from cellcls.image_metrics import mean_average_precision
    from cellcls.neighbors import cosine_topk, transfer_labels
    from infer.embed import embed_images, read_arcface_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tta", default="flips")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.65, 0.8])
    args = parser.parse_args(argv)

    checkpoint = read_arcface_checkpoint(args.checkpoint)
    train_ids, train_y, train_groups = _truth(args.world, "train")
    test_ids, test_y, test_groups = _truth(args.world, "test")
    train_emb = embed_images(checkpoint, args.world / "train", train_ids, tta=args.tta, progress=False)
    test_emb = embed_images(checkpoint, args.world / "test", test_ids, tta=args.tta, progress=False)
    prior = np.repeat(train_y.mean(axis=0, keepdims=True), len(test_ids), axis=0)
    sims, idx = cosine_topk(test_emb, train_emb, k=1, progress=False)
    shared = np.isin(test_groups, train_groups)
    same = train_groups[idx[:, 0]] == test_groups

    def m_ap(scores: np.ndarray, rows: np.ndarray) -> float:
        y = test_y[rows]
        keep = y.any(axis=0)  # classes without a positive among these rows have no AP
        return mean_average_precision(y[:, keep], scores[rows][:, keep]) if keep.any() else float("nan")

    print(f"world {args.world}: {len(train_ids)} train / {len(test_ids)} test images, {int(shared.sum())} test "
          f"images of groups also in train; checkpoint {args.checkpoint} ({checkpoint.image_size} px, tta {args.tta})")
    print(f"nearest train image of the same group: {int((same & shared).sum())} of {int(shared.sum())} shared-group "
          f"test images (precision@1 {np.mean(same[shared]):.3f})")
    everyone = np.ones(len(test_ids), dtype=bool)
    print("| threshold | touched | touched, right group | mAP before | mAP after | goal | ratio | shared: before -> after "
          "| new groups: before -> after | untouched rows identical |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threshold in args.thresholds:
        after, touched = transfer_labels(prior, sims, train_y[idx].astype(np.float32), threshold=threshold)
        identical = bool(np.array_equal(after[~touched], prior[~touched]))
        before_all, after_all = m_ap(prior, everyone), m_ap(after, everyone)
        print(f"| {threshold:.2f} | {int(touched.sum())} | {int((touched & same).sum())} | {before_all:.4f} | "
              f"{after_all:.4f} | after > before | {after_all / before_all:.2f} | {m_ap(prior, shared):.4f} -> "
              f"{m_ap(after, shared):.4f} | {m_ap(prior, ~shared):.4f} -> {m_ap(after, ~shared):.4f} | {identical} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
