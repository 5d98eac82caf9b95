"""Inference speed: the public code's way against this project's fp32 and ``auto`` paths.

edsr-baseline x4 on a 256x256 input (random weights: speed does not depend on them):

- public:  fp32, NCHW, residual scaling not folded (the public ResBlock multiplies by
           res_scale even when it is 1, emulated here with a hook), plain eager model;
- fp32:    ``prepare_model(precision="fp32")``: folded, channels-last;
- auto:    ``prepare_model(precision="auto")``: whatever auto picks on this machine;
- bf16:    forced bf16, for reference (slower than fp32 on CPUs without native bf16).

All cases run interleaved in one process, several rounds, and the median time is reported,
so the ratios come from one run under the same conditions. Achieved GFLOP/s (convolution
multiply-adds x 2, counted from the layers) are set against this machine's own convolution
peak: the best of a few large 3x3 convolutions in fp32 and bf16, channels-last.

Run by hand:  python benchmarks/bench_inference.py [--size 256] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edsr.inference.precision import cpu_has_native_bf16, prepare_model  # noqa: E402
from edsr.models import build_model  # noqa: E402
from edsr.models.common import ResBlock  # noqa: E402


def conv_flops(model: nn.Module, x: torch.Tensor, scale: int) -> int:
    """2 x multiply-adds of every convolution the model runs on ``x``."""
    total = 0

    def hook(mod: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += 2 * out.numel() * (mod.in_channels // mod.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(x, scale)
    for h in handles:
        h.remove()
    return total


def public_model(scale: int) -> nn.Module:
    """The public code's inference: NCHW fp32, ``res = body(x).mul(res_scale)`` in every block."""
    model = build_model("edsr-baseline", scale=scale).eval()
    for block in model.modules():
        if isinstance(block, ResBlock):
            block.body.register_forward_hook(lambda m, a, out, s=block.res_scale: out.mul(s))
    return model


def conv_peak(dtype: torch.dtype, repeats: int = 3) -> tuple[float, str]:
    """Best GFLOP/s of a few large 3x3 convolutions, channels-last (oneDNN's fastest layout)."""
    best, where = 0.0, ""
    for c, hw in ((64, 256), (128, 128), (256, 96)):
        conv = nn.Conv2d(c, c, 3, padding=1).to(dtype).to(memory_format=torch.channels_last).eval()
        x = torch.randn(1, c, hw, hw, dtype=dtype).contiguous(memory_format=torch.channels_last)
        flops = 2 * c * c * 9 * hw * hw
        with torch.no_grad():
            conv(x)
            for _ in range(repeats):
                t = time.perf_counter()
                conv(x)
                rate = flops / (time.perf_counter() - t) / 1e9
                if rate > best:
                    best, where = rate, f"{c}->{c} ch, {hw}x{hw}"
    return best, where


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="LR input size (default 256)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    torch.manual_seed(0)
    scale = args.scale
    x = torch.rand(1, 3, args.size, args.size) * 255

    public = public_model(scale)
    plain = build_model("edsr-baseline", scale=scale).eval()
    plain.load_state_dict(public.state_dict())
    cases = {
        "public (fp32 NCHW, unfolded)": (public, x),
        "ours fp32 (folded, channels-last)": (prepare_model(plain, precision="fp32"), x),
        "ours auto": (prepare_model(plain, precision="auto"), x),
        "bf16 (forced)": (prepare_model(plain, precision="bf16"), x),
    }
    auto_dtype = cases["ours auto"][0].precision
    flops = conv_flops(plain, x, scale)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {cpu_has_native_bf16()}, "
        f"auto = {auto_dtype}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(
        f"edsr-baseline x{scale}, {args.size}x{args.size} input: {flops / 1e9:.1f} GFLOP per image"
    )

    times: dict[str, list[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for model, inp in cases.values():  # warm-up: oneDNN primitive creation, weight reorders
            model(inp, scale)
        for _ in range(args.rounds):
            for name, (model, inp) in cases.items():
                t = time.perf_counter()
                model(inp, scale)
                times[name].append(time.perf_counter() - t)
        ref = public(x, scale)
        diffs = {name: float((m(inp, scale) - ref).abs().max()) for name, (m, inp) in cases.items()}

    peak32, where32 = conv_peak(torch.float32)
    peak16, where16 = conv_peak(torch.bfloat16)
    print(
        f"3x3 conv peak: fp32 {peak32:.0f} GFLOP/s ({where32}), "
        f"bf16 {peak16:.0f} GFLOP/s ({where16})"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f}")

    base = statistics.median(times["public (fp32 NCHW, unfolded)"])
    rows = []
    print(
        f"\n{'case':36s} {'median s':>9s} {'speed-up':>9s} {'GFLOP/s':>8s} "
        f"{'% of peak':>9s} {'max|diff|':>10s}"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        rate = flops / med / 1e9
        peak = (
            peak16 if "bf16" in name or (name == "ours auto" and auto_dtype == "bf16") else peak32
        )
        rows.append(
            {
                "case": name,
                "median_s": med,
                "speedup_vs_public": base / med,
                "gflops": rate,
                "fraction_of_peak": rate / peak,
                "max_abs_diff_vs_public": diffs[name],
                "times_s": ts,
            }
        )
        print(
            f"{name:36s} {med:9.3f} {base / med:8.2f}x {rate:8.0f} "
            f"{100 * rate / peak:8.0f}% {diffs[name]:10.2e}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "size": args.size,
                    "scale": scale,
                    "gflop_per_image": flops / 1e9,
                    "auto": auto_dtype,
                    "peak_gflops": {"fp32": peak32, "bf16": peak16},
                    "cases": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
