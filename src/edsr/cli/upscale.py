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
    import dataclasses

    from edsr.inference import BatchResult, Model, upscale_files
    from edsr.inference.distributed import Ranks
    from edsr.inference.files import plan_outputs, writes_folder
    from edsr.inference.job import FolderJob, check_continues, read_job
    from edsr.io.datasets import find_images
    from edsr.route import Router
    from edsr.weights import load_model, model_source

    # What can be refused without a model is refused before any download or load (seconds):
    # a missing input, another job's folder, an existing output.
    find_images(args.inputs)
    # The options given, by setting; one left out (argparse's None, --ensemble's False) is
    # absent, so a folder's recorded job fills it in (edsr.inference.job says why).
    options = {
        "model": args.model,
        "scale": args.scale,
        "precision": args.precision,
        "ensemble": args.ensemble or None,
        "res_scale": args.res_scale,
        "degradation": args.degradation,
    }
    given = {name: value for name, value in options.items() if value is not None}
    folder = writes_folder(args.inputs, args.output)
    recorded = read_job(args.output) if folder and not args.overwrite else None
    job = FolderJob.resume(recorded, given)
    route = job.model is None and job.res_scale is None  # each input gets the route's pick
    source = model_source(job.model)  # the route: its default model, whose scales it runs
    if not route:
        # a folder's record names the model with its SHA-256 (a file's is hashed: cheap beside
        # loading it), so a checkpoint replaced under the same name is not taken for it
        job = dataclasses.replace(job, model=source.name, sha256=source.sha256 if folder else None)
    if recorded is not None:
        check_continues(recorded, job, args.output)
    if not route and job.degradation is not None:
        raise EdsrError("--degradation picks the default route's model; leave it out with --model")
    if job.scale is None and source.scales:  # a file's default scale is known once it is loaded
        job = dataclasses.replace(job, scale=defaults.default_scale(source.scales))
    if job.scale is not None:
        plan = plan_outputs(
            args.inputs,
            args.output,
            job.scale,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
        )
        if recorded is not None and not args.quiet:
            print(
                f"edsr: continuing the job recorded in {args.output} ({job.describe()}); "
                f"{len(plan.skipped)} of {plan.files} done",
                file=sys.stderr,
            )

    # Under torchrun each rank upscales its share; rank 0 prints for all and its exit status
    # is the command's (torchrun fails the command when one rank does).
    def work(ranks: Ranks) -> BatchResult:
        model: Model | Router
        if route:
            model = Router(
                device=ranks.device(args.device), scale=job.scale, degradation=job.degradation
            )
            ranks.check(lambda: model.default, main_first=True)
            first = model.default
        else:
            model = ranks.check(
                lambda: load_model(
                    job.model,
                    scale=job.scale,
                    res_scale=job.res_scale,
                    device=ranks.device(args.device),
                    run_torchscript_code=args.run_torchscript_code,
                ),
                main_first=True,  # a download into the cache happens once
            )
            first = model
        if args.verbose and ranks.main:
            print(explain_precision(first, job.precision, ranks.device(args.device)))
        return upscale_files(
            args.inputs,
            args.output,
            model,
            job.scale,
            overwrite=args.overwrite,
            skip_existing=args.skip_existing,
            progress=not args.quiet,
            tile=args.tile,
            max_memory=args.max_memory,
            ensemble=job.ensemble,
            precision=job.precision,
            compile=args.compile,
            frames=args.frames,
            say=say_to_stderr(args.quiet),
            ranks=ranks,
            job=job if folder else None,
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
