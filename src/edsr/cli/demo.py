"""`edsr demo`: the bundled model on the bundled samples against bicubic."""

from __future__ import annotations

import argparse
from pathlib import Path

from edsr import defaults
from edsr.cli.common import (
    DEVICE_HELP,
    MODEL_HELP,
    add_run_code,
    device,
    input_folder,
    output_folder,
    positive_int,
)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="upscale the bundled samples and compare with bicubic",
        description="Shrink the bundled sample images with MATLAB bicubic, upscale them with "
        "bicubic and with the model, print PSNR (Y, shave = scale) and write a side-by-side "
        "comparison PNG (bicubic, model, ground truth, with a zoomed crop) for each. A re-run "
        "replaces the comparison PNGs it wrote before.",
    )
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument(
        "--scale",
        type=positive_int,
        help=f"upscaling factor (default: the model's only scale, else x{defaults.SCALE})",
    )
    p.add_argument(
        "--samples",
        type=input_folder,
        help="folder of HR images to use instead of the bundled samples",
    )
    p.add_argument(
        "-o",
        "--output",
        default="edsr-demo",
        type=output_folder,
        help="folder for the comparison PNGs (default edsr-demo)",
    )
    p.add_argument("--device", default=None, type=device, help=DEVICE_HELP)
    add_run_code(p)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from edsr.demo import SAMPLES, format_jpeg_case, format_results, run_demo, run_jpeg_case
    from edsr.route import Router
    from edsr.weights import default_model, load_model

    spec = args.model or default_model()
    model = load_model(spec, device=args.device, run_torchscript_code=args.run_torchscript_code)
    name = Path(spec).stem if Path(spec).is_file() else spec
    results = run_demo(
        model, args.output, scale=args.scale, samples=args.samples or SAMPLES, model_name=name
    )
    print(f"model: {name}; LR made with MATLAB bicubic; PSNR on Y, shave {results[0].scale}")
    print(format_results(results))
    mean = sum(r.gain for r in results) / len(results)
    case = None
    router = Router(device=args.device, scale=results[0].scale, progress=False)
    if results[0].scale in router.scales:
        case = run_jpeg_case(
            model,
            args.output,
            scale=results[0].scale,
            samples=args.samples or SAMPLES,
            model_name=name,
            router=router,
        )
    if case is not None:
        print(format_jpeg_case(case, name))
    print(
        f"mean gain over bicubic: {mean:+.2f} dB; "
        f"wrote {len(results) + (case is not None)} comparison PNG(s) to {args.output}"
    )
    return 0
