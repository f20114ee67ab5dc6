"""Inference (issue 11): crop scoring speed, per-stage times of a synthetic run, peak memory of a big image.

    python benchmarks/bench_predict.py                 # all three parts
    python benchmarks/bench_predict.py --part speed    # or: stages, memory, signal

1. speed: cells/s of efficientnet_b0 (random weights) with seed 002's 4x TTA at 128 and 256 px, CPU.
2. stages: a 20-image synthetic test set (512 px, quarter-size world), classical segmentation, then
   `predict_images` with one efficientnet_b0 cell checkpoint at 128 px, 4x TTA: seconds per stage
   (decode, segment, crop, model, blend, encode) and the limiting one.
3. memory: one 3072 x 3072 16-bit image with 100 cells (mask at 1/4 scale), efficientnet_b0 at 256 px,
   4x TTA, submission + score table, in a fresh process: its peak RSS (goal < 4 GB).
4. signal: what the ``dark`` blend modifier adds per image (``cellcls.signal.entry_cell_darkness``: label
   map upscaled, a percentile per cell), beside cutting the same cells' 128 px masked crops.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def make_checkpoint(path: Path, *, backbone: str = "efficientnet_b0", crop_size: int = 128) -> Path:
    """A cell-task checkpoint in the layout ``cellcls train`` writes (random weights)."""
    import torch

    from cellcls.checkpoints import CHECKPOINT_KEY, FORMAT_VERSION
    from cellcls.classes import CHANNELS, CLASS_NAMES
    from cellcls.models import create_model

    torch.manual_seed(0)
    model = create_model(backbone)
    section = {"format_version": FORMAT_VERSION, "model": dict(model.config), "thresholds": None,
               "classes": list(CLASS_NAMES), "channels": list(CHANNELS), "task": "cell", "crop_mode": "masked",
               "crop_size": crop_size, "crop_margin": 0.1, "image_size": None, "stats": None, "mask_key": None}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"backbone": backbone}, "pytorch-lightning_version": "2.6.6",
                "datamodule_hyper_parameters": {"fold": 0, "full": False}, CHECKPOINT_KEY: section}, path)
    return path


def speed() -> None:
    import torch

    from cellcls.models import create_model
    from cellcls.normalize import to_model_input
    from infer.tta import predict_tta

    model = create_model("efficientnet_b0").eval()
    print("\n| crop px | cells | TTA views | wall s | CPU s | cells/s (wall) | cells/s per CPU s |\n|---|---|---|---|---|---|---|")
    for size, n in ((128, 64), (256, 16)):
        crops = np.random.default_rng(0).integers(0, 255, size=(n, 4, size, size)).astype(np.uint8)
        batch = to_model_input(crops)
        predict_tta(model, batch[:2], "seed002")  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        predict_tta(model, batch, "seed002", chunk=32)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"| {size} | {n} | 4 | {dt:.2f} | {cpu:.2f} | {n / dt:.1f} | {n / cpu:.1f} |")
    print(f"(torch threads: {torch.get_num_threads()})")


def stages() -> None:
    from cellcls.cli import main as cellcls_main
    from cellcls.masks import MaskCache
    from cellcls.submission import read_sample_submission
    from infer.config import InferConfig
    from infer.predict import load_models, predict_images

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cellcls_main(["synth", "--out", str(tmp / "w"), "--test", "20", "--size", "512", "--seed", "0",
                      "--no-progress", "-q"])
        t0 = time.perf_counter()
        cellcls_main(["segment", "--images", str(tmp / "w" / "test"), "--out", str(tmp / "m"), "--backend",
                      "classical", "--no-progress", "-q"])
        segment_s = time.perf_counter() - t0
        config = InferConfig(tta="seed002", num_workers=0)
        models = load_models([make_checkpoint(tmp / "c.ckpt")], config)
        sample = read_sample_submission(tmp / "w" / "sample_submission.csv")
        summary = predict_images([r.id for r in sample], images_dir=tmp / "w" / "test",
                                 reader=MaskCache(tmp / "m").reader(), models=models, config=config, sample=sample,
                                 submission_path=tmp / "s.csv", scores_path=tmp / "s.parquet", progress=False)
    times = {"decode": summary.timings["decode"], "segment": segment_s, **{k: summary.timings[k] for k in
                                                                          ("crop", "model", "blend", "encode")}}
    total = sum(times.values())
    print(f"\n20 images, {summary.n_cells} cells, efficientnet_b0 128 px, seed002 4x TTA, CPU\n")
    print("| stage | seconds | share |\n|---|---|---|")
    for name, value in times.items():
        print(f"| {name} | {value:.2f} | {value / total:.0%} |")
    print(f"limiting stage: {max(times, key=times.get)}; {summary.n_cells / times['model']:.1f} cells/s in the model")


def signal() -> None:
    from cellcls.crops import crop_cells
    from cellcls.masks.table import cell_table
    from cellcls.signal import entry_cell_darkness

    class Entry:
        def __init__(self, cells: np.ndarray) -> None:
            self.cells = cells

    def median_ms(fn, repeats: int = 5) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return sorted(times)[repeats // 2] * 1000

    rng = np.random.default_rng(0)
    print("\n25 cells per image (5 x 5 grid), 8-bit RGBY, median of 5 runs\n")
    print("| image px | mask scale | darkness ms | masked 128 px crops ms | ratio |\n|---|---|---|---|---|")
    for side, scale in ((512, 1.0), (2048, 0.25), (2048, 1.0), (3072, 0.25)):
        m = int(side * scale)
        step = m // 5
        cells = np.zeros((m, m), np.uint16)
        for k in range(25):
            i, j = divmod(k, 5)
            cells[i * step + 2:(i + 1) * step - 2, j * step + 2:(j + 1) * step - 2] = k + 1
        image = rng.integers(0, 255, (side, side, 4), dtype=np.uint8)
        rows = cell_table(cells, cells, image_id="bench", original_shape=(side, side), mask_key="bench")
        ids = rows["cell_id"].tolist()
        dark = median_ms(lambda: entry_cell_darkness(image, Entry(cells), ids))
        crop = median_ms(lambda: crop_cells(image, cells, rows, mode="masked", size=128, margin=0.1))
        print(f"| {side} | {scale:g} | {dark:.1f} | {crop:.1f} | {dark / crop:.2f}x |")


def _memory_child(tmp: Path) -> None:
    """Runs in its own process: one 3072^2 16-bit image with 100 cells through predict_images."""
    from cellcls.io import write_image
    from cellcls.masks import MaskCache
    from cellcls.submission import SampleRow
    from infer.config import InferConfig
    from infer.predict import load_models, predict_images

    size = 3072
    yy, xx = np.mgrid[0:size, 0:size]
    base = ((np.sin(yy / 37.0) * np.cos(xx / 53.0) + 1) * 30000).astype(np.uint16)
    write_image(tmp / "img", "big", np.stack([base, base[::-1], base[:, ::-1], base.T], axis=2))
    del yy, xx, base
    labels = np.zeros((768, 768), dtype=np.uint16)
    for k in range(100):  # a 10 x 10 grid of 70 x 70 cells at 1/4 scale (280 px at full size)
        r, c = divmod(k, 10)
        labels[r * 76 + 3:r * 76 + 73, c * 76 + 3:c * 76 + 73] = k + 1
    cache = MaskCache(tmp / "masks")
    cache.write("big", labels, labels, original_shape=(size, size), scale=0.25, backend="test", params_hash="bench")
    config = InferConfig(tta="seed002", num_workers=0, batch_size=32, group_cells=100)
    models = load_models([make_checkpoint(tmp / "c.ckpt", crop_size=256)], config)
    summary = predict_images(["big"], images_dir=tmp / "img", reader=cache.reader(), models=models, config=config,
                             sample=[SampleRow("big", size, size)], submission_path=tmp / "s.csv",
                             scores_path=tmp / "s.parquet", progress=False)
    assert summary.n_cells == 100, summary.format()
    print(f"stage seconds: {summary.timings}")


def memory() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--memory-child", tmp], check=True)
        wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_gb = usage.ru_maxrss / 1024 ** 2  # kB on Linux
    print("\n| image | cells | model | peak RSS GB | goal | ratio | wall s | CPU s |\n|---|---|---|---|---|---|---|---|")
    print(f"| 3072² 16-bit | 100 | efficientnet_b0 256 px, 4x TTA | {peak_gb:.2f} | < 4 GB | {peak_gb / 4:.2f}x | "
          f"{wall:.0f} | {usage.ru_utime + usage.ru_stime:.0f} |")


# ----------------------------------------------------------------------------- blends (trains models)
def _train(out: Path, world: Path, masks: Path, folds: Path, stats: Path, task: str, fold: int, epochs: int) -> Path:
    from train.cli import build_cli, fit

    args = ["--out", str(out), "--seed_everything", "0", "--model.backbone", "resnet10t", "--model.lr", "3e-3",
            "--model.schedule", "constant", "--data.task", task, "--data.images", str(world / "train"),
            "--data.labels", str(world / "train.csv"), "--data.folds", str(folds), "--data.fold", str(fold),
            "--data.stats", str(stats), "--data.augment", "d4", "--data.batch_size", "16", "--data.num_workers", "0",
            "--data.progress", "false", "--trainer.accelerator", "cpu", "--trainer.max_epochs", str(epochs),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false"]
    args += ["--data.masks", str(masks), "--data.crop_size", "48"] if task == "cell" else ["--data.image_size", "128"]
    cli = build_cli(args)
    fit(cli)
    path = out / "deploy.ckpt"
    cli.trainer.save_checkpoint(path, weights_only=True)  # the run's own .ckpt files pickle train objects
    return path


def _scores(ids, world_dir, masks, ckpts, *, fold_of=None, image_only=False) -> dict:
    """ID -> (cell_ids, scores (n, 19)) from predict_images (cell models, or image models broadcast)."""
    from cellcls.masks import MaskCache
    from cellcls.scores import iter_image_scores, read_scores
    from infer.config import InferConfig
    from infer.predict import load_models, predict_images

    config = InferConfig(tta="d4", blend="cell", num_workers=0, image_on_crops=False if image_only else None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.parquet"
        predict_images(ids, images_dir=world_dir, reader=MaskCache(masks).reader(), models=load_models(ckpts, config),
                       config=config, scores_path=path, fold_of=fold_of, progress=False)
        return {i: (c, s) for i, c, s, _ in iter_image_scores(read_scores(path))}


def _map(spec, cells: dict, images: dict, masks: Path, solution: Path) -> float:
    import pandas as pd

    from cellcls.masks import MaskCache
    from cellcls.masks.table import entry_cell_table
    from cellcls.metric import evaluate
    from cellcls.submission import SampleRow, SubmissionWriter
    from infer.blend import blend

    rows = pd.read_csv(solution)
    sample = [SampleRow(r.ID, int(r.ImageWidth), int(r.ImageHeight)) for r in rows.itertuples()]
    reader = MaskCache(masks).reader()
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "s.csv"
        with SubmissionWriter(sub, sample) as writer:
            for image_id, (cell_ids, cell) in cells.items():
                entry = reader.read(image_id)
                table = entry_cell_table(entry).set_index("cell_id").loc[cell_ids].reset_index()
                image = images[image_id][1][0] if images else cell.mean(axis=0)
                blended = blend(cell, image, table, spec=spec)
                writer.add(image_id, entry.cells, dict(zip(cell_ids.tolist(), blended)))
        return evaluate(solution, sub).map


def blends(n_train: int = 64, n_test: int = 24, epochs: int = 8) -> None:
    from cellcls.cli import main as cellcls_main
    from cellcls.io import list_image_ids
    from infer.blend import BlendSpec
    from infer.blend_choice import blend_grid
    from infer.predict_command import read_folds

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        w = tmp / "w"
        q = ["--no-progress", "-q"]
        cellcls_main(["synth", "--out", str(w), "--train", str(n_train), "--test", str(n_test), "--size", "256",
                      "--seed", "2", *q])
        cellcls_main(["folds", "--labels", str(w / "train.csv"), "--k", "2", "--seed", "0", "--group-col", "group",
                      "--out", str(tmp / "folds.csv"), "-q"])
        cellcls_main(["stats", "--images", str(w / "train"), str(w / "test"), "--out", str(tmp / "stats.json"), *q])
        for split in ("train", "test"):
            cellcls_main(["segment", "--images", str(w / split), "--out", str(tmp / f"m_{split}"), "--backend",
                          "classical", *q])
        ck = {(task, f): _train(tmp / f"{task}{f}", w, tmp / "m_train", tmp / "folds.csv", tmp / "stats.json", task, f,
                                epochs) for task in ("cell", "image") for f in (0, 1)}
        fold_of = read_folds(tmp / "folds.csv")
        train_ids, test_ids = list_image_ids(w / "train"), list_image_ids(w / "test")
        cell_ck, image_ck = [ck["cell", 0], ck["cell", 1]], [ck["image", 0], ck["image", 1]]
        oof = (_scores(train_ids, w / "train", tmp / "m_train", cell_ck, fold_of=fold_of),
               _scores(train_ids, w / "train", tmp / "m_train", image_ck, fold_of=fold_of, image_only=True))
        test = (_scores(test_ids, w / "test", tmp / "m_test", cell_ck),
                _scores(test_ids, w / "test", tmp / "m_test", image_ck, image_only=True))
        candidates = blend_grid(image_scale=0.25)
        on_oof = {str(s): _map(s, *oof, tmp / "m_train", w / "solution_train.csv") for s in candidates}
        best = max(on_oof, key=on_oof.get)
        families: dict[str, str] = {}
        for name, value in on_oof.items():
            family = BlendSpec.parse(name).rule + ("+area7" if "area7" in name else "")
            if family not in families or value > on_oof[families[family]]:
                families[family] = name
        print(f"\nsynthetic world seed 2: {n_train} train / {n_test} test images at 256 px, classical masks, "
              f"2 folds, resnet10t cell (48 px crops) and image (128 px) models, {epochs} epochs, weak labels, d4 TTA")
        print("\n| scores | chosen on OOF train cells | OOF mAP | test mAP |\n|---|---|---|---|")
        print(f"| image only (image model, every cell) | - | {_map('cell', oof[1], {}, tmp / 'm_train', w / 'solution_train.csv'):.4f} | "
              f"{_map('cell', test[1], {}, tmp / 'm_test', w / 'solution.csv'):.4f} |")
        for family, name in families.items():
            mark = " (best)" if name == best else ""
            print(f"| {family}{mark} | {name} | {on_oof[name]:.4f} | {_map(name, *test, tmp / 'm_test', w / 'solution.csv'):.4f} |")
        cellcls_main(["prior-submission", "--masks", str(tmp / "m_test"), "--sample", str(w / "sample_submission.csv"),
                      "--labels", str(w / "train.csv"), "--out", str(tmp / "prior.csv"), *q])
        from cellcls.metric import evaluate

        print(f"| class prior (floor) | - | - | {evaluate(w / 'solution.csv', tmp / 'prior.csv').map:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "speed", "stages", "memory", "signal", "blends"), default="all",
                        help="all = speed, stages, memory, signal; blends (trains 4 small models, ~10+ min) only "
                             "when asked")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(Path(args.memory_child))
        return
    for name, fn in (("speed", speed), ("stages", stages), ("memory", memory), ("signal", signal), ("blends", blends)):
        if args.part == name or (args.part == "all" and name != "blends"):
            fn()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
