"""Every GPU check of the project in one run, one table (what ``benchmarks/gpu_check.sh`` runs).

Device time is short when a GPU is lent, so this is prepared to run once, in well under 8 minutes on
one GPU, and to be tried first on CPU at toy sizes (``--smoke``: the same code paths, tiny inputs).

Sections (rows of the table; later issues add theirs with :func:`section`):

- ``fixture``: the DPN-92 U-Net loaded with the forward fixture's weights (tests/data, the ORIGINAL
  network's outputs) on the device, literal decoder and phase decoder, in float32 with TF32 OFF
  (max |logit - original|, goal <= 1e-4 as on CPU) and under float16 autocast (max |softmax -
  original| and per-pixel class agreement with the original; goal agreement >= 0.99).
- ``decoder``: forward time of the whole network under float16 autocast, batch of 512² images,
  literal (cuDNN) decoder vs phase decoder: the measurement that decides the CUDA default
  (``segment.network``: literal on CUDA until this row says otherwise).
- ``train``: images/s of a training step (forward + backward + AdamW, bf16 autocast, channels_last)
  for efficientnet_b0 at 512² and 1024², and cell crops/s at 256² (issue 10's GPU rows).
- GPU memory peak per section (``torch.cuda.max_memory_allocated``).

The end-to-end segmentation throughput (images/s vs decode-only rate) is ``bench_segment.py
--device cuda``, run by ``gpu_check.sh`` after this script.

Run::

    python benchmarks/gpu_check.py --device cuda        # on the lent GPU
    python benchmarks/gpu_check.py --smoke              # CPU, toy sizes: proves the script runs
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the fixture's weight rule lives beside the test that proves it

ROWS: list[tuple[str, str, str, str, str]] = []  # (section, what, figure, goal, peak memory)


def section(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Decorator: run a check, record its memory peak, and turn an exception into a FAILED row."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        def run(device: torch.device, smoke: bool) -> None:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                fn(device, smoke)
            except Exception as exc:  # one broken check must not hide the others' figures
                ROWS.append((name, "FAILED", f"{type(exc).__name__}: {exc}"[:120], "", ""))
            peak = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
                    if device.type == "cuda" else "n/a (CPU)")
            ROWS.append((name, "section total", f"{time.perf_counter() - t0:.1f} s", "", peak))
            print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

        run.__name__ = fn.__name__
        return run

    return wrap


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up: cuDNN autotuning, kernel caches
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _fixture_model(device: torch.device):
    from test_network import FIXTURE, fixture_tensor, read_key_table

    from segment.network import DPNUnet

    with torch.device("meta"):
        model = DPNUnet()
    state = {name: torch.from_numpy(fixture_tensor(k, name, shape))
             for k, (name, shape, _) in enumerate(read_key_table())}
    model.load_state_dict(state, strict=True, assign=True)
    with np.load(FIXTURE) as data:
        expected = {key: data[key] for key in data.files}
    return model.eval().to(device), expected


@section("fixture")
def check_fixture(device: torch.device, smoke: bool) -> None:
    model, expected = _fixture_model(device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for fast in (False, True):
            model.set_fast_decoder(fast)
            decoder = "phase decoder" if fast else "literal decoder"
            for case in ("a", "b"):
                x = torch.from_numpy(expected[f"input_{case}"]).to(device)
                with torch.no_grad():
                    logits = model(x).float().cpu().numpy()
                gap = float(np.abs(logits - expected[f"logits_{case}"]).max())
                ROWS.append(("fixture", f"fp32 TF32 off, {decoder}, input {case}: max abs logit gap",
                             f"{gap:.2e}", "<= 1e-4", ""))
                if device.type != "cuda":
                    continue  # float16 autocast is a CUDA path
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16):
                    proba = torch.softmax(model(x).float(), dim=1).cpu().numpy()
                gap = float(np.abs(proba - expected[f"softmax_{case}"]).max())
                agree = float((proba.argmax(1) == expected[f"softmax_{case}"].argmax(1)).mean())
                ROWS.append(("fixture", f"fp16 autocast, {decoder}, input {case}: max abs softmax gap, "
                             "class agreement", f"{gap:.2e}, {agree:.4f}", "agreement >= 0.99", ""))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous_tf32
        model.set_fast_decoder(True)


@section("decoder")
def check_decoder_speed(device: torch.device, smoke: bool) -> None:
    from segment.network import create_dpn_unet

    batch, side, repeats = (1, 64, 1) if smoke else (24, 512, 5)
    model = create_dpn_unet().eval().to(device).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    times = {}
    for fast in (False, True):
        model.set_fast_decoder(fast)

        def forward() -> None:
            with torch.no_grad(), amp:
                model(x)

        times[fast] = _best_time(forward, device, repeats)
        name = "phase decoder" if fast else "literal (cuDNN) decoder"
        ROWS.append(("decoder", f"{name}: batch {batch} x {side}², whole network",
                     f"{batch / times[fast]:.1f} img/s", "", ""))
    ROWS.append(("decoder", "phase / literal speed", f"{times[False] / times[True]:.2f}x",
                 "> 1.0x to make phase the CUDA default", ""))


@section("train")
def check_training_throughput(device: torch.device, smoke: bool) -> None:
    import timm

    cases = [("efficientnet_b0", 64, 2)] if smoke else [("efficientnet_b0", 512, 32), ("efficientnet_b0", 1024, 8),
                                                        ("efficientnet_b0", 256, 128)]
    for name, side, batch in cases:
        model = timm.create_model(name, pretrained=False, in_chans=4, num_classes=19).to(device)
        model = model.to(memory_format=torch.channels_last).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.rand(batch, 4, side, side, device=device).contiguous(memory_format=torch.channels_last)
        y = (torch.rand(batch, 19, device=device) > 0.8).float()
        dtype = torch.bfloat16

        def step() -> None:
            with torch.autocast(device.type, dtype=dtype):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
            loss.backward()
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)

        seconds = _best_time(step, device, 1 if smoke else 5)
        what = "cell crops" if side == 256 else "images"
        ROWS.append(("train", f"{name} {side}² batch {batch}, bf16 autocast, train step",
                     f"{batch / seconds:.1f} {what}/s", "", ""))


def print_table(device: torch.device) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke sizes)"
    print(f"\n# gpu_check on {where}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| section | check | figure | goal | GPU memory peak |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--smoke", action="store_true", help="CPU at toy sizes: check that every section runs")
    parser.add_argument("--only", nargs="*", choices=("fixture", "decoder", "train"), help="run these sections only")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.smoke else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU; use --smoke on CPU", file=sys.stderr)
        return 1
    checks = {"fixture": check_fixture, "decoder": check_decoder_speed, "train": check_training_throughput}
    for name, check in checks.items():
        if not args.only or name in args.only:
            check(device, args.smoke)
    print_table(device)
    return 1 if any(row[1] == "FAILED" for row in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
