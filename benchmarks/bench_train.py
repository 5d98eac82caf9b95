"""Training throughput: this project's step against a plain fp32 NCHW loop, and the loader.

Run by hand: ``python benchmarks/bench_train.py [--preset edsr-baseline] [--scale 2]``.
Everything is measured in one run, interleaved, so the printed ratios compare like with like
on whatever machine this is.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edsr.inference.precision import precision_name, resolve_precision
from edsr.models import build_model
from edsr.training.data import PatchDataset, batch_loader

REPO = Path(__file__).resolve().parents[1]


def plain_step_fn(model, opt):
    """The public code's way: fp32, NCHW, nothing else."""

    def step(lr, hr, scale):
        out = model(lr, scale)
        loss = F.l1_loss(out, hr)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def project_step_fn(model, opt, precision: str):
    """What edsr.training.loop does per step: channels-last, autocast in the chosen precision."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.to(memory_format=torch.channels_last)

    def step(lr, hr, scale):
        lr = lr.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(lr, scale)
        loss = F.l1_loss(out.float(), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="edsr-baseline")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--data", default=str(REPO / "tests" / "data" / "Set5"))
    args = ap.parse_args()
    s, b, p = args.scale, args.batch, args.patch
    lr = torch.rand(b, 3, p, p) * 255
    hr = torch.rand(b, 3, p * s, p * s) * 255
    auto = precision_name(resolve_precision("auto", torch.device("cpu")))
    cases = {
        "plain fp32 NCHW": plain_step_fn,
        "project fp32 channels-last": lambda m, o: project_step_fn(m, o, "fp32"),
        f"project auto ({auto})": lambda m, o: project_step_fn(m, o, auto),
        "project bf16 channels-last": lambda m, o: project_step_fn(m, o, "bf16"),
    }
    steps = {}
    for name, make in cases.items():
        torch.manual_seed(0)
        model = build_model(args.preset, scale=s, scales=(s,))
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], 1e-4)
        steps[name] = make(model, opt)
        steps[name](lr, hr, s)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(args.rounds):  # interleaved, so load changes hit every case alike
        for name, fn in steps.items():
            t = time.perf_counter()
            fn(lr, hr, s)
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["plain fp32 NCHW"])
    print(
        f"{args.preset} x{s}, batch {b}, LR patch {p}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<30} {med:7.3f} s/step   speed-up vs plain {base / med:5.2f}x")

    data = PatchDataset(
        [args.data], [s], patch_size=p, cache_dir="/tmp/edsr-bench-cache", progress=False
    )
    n = 200
    t = time.perf_counter()
    for _ in batch_loader(data, 0, n, b, seed=0):
        pass
    rate = n * b / (time.perf_counter() - t)
    fastest = min(statistics.median(ts) for ts in times.values())
    need = b / fastest
    print(
        f"  loader: {rate:,.0f} patches/s in-process; "
        f"the fastest step consumes {need:,.1f} patches/s "
        f"({rate / need:,.0f}x headroom)"
    )


if __name__ == "__main__":
    main()
