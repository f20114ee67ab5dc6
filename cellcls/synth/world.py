"""Write a synthetic world to disk in the Kaggle layout, with the truth no real train set has.

Layout of ``out_dir`` (IDs are UUID-like strings drawn from the seed)::

    train/{ID}_{red,green,blue,yellow}.png   grayscale channels, 8- or 16-bit
    test/{ID}_{red,green,blue,yellow}.png
    train.csv               ID,Label,group       Label = |-joined image labels (weak)
    sample_submission.csv   ID,ImageWidth,ImageHeight,PredictionString (empty-mask rows, test IDs)
    solution.csv            test truth in the submission format: one "class 1 mask" triplet per
                            (cell, class), masks from cellcls.rle.encode at full image size
    solution_train.csv      the same for the train images
    truth/{ID}_cells.png    uint16 cell instance map (0 = background, ids 1..N)
    truth/{ID}_nuclei.png   uint16 nucleus map (nucleus pixels carry their cell's id)
    truth/cells.csv         ID,cell_id,labels,split,area_px,touches_border
    truth/images.csv        ID,split,group,cell_line,width,height,bit_depth,n_cells,labels
    world.json              seed, scale, bit depth, counts, sizes, format version; "variant"
                            (cell_shape, renderer, class_mix, negative_share) only for a world
                            drawn differently (absent = the default drawing); "shared_groups"
                            only when test images share proteins with train at another rate

Every byte depends only on the arguments: PNGs are written with a fixed compression level and
no timestamps, CSVs with fixed formatting, so the same seed reproduces every file.
"""
from __future__ import annotations

import csv
import json
import logging
import sys
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from .. import __version__
from ..classes import CHANNELS, NUM_CLASSES
from ..io import PNG_COMPRESSION, write_image
from ..rle import EMPTY_MASK_FULL_FRAME, encode_label_map
from .geometry import CELL_LINES
from .proteins import Protein, draw_protein
from .sample import SynthSample, render_sample
from .variants import WorldVariant, mix_weights, resolve_variant

__all__ = ["WorldSummary", "generate_world", "FORMAT_VERSION", "SHARED_TEST_GROUPS", "TEST_SIZES_FULL_PX", "write_png"]

log = logging.getLogger(__name__)

#: Bump when the same seed would produce different files.
FORMAT_VERSION = 2
#: Full-resolution sizes of the real test set and how often each occurs (HPA_FACTS §1).
TEST_SIZES_FULL_PX = ((1728, 68), (2048, 462), (3072, 29))
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION]
#: Default chance that a test draw is one more image of a train protein (group). The other draws
#: start an unseen protein with 1-6 images, so the share of test images whose group is in train is
#: lower: 5 of 50 for ``--train 200 --test 50 --seed 0``.
SHARED_TEST_GROUPS = 0.3


@dataclass(frozen=True)
class WorldSummary:
    """What :func:`generate_world` wrote."""

    out_dir: Path
    n_train: int
    n_test: int
    n_groups: int
    n_cells_train: int
    n_cells_test: int
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def describe(self) -> str:
        """A few lines telling a person what was written where."""
        lines = [
            f"synthetic world in {self.out_dir}: {self.n_train} train + {self.n_test} test images, "
            f"{self.n_groups} protein groups, {self.n_cells_train} + {self.n_cells_test} cells "
            f"({self.seconds:.1f} s)"
        ]
        lines += [f"  {name:<20} {path}" for name, path in self.files.items()]
        return "\n".join(lines)


def write_png(path: Path, array: np.ndarray) -> None:
    """Write a 2-D uint8/uint16 array as PNG with a fixed compression level (byte-reproducible)."""
    if not cv2.imwrite(str(path), array, _PNG_PARAMS):
        raise OSError(f"could not write {path}: check that the folder exists and is writable")


@dataclass
class _Plan:
    image_id: str
    split: str
    group: int
    line: int
    shape: tuple[int, int]
    seed: np.random.SeedSequence


def _draw_sizes(rng: np.random.Generator, n: int, size_px: int | None, scale: float, non_square: float) -> list[tuple[int, int]]:
    if size_px is None:
        sizes, weights = zip(*TEST_SIZES_FULL_PX)
        p = np.asarray(weights, np.float64) / sum(weights)
        side = [int(round(sizes[int(i)] * scale)) for i in rng.choice(len(sizes), size=n, p=p)]
    else:
        side = [int(size_px)] * n
    out = []
    for s in side:
        if non_square > 0 and rng.random() < non_square:
            short = int(round(s * float(rng.choice([0.5, 0.625, 0.75, 0.875]))))
            out.append((short, s) if rng.random() < 0.5 else (s, short))
        else:
            out.append((s, s))
    return out


def _group_sizes(rng: np.random.Generator, n_images: int) -> list[int]:
    """Images per protein: 1-6, mean ~3, summing to ``n_images``."""
    sizes: list[int] = []
    while sum(sizes) < n_images:
        sizes.append(int(rng.integers(1, 7)))
    if sizes:
        sizes[-1] -= sum(sizes) - n_images
    return [s for s in sizes if s > 0]


def _plan(
    rng: np.random.Generator,
    n_train: int,
    n_test: int,
    sizes: list[tuple[int, int]],
    image_seeds: Sequence[np.random.SeedSequence],
    weights: np.ndarray | None = None,
    shared_groups: float = SHARED_TEST_GROUPS,
) -> tuple[list[_Plan], list[Protein], list[tuple[int, ...]]]:
    proteins: list[Protein] = []
    lines_of: list[tuple[int, ...]] = []  # cell lines each protein was imaged in

    def new_group() -> int:
        g = len(proteins)
        proteins.append(draw_protein(rng, f"HPA{100000 + g * 37 + int(rng.integers(37)):06d}", weights=weights))
        k = int(rng.integers(1, 4))
        lines_of.append(tuple(int(x) for x in rng.choice(len(CELL_LINES), size=k, replace=False)))
        return g

    groups: list[int] = []
    for size in _group_sizes(rng, n_train):
        g = new_group()
        groups += [g] * size
    n_train_groups = len(proteins)
    test_groups: list[int] = []
    fresh = _group_sizes(rng, n_test)
    fresh_iter = iter(fresh)
    while len(test_groups) < n_test:
        if n_train_groups and rng.random() < shared_groups:
            test_groups.append(int(rng.integers(n_train_groups)))
        else:
            g = new_group()
            test_groups += [g] * min(next(fresh_iter, 1), n_test - len(test_groups))
    groups += test_groups[:n_test]
    plans = []
    for i, g in enumerate(groups):
        image_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
        line = int(rng.choice(lines_of[g]))
        plans.append(_Plan(image_id, "train" if i < n_train else "test", g, line, sizes[i], image_seeds[i]))
    return plans, proteins, lines_of


def _prediction_string(sample: SynthSample) -> str:
    masks = encode_label_map(sample.cells)  # all cells in one pass over the runs
    parts = []
    for cell_id, labels in sorted(sample.cell_labels.items()):
        parts += [f"{c} 1 {masks[cell_id]}" for c in labels]
    return " ".join(parts)


def _open_csv(path: Path, header: Sequence[str]):
    fh = open(path, "w", newline="", encoding="ascii")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    return fh, writer


def generate_world(
    out_dir: str | Path,
    *,
    n_train: int,
    n_test: int,
    size_px: int | None = None,
    seed: int = 0,
    bit_depth: int = 8,
    scale: float = 0.25,
    non_square: float = 0.0,
    progress: bool = True,
    variant: str | WorldVariant | None = None,
    cell_shape: str | None = None,
    renderer: str | None = None,
    class_mix: str | None = None,
    negative_share: tuple[float, float] | None = None,
    shared_groups: float | None = None,
) -> WorldSummary:
    """Generate and write a synthetic world (see the module docstring for the files).

    Parameters
    ----------
    out_dir : folder to write into (created; existing files of the same names are overwritten).
    n_train, n_test : number of train and test images (each >= 0).
    size_px : side of every image in pixels at ``scale``; None draws 1728/2048/3072 x scale
        with the real test set's frequencies (68/462/29).
    seed : the world's seed; the same seed gives the same files byte for byte.
    bit_depth : 8 or 16 (16-bit PNGs use the full 0..65535 range).
    scale : pixel size relative to full-resolution HPA (0.25 = quarter resolution).
    non_square : fraction of images given a random aspect (short side 0.5-0.875 of the long).
    progress : show a progress bar on stderr.
    variant : a preset of :data:`cellcls.synth.variants.VARIANTS` (``"shifted"``) or a
        :class:`~cellcls.synth.variants.WorldVariant`; None = the default drawing. The four
        options below override it; each left None keeps the preset's (default's) choice.
    cell_shape : cell geometry, ``default``/``round``/``elongated``/``irregular``
        (:mod:`cellcls.synth.shapes`).
    renderer : green pattern renderer, ``default`` or ``alt`` (:mod:`cellcls.synth.patterns_alt`);
        for the same seed, ``alt`` changes only the green channel.
    class_mix : frequencies of the proteins' location classes: ``real`` (train counts ** 0.75),
        ``flat`` (18 classes equal) or ``rare`` (tilted towards rare classes).
    negative_share : (low, high) fractions of cells, 0 <= low <= high <= 1: range of each
        image's share of non-expressing (Negative) cells; default (0, 0.3).
    shared_groups : probability in [0, 1] that each test draw is one more image of a protein
        (group) picked uniformly among the train groups; otherwise the draw adds a protein unseen
        in train with 1-6 images, so the share of test images of train groups is below this
        (seed 0, 200 + 50 images: 5 at 0.3, 19 at 0.8, 41 at 0.85). None = the default 0.3;
        1 = every test group occurs in train (when n_train > 0), 0 = none does.

    The default drawing writes exactly the files it always did; any other choice is recorded
    under ``"variant"`` in world.json (``shared_groups`` under its own key).
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    if n_train < 0 or n_test < 0:
        raise ValueError(f"n_train and n_test must be >= 0, got {n_train} and {n_test}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if not 0.0 <= non_square <= 1.0:
        raise ValueError(f"non_square is a fraction in [0, 1], got {non_square}")
    if size_px is not None and int(size_px) < 32:
        raise ValueError(f"size_px must be at least 32, got {size_px}")
    if shared_groups is not None and not 0.0 <= float(shared_groups) <= 1.0:
        raise ValueError(f"shared_groups is a fraction in [0, 1], got {shared_groups}")
    share = SHARED_TEST_GROUPS if shared_groups is None else float(shared_groups)
    variant = resolve_variant(variant, cell_shape=cell_shape, renderer=renderer, class_mix=class_mix,
                              negative_share=negative_share)
    out = Path(out_dir)
    for sub in ("train", "test", "truth"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    world_ss, images_ss = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(world_ss)
    n_total = n_train + n_test
    sizes = _draw_sizes(rng, n_total, size_px, scale, non_square)
    plans, proteins, lines_of = _plan(rng, n_train, n_test, sizes, images_ss.spawn(n_total), mix_weights(variant.class_mix), share)

    files = {
        "train images": out / "train",
        "test images": out / "test",
        "train.csv": out / "train.csv",
        "sample_submission.csv": out / "sample_submission.csv",
        "solution.csv": out / "solution.csv",
        "solution_train.csv": out / "solution_train.csv",
        "truth masks": out / "truth",
        "truth/cells.csv": out / "truth" / "cells.csv",
        "truth/images.csv": out / "truth" / "images.csv",
        "world.json": out / "world.json",
    }
    sub_header = ["ID", "ImageWidth", "ImageHeight", "PredictionString"]
    handles = []
    pools: list[ThreadPoolExecutor] = []
    try:
        fh, train_csv = _open_csv(files["train.csv"], ["ID", "Label", "group"])
        handles.append(fh)
        fh, sample_sub = _open_csv(files["sample_submission.csv"], sub_header)
        handles.append(fh)
        fh, sol_test = _open_csv(files["solution.csv"], sub_header)
        handles.append(fh)
        fh, sol_train = _open_csv(files["solution_train.csv"], sub_header)
        handles.append(fh)
        fh, cells_csv = _open_csv(files["truth/cells.csv"], ["ID", "cell_id", "labels", "split", "area_px", "touches_border"])
        handles.append(fh)
        fh, images_csv = _open_csv(
            files["truth/images.csv"], ["ID", "split", "group", "cell_line", "width", "height", "bit_depth", "n_cells", "labels"]
        )
        handles.append(fh)
        n_cells = {"train": 0, "test": 0}
        class_images = {"train": [0] * NUM_CLASSES, "test": [0] * NUM_CLASSES}
        bar = tqdm(plans, desc="synth", unit="img", disable=not progress, file=sys.stderr)
        writer_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="synth-png")
        pools.append(writer_pool)
        pending: list[Future] = []
        for plan in bar:
            protein = proteins[plan.group]
            sample = render_sample(
                np.random.default_rng(plan.seed),
                shape=plan.shape,
                scale=scale,
                protein=protein,
                line=CELL_LINES[plan.line],
                bit_depth=bit_depth,
                variant=variant,
            )
            # PNG encoding releases the GIL: write in a thread while the next image is drawn
            pending.append(writer_pool.submit(_write_sample, out, plan, sample))
            if len(pending) > 4:
                pending.pop(0).result()
            h, w = plan.shape
            label_text = "|".join(str(c) for c in sample.image_labels)
            if plan.split == "train":
                train_csv.writerow([plan.image_id, label_text, protein.group])
                sol_train.writerow([plan.image_id, w, h, _prediction_string(sample)])
            else:
                sample_sub.writerow([plan.image_id, w, h, f"0 1 {EMPTY_MASK_FULL_FRAME}"])
                sol_test.writerow([plan.image_id, w, h, _prediction_string(sample)])
            _write_cell_rows(cells_csv, plan, sample)
            images_csv.writerow(
                [plan.image_id, plan.split, protein.group, CELL_LINES[plan.line].name, w, h, bit_depth, sample.n_cells, label_text]
            )
            n_cells[plan.split] += sample.n_cells
            for c in sample.image_labels:
                class_images[plan.split][c] += 1
        for fut in pending:
            fut.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True)
        for fh in handles:
            fh.close()
    size_counts: dict[str, int] = {}
    for h, w in sizes:
        key = f"{w}x{h}"
        size_counts[key] = size_counts.get(key, 0) + 1
    meta = {
        "format_version": FORMAT_VERSION,
        "cellcls_version": __version__,
        "seed": int(seed),
        "scale": float(scale),
        "bit_depth": int(bit_depth),
        "n_train": int(n_train),
        "n_test": int(n_test),
        "n_groups": len(proteins),
        "n_cells": n_cells,
        "sizes": dict(sorted(size_counts.items())),
        "non_square": float(non_square),
        "images_per_class": {
            split: {str(c): n for c, n in enumerate(counts) if n} for split, counts in class_images.items()
        },
        "channels": list(CHANNELS),
        "files": {
            "solution.csv": "test truth, submission format, one 'class 1 mask' triplet per cell and class",
            "solution_train.csv": "the same for train",
            "truth/cells.csv": "one row per (image, cell): labels |-joined; 18 = Negative",
        },
    }
    if not variant.is_default():
        meta["variant"] = variant.as_json()
    if share != SHARED_TEST_GROUPS:
        meta["shared_groups"] = share
    files["world.json"].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="ascii")
    summary = WorldSummary(
        out_dir=out,
        n_train=n_train,
        n_test=n_test,
        n_groups=len(proteins),
        n_cells_train=n_cells["train"],
        n_cells_test=n_cells["test"],
        files=files,
        seconds=time.perf_counter() - t0,
    )
    log.info("wrote %d images to %s in %.1f s", n_total, out, summary.seconds)
    return summary


def _write_sample(out: Path, plan: _Plan, sample: SynthSample) -> None:
    write_image(out / plan.split, plan.image_id, sample.image)
    write_png(out / "truth" / f"{plan.image_id}_cells.png", sample.cells)
    write_png(out / "truth" / f"{plan.image_id}_nuclei.png", sample.nuclei)


def _write_cell_rows(writer, plan: _Plan, sample: SynthSample) -> None:
    area = np.bincount(sample.cells.ravel(), minlength=sample.n_cells + 1)
    edge = np.zeros(sample.n_cells + 1, bool)
    c = sample.cells
    edge[np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]])] = True
    for cell_id, labels in sorted(sample.cell_labels.items()):
        writer.writerow(
            [plan.image_id, cell_id, "|".join(str(x) for x in labels), plan.split, int(area[cell_id]), int(edge[cell_id])]
        )
