"""DPNUnet's decoder layers: the literal computation vs the forms of segment.fastconv, layer by layer.

Run::

    python benchmarks/bench_fastconv.py              # CPU, 512² network input, best of 5
    python benchmarks/bench_fastconv.py --device cuda

Rows are the nine decoder layers at a 512² network input (batch 1, channels_last, random weights):
the upsample blocks (nearest x2 + 3x3 conv + ReLU) and the bottlenecks (3x3 conv + ReLU over the
concatenation). Columns: milliseconds of each form (conv = the phase kernels by convolution), the form the network picks on this device
(``segment.network``'s policy), and its speed-up over the literal layer. Then whole forwards with
the fast decoder off and on. Every form's largest deviation from the literal output is checked
(relative to the output's magnitude) and printed.

The CPU policy is tuned with ``cellcls.runtime.retain_freed_memory`` applied (as ``cellcls segment``
does on CPU): without it, the Winograd forms' fresh buffers cost page faults and lose at 128².
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cellcls.runtime import retain_freed_memory  # noqa: E402
from segment import fastconv  # noqa: E402
from segment import network as net_module  # noqa: E402
from segment.network import ENCODER_CHANNELS, create_dpn_unet  # noqa: E402

INPUT_PX = 512


def best_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def layers() -> list[tuple[str, int, int, int]]:
    """(kind, in channels, out channels, input side in pixels) of the nine decoder layers at 512²."""
    f = ENCODER_CHANNELS
    out = []
    for level in (3, 2, 1, 0):
        side = INPUT_PX >> (level + 2)  # the deeper skip's side: stride 2**(level + 2)
        out.append(("upsample", f[level + 1], f[level], side))
        out.append(("bottleneck", 2 * f[level], f[level], 2 * side))
    out.append(("upsample", f[0], f[0], INPUT_PX // 2))
    return out


def policy(kind: str, channels: int, device: torch.device) -> str:
    """The form segment.network picks for this layer (mirrors _UpConvBlock / _ConvBottleneck)."""
    probe = torch.empty(1, channels, 1, 1, device=device)
    if net_module._cpu_winograd(probe):
        return "winograd"
    return "literal" if kind == "bottleneck" else "conv"


def relative_gap(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-12))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell; the best is kept")
    parser.add_argument("--no-forward", action="store_true", help="skip the whole-network rows")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tuned = retain_freed_memory() if device.type == "cpu" else False
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; malloc tuning {'on' if tuned else 'off'}")
    torch.manual_seed(0)
    cl = torch.channels_last
    header = f"{'layer':<34} {'literal':>8} {'conv':>7} {'winograd':>9} {'picked':>9} {'speed-up':>9} {'max gap':>8}"
    print(header)
    total_literal = total_picked = 0.0
    with torch.inference_mode():
        for kind, cin, cout, side in layers():
            x = torch.randn(1, cin, side, side, device=device).contiguous(memory_format=cl)
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(device, memory_format=cl)
            w, b = conv.weight, conv.bias
            times: dict[str, float] = {}
            gaps: list[float] = []
            if kind == "upsample":
                def literal() -> torch.Tensor:
                    return torch.relu_(conv(F.interpolate(x, scale_factor=2, mode="nearest")))

                kernels = fastconv.phase_kernels(w).contiguous(memory_format=cl)
                bias4 = b.repeat(4)
                forms = {"conv": lambda: fastconv.phase_upsample_conv(x, kernels, bias4)}
                if device.type == "cpu":
                    wk = fastconv.winograd_phase_kernels(kernels)
                    forms["winograd"] = lambda: fastconv.phase_upsample_conv(x, None, bias4, form="winograd",
                                                                           winograd=wk)
            else:
                def literal() -> torch.Tensor:
                    return torch.relu_(conv(x))

                wk3 = fastconv.winograd_kernels(w)
                forms = {"winograd": lambda: fastconv.winograd_conv3x3(x, wk3, b, relu=True)}
            reference = literal()
            times["literal"] = best_ms(literal, args.repeats, device)
            for name, fn in forms.items():
                gaps.append(relative_gap(fn(), reference))
                times[name] = best_ms(fn, args.repeats, device)
            picked = policy(kind, cin, device)
            picked_ms = times[picked]
            total_literal += times["literal"]
            total_picked += picked_ms

            def cell(name: str, width: int) -> str:
                return f"{times[name]:>{width}.0f}" if name in times else f"{'-':>{width}}"

            label = f"{kind} {cin}->{cout} @ {side}²"
            print(f"{label:<34} {cell('literal', 8)} {cell('conv', 7)} {cell('winograd', 9)} "
                  f"{picked:>9} {times['literal'] / picked_ms:>8.2f}x {max(gaps):>8.1e}", flush=True)
        print(f"{'decoder total (ms)':<34} {total_literal:>8.0f} {'':>7} {'':>9} {'':>9} "
              f"{total_literal / total_picked:>8.2f}x   picked total {total_picked:.0f} ms")
        if not args.no_forward:
            model = create_dpn_unet().eval().to(device, memory_format=cl)
            x = torch.randn(1, 3, INPUT_PX, INPUT_PX, device=device).contiguous(memory_format=cl)
            model.set_fast_decoder(False)
            reference = model(x)
            literal_ms = best_ms(lambda: model(x), max(2, args.repeats // 2), device)
            model.set_fast_decoder(True)
            gap = relative_gap(model(x), reference)
            fast_ms = best_ms(lambda: model(x), max(2, args.repeats // 2), device)
            print(f"\nwhole forward {INPUT_PX}², batch 1: literal decoder {literal_ms:.0f} ms, fast decoder "
                  f"{fast_ms:.0f} ms: {literal_ms / fast_ms:.2f}x (logits max gap {gap:.1e} of their range)")
            weights_mb = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
            derived = [m._kernels._value for m in model.modules() if hasattr(m, "_kernels")]
            derived += [m._winograd_kernels._value for m in model.modules() if hasattr(m, "_winograd_kernels")]
            derived_mb = sum(t.numel() * t.element_size() for t in derived if t is not None) / 2**20
            print(f"memory: weights {weights_mb:.0f} MiB, derived kernels {derived_mb:.0f} MiB per network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
