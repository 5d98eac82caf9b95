"""The bundled model's int8 record: its calibration and the quality it was measured to keep.

Two steps around two ``edsr eval`` runs, one per precision; the fp32 run may cover more data
sets than the int8 one (the bundled model's full plain eval, say), and the record holds the
data sets and scales of the int8 run:

    python scripts/int8_record.py calibrate TRAIN_DIR
    edsr eval --data Set5 Urban100 --scale 2 3 4 --precision fp32 \\
        --json fp32.json --save-images out/fp32
    edsr eval --data Set5 Urban100 --scale 2 3 4 --precision int8 \\
        --json int8.json --save-images out/int8
    python scripts/int8_record.py record fp32.json int8.json out/fp32 out/int8

``calibrate`` measures the activation ranges on the training images (never the test sets)
and stores them in the cache, where ``--precision int8`` finds them. ``record`` writes
``src/edsr/assets/<stem>.int8.json``: the ranges plus, per data set and scale, the PSNR of
both precisions and the 99.9th percentile of their gray-level difference, and whether that
meets the bar ``auto`` asks of int8 (``edsr.inference.calibration.BAR``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from edsr.inference.calibration import BAR, calibrate, find_calibration
from edsr.io.image import read_image, to_8bit
from edsr.weights import load_model
from edsr.weights.entry import metrics_from_eval_json

ASSETS = Path(__file__).resolve().parents[1] / "src" / "edsr" / "assets"


def _psnr_table(report: Path) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for m in metrics_from_eval_json(report):
        out[m.dataset][str(m.scale)] = m.psnr
    return out


def _p999(a_dir: Path, b_dir: Path) -> dict[str, dict[str, float]]:
    """99.9th percentile of |a - b| in gray levels, per data set and scale, over all pixels of
    the images in ``b_dir``, each of which must be in ``a_dir``.

    Both folders are ``edsr eval --save-images`` trees: ``<data set>/x<scale>/<image>.png``.
    """
    diffs: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for b_file in sorted(b_dir.glob("*/x*/*.png")):
        rel = b_file.relative_to(b_dir)
        a_file = a_dir / rel
        if not a_file.is_file():
            raise SystemExit(f"{a_file} is missing: evaluate both precisions on the same images")
        a = to_8bit(read_image(a_file).pixels).astype(np.int16)
        b = to_8bit(read_image(b_file).pixels).astype(np.int16)
        diffs[rel.parts[0], rel.parts[1][1:]].append(np.abs(a - b).ravel())
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for (dataset, scale), d in diffs.items():
        out[dataset][scale] = float(np.percentile(np.concatenate(d), 99.9))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model name or file (default: the bundled one)")
    p.add_argument("--stem", default="mdsr_baseline_291", help="asset file name before .int8")
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("calibrate", help="measure and cache the activation ranges")
    c.add_argument("train", help="the model's training images (T91 + BSD200)")
    r = sub.add_parser("record", help="write the asset from two eval runs")
    r.add_argument("fp32_json")
    r.add_argument("int8_json")
    r.add_argument("fp32_images")
    r.add_argument("int8_images")
    args = p.parse_args(argv)
    model = load_model(args.model, device="cpu")
    if args.step == "calibrate":
        calib = calibrate(model, args.train)
        print(f"calibrated {calib.method} on {calib.source}: {calib.digest}")
        return 0
    calib = find_calibration(model)
    if calib is None:
        raise SystemExit("no stored calibration for this model: run the calibrate step first")
    fp32, int8 = _psnr_table(Path(args.fp32_json)), _psnr_table(Path(args.int8_json))
    gray = _p999(Path(args.fp32_images), Path(args.int8_images))
    fp32 = {ds: {s: fp32[ds][s] for s in int8[ds]} for ds in int8}  # the int8 run's cells
    cells = [(ds, s) for ds in int8 for s in int8[ds]]
    worst_db = max(fp32[ds][s] - int8[ds][s] for ds, s in cells)
    worst_gray = max(gray[ds][s] for ds, s in cells)
    quality = {
        "psnr_fp32": fp32,
        "psnr_int8": int8,
        "p999_gray_levels": gray,
        "meets_bar": worst_db <= BAR["psnr_db"] and worst_gray <= BAR["gray_levels_p999"],
        "measured_with": "edsr eval --precision fp32/int8 (Y, shave = scale); p99.9 of the "
        "absolute difference of the saved outputs, all channels",
    }
    record = dataclasses.replace(calib, quality=quality)
    dest = ASSETS / f"{args.stem}.int8.json"
    dest.write_text(record.to_json() + "\n")
    print(
        f"wrote {dest}: worst PSNR cost {worst_db:.4f} dB, worst p99.9 {worst_gray:g} levels, "
        f"meets the bar: {quality['meets_bar']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
