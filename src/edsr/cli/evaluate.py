"""`edsr eval`: PSNR/SSIM under the paper's protocol, under torchrun too."""

from __future__ import annotations

import argparse
from pathlib import Path

from edsr.cli.common import (
    DEVICE_HELP,
    RES_SCALE_HELP,
    on_ranks,
    positive_int,
)
from edsr.errors import EdsrError
from edsr.inference.precision import PRECISIONS as PRECISION_CHOICES


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure PSNR/SSIM on benchmark sets",
        description="Evaluate a model (or bicubic) under the paper's protocol: MATLAB bicubic LR, "
        "outputs quantized to 0..255, Y channel and shave=scale for benchmarks, RGB and "
        "shave=scale+6 for DIV2K.",
    )
    p.add_argument(
        "--model",
        help="'bicubic', a checkpoint file or a name from 'edsr weights list' "
        "(default: the bundled MDSR)",
    )
    p.add_argument("--data", nargs="+", required=True, help="data set folders (HR/, DIV2K or flat)")
    p.add_argument(
        "--scale", nargs="+", type=positive_int, required=True, help="scales to evaluate"
    )
    p.add_argument(
        "--json", dest="json_path", help="write the full results (per image too) to this file"
    )
    p.add_argument("--save-images", help="write the upscaled images under this folder")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument(
        "--y-channel", dest="y_channel", action="store_true", default=None, help="measure on Y"
    )
    colour.add_argument("--rgb", dest="y_channel", action="store_false", help="measure on RGB")
    p.add_argument(
        "--shave", type=int, help="pixels to shave from each border (default: per data set)"
    )
    p.add_argument(
        "--gray-as-rgb",
        action="store_true",
        help="measure gray images as R=G=B through Y (the public PyTorch code's way; +1.32 dB)",
    )
    p.add_argument(
        "--self-ensemble",
        action="store_true",
        help="score the geometric self-ensemble (the paper's EDSR+/MDSR+ rows; 8x slower)",
    )
    p.add_argument("--res-scale", type=float, help=RES_SCALE_HELP)
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing --json/--save-images files"
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="compute precision to score (default fp32, the published protocol; int8 and "
        "auto as upscale runs them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from edsr.evaluate import BICUBIC, evaluate, format_table
    from edsr.inference.distributed import Ranks
    from edsr.io.atomic import atomic_write, check_writable
    from edsr.models import SRModel
    from edsr.weights import load_model

    if args.shave is not None and args.shave < 0:
        raise EdsrError(f"--shave must be 0 or more, got {args.shave}")

    # Under torchrun each rank scores its share of the images; rank 0 prints the table and
    # writes --json for all, and its exit status is the command's.
    def work(ranks: Ranks) -> dict:
        if args.json_path:
            ranks.from_main(lambda: check_writable(Path(args.json_path), overwrite=args.overwrite))
        model: SRModel | str = BICUBIC
        if args.model != BICUBIC:
            model = ranks.check(
                lambda: load_model(
                    args.model, res_scale=args.res_scale, device=ranks.device(args.device)
                ),
                main_first=True,  # a download into the cache happens once
            )
        return evaluate(
            model,
            args.data,
            args.scale,
            y_channel=args.y_channel,
            shave=args.shave,
            gray_as_rgb=args.gray_as_rgb,
            save_images=args.save_images,
            overwrite=args.overwrite,
            self_ensemble=args.self_ensemble,
            progress=not args.quiet,
            ranks=ranks,
            precision=args.precision,
        )

    report = on_ranks(work)
    if report is None:
        return 0
    print(format_table(report))
    if args.json_path:
        with atomic_write(args.json_path, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 1 if report["skipped"] else 0
