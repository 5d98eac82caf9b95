"""The long-job estimate against the time the job then takes, in one run.

``edsr upscale`` says "about N min" before it starts an image whose job is estimated at over
a minute, from ``plan_job``'s timing passes on the prepared model the job runs (precision auto,
the fused or int8 path, the self-ensemble, passes growing toward the job's tile); a job of
several tiles then checks it on its own first tiles and says a revised line when they
disagree by over half. The ratio below is taken on the first line, the one said before any
work. This runs the CLI's
per-image engine (``upscale_image_file`` on the model ``upscale_files`` prepares, progress on,
precision auto) on an 800x800 image x4 with the self-ensemble and the bundled model, a job of
minutes on a CPU, and prints:

- ``said``: the line(s) the user sees, and the estimate in them;
- ``measured``: from the job's start (its first tile starting) until the output was written;
- ``before the job``: image read, the ``plan_job`` timing passes (its own estimate shown too).

measured / said must lie within 0.5-2 (exit status 1 otherwise). The load average is printed
before and after: the job runs through the next minutes of the machine's load.

Run by hand (minutes on 2 cores):  python benchmarks/bench_estimate.py [--size 800] [--scale 4]
[--no-ensemble] [--precision auto] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edsr import defaults  # noqa: E402
from edsr.inference.estimate import plan_job  # noqa: E402
from edsr.inference.files import PROGRESS_TILE_SECONDS, upscale_image_file  # noqa: E402
from edsr.inference.precision import chosen_precision, compute_model  # noqa: E402
from edsr.weights import load_model  # noqa: E402

SAMPLE = ROOT / "src" / "edsr" / "assets" / "samples" / "zebra.png"


def cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def seconds_of(line: str) -> float:
    """The duration in a said line ("a.png: about 2.6 min: ...")."""
    m = re.search(r"about ([0-9.]+) (s|min|h)\b", line)
    assert m is not None, line
    return float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=800, help="input side in pixels (default 800)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--no-ensemble", dest="ensemble", action="store_false")
    ap.add_argument("--precision", default=defaults.PRECISION)
    ap.add_argument("--device", default=None, help="default: a GPU when present")
    args = ap.parse_args()

    print(f"load average before: {load()}  ({os.cpu_count()} cores, {cpu()})")
    model = load_model(device=args.device, progress=False)
    prepared = compute_model(model, args.precision)  # what upscale_files runs
    said: list[str] = []
    started: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        # real picture content (the bundled Set14 zebra), resized to the side asked for
        Image.open(SAMPLE).convert("RGB").resize((args.size, args.size), Image.BICUBIC).save(src)
        begin = time.perf_counter()
        upscale_image_file(
            src,
            Path(tmp) / "out.png",
            prepared,
            args.scale,
            ensemble=args.ensemble,
            progress=True,
            on_tile=lambda done, total: started.append(time.perf_counter()) if done == 0 else None,
            say=said.append,
        )
        end = time.perf_counter()
    pre = plan_job(
        prepared,
        (1, 3, args.size, args.size),
        args.scale,
        ensemble=args.ensemble,
        max_tile_seconds=PROGRESS_TILE_SECONDS,
    )
    job = f"{args.size}x{args.size} x{args.scale}" + (" self-ensemble" if args.ensemble else "")
    device = next(model.parameters()).device
    print(
        f"job: {job}, precision {chosen_precision(model, args.precision, device)} on {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for line in said:
        print(f"said: {line}")
    print(f"before the job: {started[0] - begin:.1f} s (plan_job's estimate {pre.seconds:.0f} s)")
    if not said:
        print("nothing was said: the job's estimate was under a minute")
        return 1
    estimate = seconds_of(said[0])
    measured = end - started[0]
    ratio = measured / estimate
    print(f"estimate (first line): {estimate:.0f} s; measured: {measured:.1f} s")
    print(f"measured / estimated: {ratio:.2f} (must be within 0.5-2)")
    print(f"load average after: {load()}")
    return 0 if 0.5 <= ratio <= 2 else 1


if __name__ == "__main__":
    sys.exit(main())
