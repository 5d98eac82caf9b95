"""Check that ``edsr export --format onnx`` files run in OpenCV's ``cv2.dnn``, within one gray
level of PyTorch, for EDSR and MDSR at odd sizes.

One python with edsr and cv2 does both steps:

    python scripts/check_onnx_opencv.py

An old OpenCV wants numpy < 2, so it usually lives in a venv of its own without torch; then
write the files with edsr and check them there (the check needs only cv2 and numpy):

    python scripts/check_onnx_opencv.py --write /tmp/onnx-cv
    python3 -m venv /tmp/cv45 && /tmp/cv45/bin/pip install "opencv-python-headless==4.5.*" "numpy<2"
    /tmp/cv45/bin/python scripts/check_onnx_opencv.py --check /tmp/onnx-cv

``--write`` stores, per case, the ONNX file, the input and PyTorch's output (``.npy``); the
check prints the largest difference in gray levels (outputs rounded and clipped to 0..255) and
exits 1 when a case is over one level or does not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SIZES = ((17, 23), (40, 33))  # odd, non-square, and not the size the graph was traced at


def write(folder: Path) -> list[dict]:
    """Export the cases to ``folder`` with their inputs and PyTorch outputs."""
    import torch

    from edsr.export import export_model
    from edsr.models import EDSR
    from edsr.weights import load_model

    torch.manual_seed(0)
    edsr_small = EDSR(scale=4, n_resblocks=2, n_feats=16, res_scale=0.1).eval()
    with torch.no_grad():  # trained-looking scale: every layer matters in the output
        for p in edsr_small.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    bundled = load_model(device="cpu")  # the bundled MDSR, trained weights
    cases = [("edsr-x4", edsr_small, 4)] + [(f"mdsr-x{s}", bundled, s) for s in bundled.scales]
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    gen = torch.Generator().manual_seed(1)
    for name, model, scale in cases:
        onnx_path = folder / f"{name}.onnx"
        export_model(model, onnx_path, "onnx", scale=scale, overwrite=True)
        for h, w in SIZES:
            x = torch.rand(1, 3, h, w, generator=gen) * 255
            with torch.no_grad():
                y = model(x, scale)
            stem = f"{name}-{h}x{w}"
            np.save(folder / f"{stem}.in.npy", x.numpy())
            np.save(folder / f"{stem}.out.npy", y.numpy())
            index.append({"onnx": onnx_path.name, "stem": stem, "scale": scale})
    (folder / "cases.json").write_text(json.dumps(index, indent=1))
    return index


def check(folder: Path) -> int:
    """Run every case in ``cv2.dnn``; print one line each; 0 when all are within one level."""
    import cv2

    print(f"OpenCV {cv2.__version__}, numpy {np.__version__}")
    worst = 0.0
    failed = 0
    for case in json.loads((folder / "cases.json").read_text()):
        x = np.load(folder / f"{case['stem']}.in.npy")
        want = np.load(folder / f"{case['stem']}.out.npy")
        try:
            net = cv2.dnn.readNetFromONNX(str(folder / case["onnx"]))
            net.setInput(x)
            got = net.forward()
        except cv2.error as e:
            failed += 1
            print(f"{case['stem']}: FAILS in OpenCV: {' '.join(str(e).split())[:200]}")
            continue
        if got.shape != want.shape:
            failed += 1
            print(f"{case['stem']}: output {got.shape}, PyTorch {want.shape}")
            continue
        levels = np.abs(np.clip(got, 0, 255).round() - np.clip(want, 0, 255).round()).max()
        raw = float(np.abs(got - want).max())
        worst = max(worst, float(levels))
        failed += levels > 1
        print(f"{case['stem']}: {levels:.0f} gray levels (float |diff| {raw:.2e})")
    print(f"largest difference: {worst:.0f} gray levels; {failed} case(s) failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="DIR", type=Path, help="only export the cases")
    group.add_argument("--check", metavar="DIR", type=Path, help="only run them in cv2.dnn")
    args = p.parse_args(argv)
    if args.write:
        print(f"wrote {len(write(args.write))} cases to {args.write}")
        return 0
    if args.check:
        return check(args.check)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edsr-onnx-cv-") as tmp:
        write(Path(tmp))
        return check(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
