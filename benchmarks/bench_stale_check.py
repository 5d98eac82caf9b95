"""What checking the prepared copy costs each ``edsr.upscale`` call, in one run.

``edsr.upscale(x, model)`` reuses a prepared (folded, cast, fused) copy of ``model`` only while
the model is unchanged, and checks that on every call (``compute_model``: each tensor's
fingerprint, the modules and their attributes, the hooks). This times that check alone and a
256x256 x4 call with the bundled model on the default compute path, and prints the check's
share of the call; it must stay under 2% (exit status 1 otherwise).

Run by hand, on a quiet machine (seconds):  python benchmarks/bench_stale_check.py [--size 256]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

import edsr
from edsr.inference.precision import copy_key

LIMIT = 0.02


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    model = edsr.load_model(device="cpu")
    x = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    edsr.upscale(x, model)  # prepares the copy
    checks, calls = [], []
    for _ in range(args.repeat):
        t = time.perf_counter()
        for _ in range(20):
            copy_key(model, "auto")
        checks.append((time.perf_counter() - t) / 20)
        t = time.perf_counter()
        edsr.upscale(x, model)
        calls.append(time.perf_counter() - t)
    check, call = statistics.median(checks), statistics.median(calls)
    share = check / call
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; bundled MDSR, "
        f"{args.size}x{args.size} x4, precision auto"
    )
    print(f"check {check * 1e3:.2f} ms, call {call * 1e3:.1f} ms: the check is {share:.2%}")
    return 0 if share < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
