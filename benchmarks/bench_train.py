"""Training throughput: Lightning against a bare PyTorch loop, and the data pipeline against the model.

Run: ``.venv/bin/python benchmarks/bench_train.py [--full] [--quick] [--steps N] [--backbone resnet18]
[--batch-size 32] [--size 128] [--threads T] [--plain]``

Part 1, training step. One model (``--backbone``, 4 channels, 19 classes, BCE, AdamW 1e-3 / wd 1e-5:
the defaults of :class:`train.module.CellClassifier`) and one batch shape (``--batch-size`` x 4 x
``--size`` x ``--size`` random float32), trained on CPU (a) by a bare loop (fetch from a DataLoader,
forward, loss, backward, optimiser step, zero_grad) and (b) by ``pl.Trainer(accelerator="cpu",
devices=1, max_steps=..., logger=False, enable_checkpointing=False, enable_progress_bar=False,
enable_model_summary=False)`` fitting a ``CellClassifier``. Both read the same in-memory TensorDataset
through identical DataLoaders (0 workers), so their data cost is the same and small. The two are timed
step by step in alternation (a, b, a, b, ...: each bare step runs from a callback between two
Lightning steps and is timed on its own; a Lightning step is the wall time from the end of one bare
step to the next ``on_train_batch_end``, so it holds everything Lightning does in a step). With
``--plain``, or when CellClassifier misses the goal, the same is repeated with a minimal
LightningModule (``training_step`` = loss only, a plain AdamW), which tells Lightning's own cost from
CellClassifier's extras (``self.log`` and a per-step LR scheduler).
Goal: Lightning / bare <= 1.10 (medians of the timed steps, after ``--warmup`` steps).

Part 2, data pipeline against the model, for both tasks, on a small synthetic world
(``cellcls synth``, ``--images`` train images at 512 px; ``cellcls segment`` of its train images for
the cell task; ``cellcls stats``). (a) samples/s from the :class:`train.data.HpaDataModule`'s train
loader alone (its dataset, transform, batch size, workers and collate; only the sampler is replaced
by one of draws with replacement, so the tiny world's epoch ends do not drain the workers), (b)
samples/s of the bare training step alone on random tensors of the loader's batch shape. The two
are alternated in ``--rounds`` chunks; before each timed loader chunk the batches its workers
prefetched while the model ran are drained untimed. Goal: loader / model >= 1.0. The slower side is
what limits. A per-sample breakdown of the loader's work (read or copy, to_float01, augmentation),
in the main process, says where its time goes.

On a 2-core machine loader and model share the same cores during real training, so a ratio >= 1
here says the pipeline has the capacity, not that the model runs at full speed beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import logging
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler, TensorDataset  # noqa: E402

GOAL_LIGHTNING = 1.10
GOAL_LOADER = 1.0
NUM_CLASSES = 19
IN_CHANS = 4


# ----------------------------------------------------------------------------- the bare loop
class BareTrainer:
    """The bare PyTorch step: next batch, forward, loss, backward, optimiser step, zero_grad."""

    def __init__(self, backbone: str, batches: Iterator, *, lr: float = 1e-3, weight_decay: float = 1e-5) -> None:
        from cellcls.losses import create_loss
        from cellcls.models import create_model

        self.model = create_model(backbone, in_chans=IN_CHANS, num_classes=NUM_CLASSES)
        self.model.train()
        self.criterion = create_loss("bce")
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)
        self.batches = batches

    def step(self) -> None:
        x, y = next(self.batches)
        loss = self.criterion(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def cycle(loader: DataLoader) -> Iterator:
    """Endless batches, re-entering the loader at each epoch end (as a training loop does)."""
    while True:
        yield from loader


def fixed_dataset(batch_size: int, size: int, batches: int, seed: int = 0) -> TensorDataset:
    """``batches`` x ``batch_size`` random (4, size, size) float32 inputs with 0/1 targets (19,)."""
    g = torch.Generator().manual_seed(seed)
    n = batch_size * batches
    x = torch.randn(n, IN_CHANS, size, size, generator=g)
    y = (torch.rand(n, NUM_CLASSES, generator=g) < 0.2).float()
    return TensorDataset(x, y)


# ----------------------------------------------------------------------------- part 1: Lightning vs bare
def _plain_module_class():
    import pytorch_lightning as pl

    class PlainModule(pl.LightningModule):
        """The least a LightningModule needs: the loss as training_step, a plain AdamW."""

        def __init__(self, backbone: str) -> None:
            super().__init__()
            from cellcls.losses import create_loss
            from cellcls.models import create_model

            self.model = create_model(backbone, in_chans=IN_CHANS, num_classes=NUM_CLASSES)
            self.criterion = create_loss("bce")

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return self.criterion(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-5)

    return PlainModule


def _interleave_callback(bare: BareTrainer):
    import pytorch_lightning as pl

    class Interleave(pl.Callback):
        """After each Lightning step, one bare step timed on its own; Lightning's time is the rest."""

        def __init__(self) -> None:
            self.lightning: list[float] = []
            self.bare: list[float] = []
            self._mark: float | None = None

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            now = time.perf_counter()
            if self._mark is not None:
                self.lightning.append(now - self._mark)
            start = time.perf_counter()
            bare.step()
            end = time.perf_counter()
            self.bare.append(end - start)
            self._mark = time.perf_counter()

    return Interleave()


class _Indexed(torch.utils.data.Dataset):
    """(x, y, index) items, the batch layout CellClassifier.training_step unpacks."""

    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return x, y, i


def lightning_vs_bare(module_kind: str, args) -> dict:
    """Fit ``module_kind`` ('CellClassifier' or 'plain') for warmup + steps + 1 steps, a bare step after each."""
    import pytorch_lightning as pl

    from train.module import CellClassifier

    data = fixed_dataset(args.batch_size, args.size, args.dataset_batches)
    torch.manual_seed(0)
    bare = BareTrainer(args.backbone, cycle(DataLoader(data, batch_size=args.batch_size, shuffle=False,
                                                       num_workers=0, drop_last=True)))
    torch.manual_seed(0)
    module = CellClassifier(backbone=args.backbone) if module_kind == "CellClassifier" else \
        _plain_module_class()(args.backbone)
    # Batches for Lightning: the same tensors, with the sample index CellClassifier's step expects
    # (a third tensor in the default collate; negligible next to the images).
    loader = DataLoader(_Indexed(data), batch_size=args.batch_size, shuffle=False, num_workers=0, drop_last=True)
    callback = _interleave_callback(bare)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=args.warmup + args.steps + 1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[callback])
    trainer.fit(module, train_dataloaders=loader)
    lightning = callback.lightning[args.warmup:]
    bare_times = callback.bare[args.warmup + 1:]  # bare step k follows Lightning step k; keep pairs aligned
    lightning = lightning[:len(bare_times)]
    ratios = [a / b for a, b in zip(lightning, bare_times)]
    return {
        "module": module_kind,
        "bare": statistics.median(bare_times),
        "lightning": statistics.median(lightning),
        "ratio_of_medians": statistics.median(lightning) / statistics.median(bare_times),
        "ratio": statistics.median(ratios),  # per pair first: a drift between pairs cancels
        "pair_ratio_range": (min(ratios), max(ratios)),
        "steps": len(lightning),
    }


def print_part1(rows: list[dict], args) -> None:
    shape = f"{args.batch_size} x {IN_CHANS} x {args.size} x {args.size}"
    print(f"\n## Training step: {args.backbone}, batch {shape}, BCE + AdamW, CPU; "
          f"medians of {rows[0]['steps']} alternated steps after {args.warmup} warm-up")
    print("| LightningModule | bare ms/step | Lightning ms/step | ratio of medians | "
          "Lightning / bare (median of pairs) | pairs min-max | goal <= 1.10 |")
    print("|---" * 7 + "|")
    for r in rows:
        lo, hi = r["pair_ratio_range"]
        verdict = "ok" if r["ratio"] <= GOAL_LIGHTNING else "missed"
        print(f"| {r['module']} | {r['bare'] * 1e3:.1f} | {r['lightning'] * 1e3:.1f} | {r['ratio_of_medians']:.3f} | "
              f"**{r['ratio']:.3f}** | {lo:.2f}-{hi:.2f} | {verdict} |")


# ----------------------------------------------------------------------------- part 2: the world
def make_world(root: Path, *, images: int, size: int) -> dict[str, Path]:
    """A synthetic world with a mask cache of its train images and channel statistics (cellcls CLI)."""
    from cellcls.cli import main as cellcls_main

    world = root / "world"
    paths = {"images": world / "train", "labels": world / "train.csv", "masks": root / "masks",
             "stats": root / "stats.json", "folds": root / "folds.csv"}
    steps = [
        ["synth", "--out", str(world), "--train", str(images), "--size", str(size), "--seed", "0",
         "--no-progress", "-q"],
        ["segment", "--images", str(paths["images"]), "--out", str(paths["masks"]), "--backend", "classical",
         "--no-progress", "-q"],
        ["stats", "--images", str(paths["images"]), "--out", str(paths["stats"]), "--no-progress", "-q"],
        # Ungrouped folds: a world this small has too few antibody groups for 5 grouped folds.
        ["folds", "--labels", str(paths["labels"]), "--k", "5", "--seed", "0", "--out", str(paths["folds"]), "-q"],
    ]
    for argv in steps:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # their summaries are not this table's business
            code = cellcls_main(argv)
        if code != 0:
            raise SystemExit(f"cellcls {' '.join(argv)} exited with {code}")
        print(f"cellcls {argv[0]}: {time.perf_counter() - start:.1f} s")
    return paths


def long_loader(loader: DataLoader, draws: int) -> DataLoader:
    """``loader``'s dataset, batch size, workers and collate, with ``draws`` samples drawn with replacement."""
    sampler = RandomSampler(loader.dataset, replacement=True, num_samples=draws,
                            generator=torch.Generator().manual_seed(0))
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=True,
                      prefetch_factor=loader.prefetch_factor if loader.num_workers else None,
                      worker_init_fn=loader.worker_init_fn)


def _time_loader_chunk(batches: Iterator, *, drain: int, count: int) -> tuple[int, float]:
    for _ in range(drain):
        next(batches)
    samples = 0
    start = time.perf_counter()
    for _ in range(count):
        samples += len(next(batches)[0])
    return samples, time.perf_counter() - start


def _time_model_chunk(bare: BareTrainer, *, warmup: int, count: int, batch: int) -> tuple[int, float]:
    for _ in range(warmup):
        bare.step()
    start = time.perf_counter()
    for _ in range(count):
        bare.step()
    return count * batch, time.perf_counter() - start


def breakdown(dataset, task: str, samples: int) -> dict[str, float]:
    """Per-sample ms of the loader's work in the main process: read/copy, to_float01, augmentation."""
    from cellcls.io import read_image, to_float01

    rng = np.random.default_rng(0)
    parts: dict[str, list[float]] = {"read": [], "float01": [], "augment": []}
    for index in rng.integers(0, len(dataset), samples):
        t0 = time.perf_counter()
        if task == "image":
            raw = read_image(dataset.images, dataset.ids[index], threads=1)
        else:
            raw = np.ascontiguousarray(dataset.crops[index].transpose(1, 2, 0))
        t1 = time.perf_counter()
        image = to_float01(raw)
        t2 = time.perf_counter()
        dataset.transform(image)
        t3 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[key].append(value)
    return {key: float(np.median(v)) * 1e3 for key, v in parts.items()}


def loader_vs_model(paths: dict[str, Path], case: dict, args) -> dict:
    """One row of part 2: build the datamodule, then alternate loader chunks and model chunks."""
    from train.data import HpaDataModule

    options = dict(images=str(paths["images"]), labels=str(paths["labels"]), stats=str(paths["stats"]),
                   folds=str(paths["folds"]),
                   task=case["task"], augment=case["augment"], batch_size=case["batch"],
                   num_workers=args.workers, progress=False)
    if case["task"] == "image":
        options["image_size"] = case["size"]
    else:
        options.update(masks=str(paths["masks"]), crop_size=case["size"], crop_mode=args.crop_mode)
    start = time.perf_counter()
    dm = HpaDataModule(**options)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    base = dm.train_dataloader()
    batch = base.batch_size
    per_round = max(2, args.loader_samples // (batch * args.rounds))
    loader = long_loader(base, draws=batch * (per_round + 8) * args.rounds + batch * 64)
    drain = max(1, loader.num_workers * (loader.prefetch_factor or 0))
    torch.manual_seed(0)
    data = fixed_dataset(batch, case["size"], 2)
    bare = BareTrainer(args.backbone, cycle(DataLoader(data, batch_size=batch, num_workers=0, drop_last=True)))
    batches = iter(loader)
    loaded = loader_s = modelled = model_s = 0.0
    for r in range(args.rounds):
        n, s = _time_loader_chunk(batches, drain=drain, count=per_round)
        loaded, loader_s = loaded + n, loader_s + s
        n, s = _time_model_chunk(bare, warmup=1 if r == 0 else 0, count=args.model_steps, batch=batch)
        modelled, model_s = modelled + n, model_s + s
    del batches
    loader_rate, model_rate = loaded / loader_s, modelled / model_s
    return {**case, "workers": loader.num_workers, "train_samples": len(base.dataset), "setup_s": setup_s,
            "loader": loader_rate, "model": model_rate, "ratio": loader_rate / model_rate,
            "loaded": int(loaded), "breakdown": breakdown(base.dataset, case["task"], args.breakdown_samples)}


def print_part2(rows: list[dict], args) -> None:
    print(f"\n## Data pipeline vs model ({args.backbone} training step), {args.rounds} alternated rounds; "
          f"samples/s (images or crops)")
    print("| task | input px | augment | batch | workers | train samples | setup s | loader samples/s | "
          "model samples/s | loader / model | goal >= 1.0 | limits |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = "ok" if r["ratio"] >= GOAL_LOADER else "missed"
        limits = "model" if r["ratio"] >= 1 else "loader"
        print(f"| {r['task']} | {r['size']} | {r['augment']} | {r['batch']} | {r['workers']} | {r['train_samples']} | "
              f"{r['setup_s']:.1f} | {r['loader']:.1f} | {r['model']:.1f} | {r['ratio']:.2f} | {verdict} | {limits} |")
    print(f"\nLoader work per sample in the main process (median of {args.breakdown_samples}, ms; "
          "read = PNG decode for images, array copy for held crops):")
    print("| task | input px | read | to_float01 | augment + normalise | sum | samples/s per core |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["breakdown"]
        total = sum(b.values())
        print(f"| {r['task']} | {r['size']} | {b['read']:.2f} | {b['float01']:.2f} | {b['augment']:.2f} | "
              f"{total:.2f} | {1e3 / total:.0f} |")


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", help="timm name (default resnet18)")
    parser.add_argument("--batch-size", type=int, default=32, help="part 1 batch (default 32)")
    parser.add_argument("--size", type=int, default=128, help="part 1 input side in px (default 128)")
    parser.add_argument("--steps", type=int, default=None, help="part 1 timed step pairs (default 12; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="part 1 untimed steps (default 2; --quick 1)")
    parser.add_argument("--plain", action="store_true",
                        help="part 1 also with a minimal LightningModule (always when CellClassifier misses the goal)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--images", type=int, default=None, help="train images of the world (default 24; --quick 8)")
    parser.add_argument("--image-px", type=int, default=512, help="side of the world's images (default 512)")
    parser.add_argument("--workers", type=int, default=2, help="loader workers (default 2, HpaDataModule's)")
    parser.add_argument("--crop-mode", default="masked", help="cell task crop mode (default masked)")
    parser.add_argument("--rounds", type=int, default=None, help="part 2 alternated rounds (default 2; --quick 1)")
    parser.add_argument("--loader-samples", type=int, default=None,
                        help="part 2 samples drawn from each loader over all rounds (default 320; --quick 48)")
    parser.add_argument("--model-steps", type=int, default=None,
                        help="part 2 model steps per round, after one warm-up step (default 3; --quick 1)")
    parser.add_argument("--full", action="store_true", help="also the image task at 512 px")
    parser.add_argument("--quick", action="store_true", help="few steps and samples (smoke run)")
    parser.add_argument("--skip-part1", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-part2", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args(argv)  # run_all.py passes its arguments to every script
    quick = args.quick
    defaults = dict(steps=(3, 12), warmup=(1, 2), images=(8, 24), rounds=(1, 2), loader_samples=(48, 320),
                    model_steps=(1, 3))
    for key, (small, normal) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, small if quick else normal)
    if quick:
        args.batch_size = min(args.batch_size, 8)
    args.dataset_batches = 4
    args.breakdown_samples = 10 if quick else 40
    return args


def part2_cases(args) -> list[dict]:
    cases = [dict(task="image", size=256, augment="seed002", batch=8)]
    if args.full:
        cases.append(dict(task="image", size=512, augment="seed002", batch=4))
    cases += [dict(task="cell", size=64, augment="d4", batch=32), dict(task="cell", size=128, augment="d4", batch=32)]
    return cases


def quiet() -> None:
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import: override after it)

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*full=True.*")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench_train  {datetime.datetime.now().isoformat(timespec='seconds')}  {platform.node()}")
    print(f"CPUs {os.cpu_count()}, torch {torch.__version__} threads {torch.get_num_threads()}, "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    if not args.skip_part1:
        rows = [lightning_vs_bare("CellClassifier", args)]
        if args.plain or rows[0]["ratio"] > GOAL_LIGHTNING:
            rows.append(lightning_vs_bare("plain", args))
        print_part1(rows, args)
    if not args.skip_part2:
        with tempfile.TemporaryDirectory() as tmp:
            paths = make_world(Path(tmp), images=args.images, size=args.image_px)
            rows2 = [loader_vs_model(paths, case, args) for case in part2_cases(args)]
        print_part2(rows2, args)
    print(f"\nload average at the end {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
