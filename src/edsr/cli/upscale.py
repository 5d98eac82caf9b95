"""`edsr upscale`: image files, folders or one video, under torchrun too."""

from __future__ import annotations

import argparse
import sys

from edsr import defaults
from edsr.cli.common import (
    DEVICE_HELP,
    MODEL_HELP,
    RES_SCALE_HELP,
    add_run_code,
    device,
    memory_size,
    on_ranks,
    output_path,
    positive_int,
    res_scale,
    say_to_stderr,
)
from edsr.errors import EdsrError
from edsr.inference.precision import PRECISIONS as PRECISION_CHOICES
from edsr.inference.precision import explain_precision


def add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale", help="upscale images", description="Upscale image files, folders or a video."
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files or directories (searched recursively), or one video file",
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        type=output_path,
        help="output directory, or a file name for one input",
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--scale",
        type=positive_int,
        help=f"upscaling factor (default: the model's only scale, else x{defaults.SCALE})",
    )
    p.add_argument("--res-scale", type=res_scale, help=RES_SCALE_HELP)
    p.add_argument("--device", default=None, type=device, help=DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave inputs whose output exists alone (resume a folder where it stopped); "
        "an input modified since its output was written is done again",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print the precision path chosen, and why"
    )
    p.add_argument(
        "--tile",
        type=positive_int,
        help="tiles of N LR pixels (incl. context); default: as large as --max-memory allows",
    )
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
        type=memory_size,
        help="memory for the model's work, e.g. 2GB, 512MiB "
        "(default: half the free RAM, 80%% of a GPU's)",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="self-ensemble (EDSR+/MDSR+): mean of 8 flips/rotations, 8x slower",
    )
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help=f"compute precision (default {defaults.PRECISION}; auto: the fastest path that "
        "keeps the quality on this device: int8 on CPUs with VNNI/AMX for models measured to "
        "keep it, else bf16 on GPUs and CPUs with AMX or AVX-512 BF16, else fp32; -v prints "
        "the choice)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="use torch.compile: about a minute to start; for GPUs and long runs",
    )
    p.add_argument(
        "--frames", type=positive_int, help="videos: upscale only the first N frames (a preview)"
    )
    p.add_argument(
        "--degradation",
        choices=["jpeg", "clean"],
        help="what the inputs are, for the default route (no --model): jpeg for a PNG that "
        "holds a JPEG's pixels (a screenshot, a converted file), clean for a JPEG to treat as "
        "lossless (default: each file's type and JPEG quality decide)",
    )
    add_run_code(p)
    p.set_defaults(func=_run_upscale)


def _run_upscale(args: argparse.Namespace) -> int:
    from edsr.inference import BatchResult, Model, upscale_files
    from edsr.inference.distributed import Ranks
    from edsr.io.datasets import find_images
    from edsr.route import Router
    from edsr.weights import load_model

    find_images(args.inputs)  # a missing input is said before any download or model load

    # Under torchrun each rank upscales its share; rank 0 prints for all and its exit status
    # is the command's (torchrun fails the command when one rank does).
    def work(ranks: Ranks) -> BatchResult:
        model: Model | Router
        if args.model is None and args.res_scale is None:
            # no model named: each input gets the one the default route picks for it
            model = Router(
                device=ranks.device(args.device), scale=args.scale, degradation=args.degradation
            )
            ranks.check(lambda: model.default, main_first=True)
            first = model.default
        else:
            if args.degradation is not None:
                raise EdsrError(
                    "--degradation picks the default route's model; leave it out with --model"
                )
            model = ranks.check(
                lambda: load_model(
                    args.model,
                    scale=args.scale,
                    res_scale=args.res_scale,
                    device=ranks.device(args.device),
                    run_torchscript_code=args.run_torchscript_code,
                ),
                main_first=True,  # a download into the cache happens once
            )
            first = model
        if args.verbose and ranks.main:
            print(explain_precision(first, args.precision, ranks.device(args.device)))
        return upscale_files(
            args.inputs,
            args.output,
            model,
            args.scale,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
            progress=not args.quiet,
            tile=args.tile,
            max_memory=args.max_memory,
            ensemble=args.ensemble,
            precision=args.precision,
            compile=args.compile,
            frames=args.frames,
            say=say_to_stderr(args.quiet),
            ranks=ranks,
        )

    result = on_ranks(work)
    if result is None:
        return 0
    for path, reason in result.failed:
        where = "" if str(path) in reason else f"{path}: "
        print(f"edsr: skipped {where}{reason}", file=sys.stderr)
    if args.verbose:
        for path, why in result.chosen:
            print(f"{path}: {why}")
    if not args.quiet or not result.ok:
        print(result.summary(args.output))
    return 0 if result.ok else 1
