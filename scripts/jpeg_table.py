"""The JPEG table: PSNR gain over bicubic of the same LR, for the clean default model, the
JPEG-aware models and the default route, on lossless LR, JPEG LR and OpenCV's LR.

    python scripts/jpeg_table.py --data-root ../shared/datasets/benchmark --out docs/jpeg-eval

Each (model, LR) pair is one ``edsr eval`` report in ``--out`` (``<model>--<lr>.json``), made
here by :func:`edsr.evaluate.evaluate` when missing and read back when present, so a stopped
run goes on where it stopped. The LR is MATLAB bicubic of the HR image, then ``--degrade``'s
spec (``jpeg:75``: saved by Pillow at quality 75, 4:2:0 chroma), or OpenCV's ``cv2.resize``
(``cv2-cubic``: INTER_CUBIC, aliased; ``cv2-area``: INTER_AREA) written as PNG. The route's
column is the model :func:`edsr.defaults.route` picks for that input: a JPEG's quality is
read from its file, a PNG is clean. PSNR on Y, shave = scale, outputs rounded to 0..255.
It prints the summary (mean and worst cell per LR kind: the README's table), then one table
per LR kind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from edsr import defaults
from edsr.degrade import parse_degradation
from edsr.evaluate import BICUBIC, evaluate
from edsr.io.image import read_image, to_8bit, write_png
from edsr.resize import mod_crop
from edsr.weights import load_model

CLEAN_MODEL = "mdsr-baseline-291"
OPENCV = {"cv2-cubic": "INTER_CUBIC", "cv2-area": "INTER_AREA"}


def opencv_set(hr_dir: Path, out: Path, kind: str, scales: list[int]) -> Path:
    """``hr_dir``'s images with LR made by OpenCV, in the benchmark layout under ``out``."""
    import cv2

    root = out / "lr-sets" / kind / hr_dir.name
    for hr_path in sorted((hr_dir / "HR").glob("*.png")):
        hr = to_8bit(read_image(hr_path).pixels)
        if not (root / "HR" / hr_path.name).is_file():
            write_png(root / "HR" / hr_path.name, hr, overwrite=True)
        for s in scales:
            dst = root / "LR_bicubic" / f"X{s}" / f"{hr_path.stem}x{s}.png"
            if dst.is_file():
                continue
            crop = mod_crop(hr, s)
            h, w = crop.shape[:2]
            lr = cv2.resize(crop, (w // s, h // s), interpolation=getattr(cv2, OPENCV[kind]))
            write_png(dst, lr.reshape(h // s, w // s, hr.shape[2]), overwrite=True)
    return root


def report(
    out: Path, model_name: str, lr: str, data: list[Path], scales: list[int], precision: str
) -> dict:
    path = out / f"{model_name}--{lr.replace(':', '')}.json"
    if path.is_file():
        return json.loads(path.read_text())
    model = BICUBIC if model_name == BICUBIC else load_model(model_name, device="cpu")
    degrade = None if lr in OPENCV else lr
    r = evaluate(
        model, [str(d) for d in data], scales, degrade=degrade, precision=precision, progress=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1) + "\n")
    print(f"  wrote {path}", file=sys.stderr, flush=True)
    return r


def route_for(lr: str) -> str:
    if lr in OPENCV or lr == "clean":
        name, _ = defaults.route(None)
    else:
        quality = parse_degradation(lr).terms[0].qmin
        name, _ = defaults.route(quality)
    return name or CLEAN_MODEL


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, type=Path)
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100", "Urban100"])
    p.add_argument("--lr", nargs="+", default=["clean", "jpeg:90", "jpeg:75", "jpeg:50"])
    p.add_argument("--scale", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--precision", default="auto", help="as `edsr upscale` runs (default auto)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--only", nargs="+", metavar="MODEL", help="make these models' reports, print no table"
    )
    args = p.parse_args(argv)
    # the JPEG model of every quality before the band models it started
    models = list(
        dict.fromkeys([BICUBIC, CLEAN_MODEL, defaults.JPEG_MODEL, *defaults.route_models()])
    )
    if args.only:
        for lr in args.lr:
            data = [args.data_root / s for s in args.sets]
            if lr in OPENCV:
                data = [opencv_set(d, args.out, lr, args.scale) for d in data]
            for m in args.only:
                report(args.out, m, lr, data, args.scale, args.precision)
        return 0
    gains: dict[tuple[str, str], dict[tuple[str, int], float]] = {}
    for lr in args.lr:
        data = [args.data_root / s for s in args.sets]
        if lr in OPENCV:
            data = [opencv_set(d, args.out, lr, args.scale) for d in data]
        print(f"{lr}:", file=sys.stderr, flush=True)
        rows = {m: report(args.out, m, lr, data, args.scale, args.precision) for m in models}
        base = {(r["dataset"], r["scale"]): r["psnr"] for r in rows[BICUBIC]["results"]}
        for m in models[1:]:
            gains[(m, lr)] = {
                (r["dataset"], r["scale"]): r["psnr"] - base[(r["dataset"], r["scale"])]
                for r in rows[m]["results"]
            }
        gains[(ROUTE, lr)] = gains[(route_for(lr), lr)]
    cells = [(s, x) for s in args.sets for x in args.scale]
    columns = [*models[1:], ROUTE]
    print(summary(gains, args.lr, columns, cells))
    for lr in args.lr:
        print(f"\n### {lr} (the route: {route_for(lr)})\n")
        print(
            "| data set | scale | " + " | ".join(f"`{m}`" for m in columns) + " | route - today |"
        )
        print("|---" * (3 + len(columns)) + "|")
        for c in [*cells, "mean", "min"]:
            if isinstance(c, tuple):
                vals = [gains[(m, lr)][c] for m in columns]
                delta = gains[(ROUTE, lr)][c] - gains[(CLEAN_MODEL, lr)][c]
                label = f"{c[0]} | x{c[1]}"
            else:
                f = statistics.mean if c == "mean" else min
                vals = [f(gains[(m, lr)][k] for k in cells) for m in columns]
                delta = f(gains[(ROUTE, lr)][k] - gains[(CLEAN_MODEL, lr)][k] for k in cells)
                label = f"{c} |"
            print(f"| {label} | " + " | ".join(f"{v:+.2f}" for v in vals) + f" | {delta:+.2f} |")
    print(f"\ngain in dB over bicubic of the same LR; precision {args.precision}")
    return 0


#: The default route's column: for each LR, the model :func:`edsr.defaults.route` picks.
ROUTE = "route"


def summary(
    gains: dict[tuple[str, str], dict[tuple[str, int], float]],
    lrs: list[str],
    columns: list[str],
    cells: list[tuple[str, int]],
) -> str:
    """Mean gain (worst cell) per LR kind and model: the README's table."""
    names = {ROUTE: "the default route"}
    lines = [
        "| LR | " + " | ".join(names.get(m, f"`{m}` alone") for m in columns) + " |",
        "|---" * (1 + len(columns)) + "|",
    ]
    for lr in lrs:
        vals = [gains[(m, lr)] for m in columns]
        lines.append(
            f"| {lr} | "
            + " | ".join(
                f"{statistics.mean(v[c] for c in cells):+.2f} ({min(v[c] for c in cells):+.2f})"
                for v in vals
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
