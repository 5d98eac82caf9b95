"""Command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from edsr import __version__
from edsr.errors import EdsrError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upscale", help="upscale images", description="Upscale image files or folders.")
    p.add_argument("inputs", nargs="+", help="image files or directories (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output directory, or a file name for one input")
    p.add_argument("--model", required=True, help="checkpoint file (.pt, .pth or .safetensors)")
    p.add_argument("--scale", type=_positive_int, help="upscaling factor (default: the model's only scale)")
    p.add_argument("--res-scale", type=float, help="override the residual scaling the checkpoint cannot store")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_upscale)


def _run_upscale(args: argparse.Namespace) -> int:
    from edsr.inference import upscale_files
    from edsr.weights import resolve_model

    model = resolve_model(args.model, scale=args.scale, res_scale=args.res_scale, device=args.device)
    written = upscale_files(
        args.inputs, args.output, model, args.scale, overwrite=args.overwrite, progress=not args.quiet
    )
    if not args.quiet:
        print(f"wrote {len(written)} image(s) to {args.output}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="measure PSNR/SSIM on benchmark sets",
        description="Evaluate a model (or bicubic) under the paper's protocol: MATLAB bicubic LR, "
        "outputs quantized to 0..255, Y channel and shave=scale for benchmarks, RGB and "
        "shave=scale+6 for DIV2K.",
    )
    p.add_argument("--model", required=True, help="'bicubic' or a checkpoint file")
    p.add_argument("--data", nargs="+", required=True, help="data set folders (HR/, DIV2K or flat)")
    p.add_argument("--scale", nargs="+", type=_positive_int, required=True, help="scales to evaluate")
    p.add_argument("--json", dest="json_path", help="write the full results (per image too) to this file")
    p.add_argument("--save-images", help="write the upscaled images under this folder")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument("--y-channel", dest="y_channel", action="store_true", default=None, help="measure on Y")
    colour.add_argument("--rgb", dest="y_channel", action="store_false", help="measure on RGB")
    p.add_argument("--shave", type=int, help="pixels to shave from each border (default: per data set)")
    p.add_argument(
        "--gray-as-rgb",
        action="store_true",
        help="measure gray images as R=G=B through Y (the public PyTorch code's way; +1.32 dB)",
    )
    p.add_argument("--res-scale", type=float, help="override the residual scaling the checkpoint cannot store")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json/--save-images files")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from edsr.evaluate import BICUBIC, evaluate, format_table
    from edsr.fileio import atomic_write, check_writable
    from edsr.weights import resolve_model

    if args.shave is not None and args.shave < 0:
        raise EdsrError(f"--shave must be 0 or more, got {args.shave}")
    if args.json_path:
        check_writable(Path(args.json_path), overwrite=args.overwrite)
    model = BICUBIC if args.model == BICUBIC else resolve_model(args.model, res_scale=args.res_scale, device=args.device)
    report = evaluate(
        model,
        args.data,
        args.scale,
        y_channel=args.y_channel,
        shave=args.shave,
        gray_as_rgb=args.gray_as_rgb,
        save_images=args.save_images,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    print(format_table(report))
    if args.json_path:
        with atomic_write(args.json_path, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edsr", description="EDSR and MDSR super-resolution: upscale, evaluate, train."
    )
    parser.add_argument("--version", action="version", version=f"edsr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_upscale(sub)
    _add_eval(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EdsrError as e:
        print(f"edsr: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("edsr: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("edsr: error: out of memory; try a smaller image or --device cpu", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("EDSR_DEBUG"):
            raise
        print(
            f"edsr: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(run with EDSR_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
