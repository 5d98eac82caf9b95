"""Time edsr.resize.imresize (torch) against a plain float64 numpy implementation.

The numpy baseline is the same algorithm written directly in numpy: per axis, a dense
(out, in) float64 weight matrix (MATLAB's bicubic contributions, symmetric mirroring),
applied with np.tensordot; rows first, then columns; uint8 results rounded half away from
zero and clipped, like imresize. It is independent of edsr.resize.

Run by hand, e.g.:  python benchmarks/bench_resize.py --data path/to/HR --scale 4
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from edsr.resize import imresize  # noqa: E402


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return (1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1) + (
        -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    ) * ((ax > 1) & (ax <= 2))


def np_weights(n_in: int, n_out: int, s: float) -> np.ndarray:
    width = 4 / s if s < 1 else 4.0
    x = np.arange(1, n_out + 1, dtype=np.float64)
    u = x / s + 0.5 * (1 - 1 / s)
    idx = np.floor(u - width / 2)[:, None] + np.arange(math.ceil(width) + 2)[None, :]
    d = u[:, None] - idx
    w = s * _cubic(s * d) if s < 1 else _cubic(d)
    w /= w.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(n_in), np.arange(n_in - 1, -1, -1)])
    src = aux[np.mod(idx.astype(np.int64) - 1, 2 * n_in)]
    mat = np.zeros((n_out, n_in))
    np.add.at(mat, (np.repeat(np.arange(n_out), src.shape[1]), src.ravel()), w.ravel())
    return mat


def np_imresize(img: np.ndarray, s: float, quantize: bool = True) -> np.ndarray:
    """(H, W, C) array -> resized float64 (or uint8 when quantize) array."""
    h, w = img.shape[:2]
    oh, ow = math.ceil(h * s), math.ceil(w * s)
    a = img.astype(np.float64)
    a = np.tensordot(np_weights(h, oh, s), a, axes=(1, 0))  # (oh, w, c)
    a = np.tensordot(a, np_weights(w, ow, s), axes=(1, 1))  # (oh, c, ow)
    a = a.transpose(0, 2, 1)
    if quantize:
        return np.floor(np.clip(a, 0, 255) + 0.5).astype(np.uint8)
    return a


def default_data() -> Path:
    shared = ROOT.parent / "shared" / "datasets" / "benchmark"
    for name in ("Urban100", "B100"):
        if (shared / name / "HR").is_dir():
            return shared / name / "HR"
    return ROOT / "tests" / "data" / "Set5" / "HR"


def best_time(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data(), help="folder of images")
    ap.add_argument("--scale", type=int, default=4, help="downscale factor (default 4)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per image; the best counts")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many images")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in {".png", ".bmp", ".jpg"})
    if args.limit:
        files = files[: args.limit]
    if not files:
        sys.exit(f"no images in {args.data}")
    s = 1 / args.scale
    print(
        f"{len(files)} images from {args.data}, x{args.scale} downscale, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), best of {args.repeat}"
    )
    print(f"{'image':<24} {'size':>11} {'torch ms':>9} {'numpy ms':>9} {'ratio':>6}")

    imgs = []
    for f in files:
        with Image.open(f) as im:
            imgs.append(np.array(im.convert("RGB")))
    tens = [torch.from_numpy(img).permute(2, 0, 1).contiguous() for img in imgs]

    # Timed in separate phases: torch's OpenMP threads and numpy's BLAS threads spin-wait
    # after each call, and interleaving the two makes both look several times slower.
    times_t = [best_time(lambda t=t: imresize(t, s), args.repeat) for t in tens]
    times_n = [best_time(lambda a=a: np_imresize(a, s), args.repeat) for a in imgs]
    t_torch, t_numpy = sum(times_t), sum(times_n)

    max_float_diff = 0.0
    uint8_mismatch = 0
    for f, img, t, tt, tn in zip(files, imgs, tens, times_t, times_n, strict=True):
        out_t = imresize(t, s).permute(1, 2, 0).numpy()
        uint8_mismatch += int(np.count_nonzero(out_t != np_imresize(img, s)))
        ft = imresize(t.double(), s).permute(1, 2, 0).numpy()
        fn = np_imresize(img, s, quantize=False)
        max_float_diff = max(max_float_diff, float(np.abs(ft - fn).max()))
        size = f"{img.shape[1]}x{img.shape[0]}"
        print(f"{f.name:<24} {size:>11} {tt * 1e3:9.2f} {tn * 1e3:9.2f} {tn / tt:6.2f}")

    print(
        f"total: torch {t_torch:.3f} s, numpy {t_numpy:.3f} s, "
        f"numpy/torch speed ratio {t_numpy / t_torch:.2f}"
    )
    print(
        f"max |torch - numpy| (float64, unrounded): {max_float_diff:.3e}; "
        f"uint8 pixels that differ: {uint8_mismatch}"
    )


if __name__ == "__main__":
    main()
