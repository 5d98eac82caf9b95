"""`edsr eval`: PSNR/SSIM under the paper's protocol, under torchrun too."""

from __future__ import annotations

import argparse
from pathlib import Path

from edsr import defaults
from edsr.cli.common import (
    DEVICE_HELP,
    RES_SCALE_HELP,
    add_run_code,
    degradation,
    device,
    on_ranks,
    output_file,
    output_folder,
    positive_int,
    res_scale,
    whole_number,
)
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
    p.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="data set folders (HR/, DIV2K or flat), or names from 'edsr data list' found in "
        "the data cache (Set5: ./Set5, else the copy 'edsr data download Set5' made)",
    )
    p.add_argument(
        "--scale",
        nargs="+",
        type=positive_int,
        help="scales to evaluate (default: every scale the model has; bicubic: 2 3 4)",
    )
    p.add_argument(
        "--json",
        dest="json_path",
        type=output_file,
        help="write the full results (per image too) to this file",
    )
    p.add_argument(
        "--save-images", type=output_folder, help="write the upscaled images under this folder"
    )
    colour = p.add_mutually_exclusive_group()
    colour.add_argument(
        "--y-channel", dest="y_channel", action="store_true", default=None, help="measure on Y"
    )
    colour.add_argument("--rgb", dest="y_channel", action="store_false", help="measure on RGB")
    p.add_argument(
        "--shave",
        type=whole_number(0, 1000),
        help="pixels to shave from each border (default: per data set)",
    )
    p.add_argument(
        "--gray-as-rgb",
        action="store_true",
        help="measure gray images as R=G=B through Y (the public PyTorch code's way; +1.32 dB)",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="score the geometric self-ensemble (the paper's EDSR+/MDSR+ rows; 8x slower)",
    )
    # the name this option had before upscale, eval, Python and the server shared one
    p.add_argument("--self-ensemble", dest="ensemble", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--res-scale", type=res_scale, help=RES_SCALE_HELP)
    p.add_argument("--device", default=None, type=device, help=DEVICE_HELP)
    p.add_argument(
        "--overwrite", action="store_true", help="replace existing --json/--save-images files"
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help=f"compute precision to score (default {defaults.SCORING_PRECISION}, the published "
        "protocol; int8 and auto as upscale runs them)",
    )
    p.add_argument(
        "--degrade",
        type=degradation,
        metavar="SPEC",
        help="score on LR degraded this way, e.g. jpeg:75 (the LR saved by Pillow as JPEG at "
        "quality 75, 4:2:0 chroma), jpeg444:90, or a range jpeg:40-95 drawn per image from its "
        "name (default clean: the paper's lossless LR)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_code(p)
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from edsr.evaluate import (
        BICUBIC,
        check_saved_images,
        discover,
        evaluate,
        format_table,
        saved_images,
    )
    from edsr.inference import describe
    from edsr.inference.distributed import Ranks
    from edsr.io.atomic import atomic_write, check_writable
    from edsr.models import SRModel
    from edsr.runtimes import ExportedModel
    from edsr.weights import default_model, get_entry, load_model, model_source

    # What can be refused without a model is refused before any download or load: a missing
    # or empty data set, an unknown model name, an existing --json or --save-images file.
    skip = saved_images(args.save_images) if args.save_images is not None else None
    sets = [discover(d, skip=skip) for d in args.data]
    if args.json_path:
        check_writable(Path(args.json_path), overwrite=args.overwrite)
    # bicubic is scored where the default model is, for the table beside it; a file's scales
    # are known once it is loaded (evaluate checks its --save-images files then, still first)
    known = args.scale or (
        get_entry(default_model()).scales
        if args.model == BICUBIC
        else model_source(args.model).scales
    )
    if known:
        check_saved_images(args.save_images, sets, known, overwrite=args.overwrite)

    # Under torchrun each rank scores its share of the images; rank 0 prints the table and
    # writes --json for all, and its exit status is the command's.
    def work(ranks: Ranks) -> dict:
        model: SRModel | ExportedModel | str = BICUBIC
        if args.model != BICUBIC:
            model = ranks.check(
                lambda: load_model(
                    args.model,
                    res_scale=args.res_scale,
                    device=ranks.device(args.device),
                    run_torchscript_code=args.run_torchscript_code,
                ),
                main_first=True,  # a download into the cache happens once
            )
        scales = args.scale or known
        if not scales:
            assert not isinstance(model, str)  # bicubic's scales are known
            scales = describe(model).scales
        return evaluate(
            model,
            args.data,
            scales,
            y_channel=args.y_channel,
            shave=args.shave,
            gray_as_rgb=args.gray_as_rgb,
            save_images=args.save_images,
            overwrite=args.overwrite,
            ensemble=args.ensemble,
            progress=not args.quiet,
            ranks=ranks,
            precision=args.precision,
            degrade=args.degrade,
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
