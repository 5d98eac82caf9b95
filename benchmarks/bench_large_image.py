"""Peak memory and time of upscaling a large image x4 with edsr-baseline, tiled vs whole.

Cases (each in its own subprocess, so each peak RSS (VmHWM) is that case's alone):

- tiled-default:  a 3000x3000 RGB PNG through ``edsr upscale`` (the CLI's code path), default
                  memory budget (half the free RAM), default precision (auto);
- tiled-2GB:      the same with ``--max-memory 2GB``;
- whole-<N>:      whole-image inference (one tile, no overlap) of an NxN image small enough to
                  fit in memory (default 1000), through the same path with ``--tile N``.

Time per megapixel of input compares the cost of the tiles' overlap; peak RSS shows that the
tiled run stays within its budget although the whole 3000x3000 image would need ~9x the
whole-1000 memory (about 75 GB). ``--max-memory`` bounds the model's working memory; the
process also holds the libraries (~0.4 GB), the input and the 8-bit output image.

Measured on the 2-core development machine (another session's training job used about one
core throughout): default budget 11.0 GiB -> 4x4 tiles of 804x804, 503.6 s, peak RSS 6.0 GiB;
--max-memory 2GB: 545.1 s, peak RSS 2.0 GiB; whole-image 1000x1000: 39.9 s (39.9 s/MP against
56.0 s/MP tiled), peak RSS 8.1 GiB.

Run by hand (several minutes on 2 cores):  python benchmarks/bench_large_image.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CHILD = r"""
import sys, time
sys.path.insert(0, {src!r})
from edsr.cli import main
t = time.perf_counter()
code = main({argv!r})
elapsed = time.perf_counter() - t
status = open("/proc/self/status").read()
hwm = int(status.split("VmHWM:")[1].split()[0]) * 1024
print("RESULT", code, elapsed, hwm)
"""


def make_image(path: Path, size: int) -> None:
    """A photo-like test image: Set5 pictures tiled and mirrored to the size (PNG)."""
    sources = sorted((ROOT / "tests" / "data" / "Set5" / "HR").glob("*.png"))
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sources]
    canvas = np.zeros((size, size, 3), np.uint8)
    y = i = 0
    while y < size:
        x, row_h = 0, 0
        while x < size:
            t = tiles[i % len(tiles)]
            t = t[:, ::-1] if (i // len(tiles)) % 2 else t
            h, w = min(t.shape[0], size - y), min(t.shape[1], size - x)
            canvas[y : y + h, x : x + w] = t[:h, :w]
            x, row_h, i = x + w, max(row_h, h), i + 1
        y += row_h
    Image.fromarray(canvas).save(path, compress_level=1)


def run_case(name: str, argv: list[str]) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), argv=argv)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    wall = time.perf_counter() - t
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    if proc.returncode != 0 or not line:
        raise SystemExit(f"{name} failed:\n{proc.stdout}\n{proc.stderr}")
    _, rc, elapsed, hwm = line[-1].split()
    return {
        "case": name,
        "exit_code": int(rc),
        "seconds": float(elapsed),
        "wall_seconds": wall,
        "peak_rss_bytes": int(hwm),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=3000)
    ap.add_argument("--whole", type=int, default=1000, help="side of the whole-image comparison")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--skip-2gb", action="store_true")
    args = ap.parse_args()

    import torch

    from edsr.inference import default_memory_budget, format_bytes, plan_tiles
    from edsr.inference.precision import prepare_model
    from edsr.models import build_model
    from edsr.weights import save_model

    with tempfile.TemporaryDirectory(prefix="edsr-bench-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = build_model("edsr-baseline", scale=4)
        ckpt = save_model(model, tmp / "edsr_baseline_x4.safetensors")
        big, small = tmp / "big.png", tmp / "small.png"
        make_image(big, args.size)
        make_image(small, args.whole)
        budget = default_memory_budget("cpu")
        plan = plan_tiles(prepare_model(model, precision="auto"), (1, 3, args.size, args.size), 4)
        win = plan.rows[0].stop - plan.rows[0].start
        print(
            f"default budget now: {format_bytes(budget)}; plan for {args.size}x{args.size}: "
            f"{len(plan.rows)}x{len(plan.cols)} tiles of {win}x{win} (overlap {plan.overlap}), "
            f"estimated {format_bytes(plan.memory)} per tile"
        )
        print(f"load average: {os.getloadavg()[0]:.2f}")
        common = ["--model", str(ckpt), "--quiet", "--overwrite"]
        cases = [
            ("tiled-default", ["upscale", str(big), "-o", str(tmp / "out_default.png"), *common])
        ]
        if not args.skip_2gb:
            out2 = str(tmp / "out_2g.png")
            cases.append(
                ("tiled-2GB", ["upscale", str(big), "-o", out2, *common, "--max-memory", "2GB"])
            )
        out3 = str(tmp / "out_small.png")
        cases.append(
            (
                f"whole-{args.whole}",
                ["upscale", str(small), "-o", out3, *common, "--tile", str(args.whole)],
            )
        )
        results = []
        for name, argv in cases:
            r = run_case(name, argv)
            side = args.whole if name.startswith("whole") else args.size
            r["input_megapixels"] = side * side / 1e6
            r["seconds_per_input_megapixel"] = r["seconds"] / r["input_megapixels"]
            results.append(r)
            print(
                f"{name:14s} {side}x{side} -> {side * 4}x{side * 4}: {r['seconds']:7.1f} s "
                f"({r['seconds_per_input_megapixel']:5.1f} s/MP), peak RSS "
                f"{format_bytes(r['peak_rss_bytes'])}",
                flush=True,
            )
        Image.MAX_IMAGE_PIXELS = None  # our own 144-megapixel output, not a decompression bomb
        a = np.asarray(Image.open(tmp / "out_default.png"))
        print(
            f"output {a.shape[1]}x{a.shape[0]} checked readable; "
            f"load average: {os.getloadavg()[0]:.2f}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"budget_bytes": budget, "tile_window": win, "results": results}, indent=2)
            + "\n"
        )


if __name__ == "__main__":
    main()
