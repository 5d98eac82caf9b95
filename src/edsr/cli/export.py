"""`edsr export`: ONNX, TorchScript or safetensors, checked before it is put in place."""

from __future__ import annotations

import argparse
from pathlib import Path

from edsr.cli.common import (
    RES_SCALE_HELP,
    input_folder,
    output_file,
    positive_int,
    res_scale,
)
from edsr.export import EXPORT_PRECISIONS, FORMATS


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, TorchScript or safetensors",
        description="Export a model for other runtimes. ONNX and TorchScript graphs take a "
        "float32 NCHW RGB image in 0..255 of any height and width and hold ONE scale each: an "
        "MDSR model with several scales needs --scale (export each scale to its own file). "
        "safetensors keeps all of an MDSR's scales unless --scale picks one. The export is "
        "checked against PyTorch on a fresh image size before it is put in place (ONNX only "
        "when onnxruntime is installed); a failed export leaves no file.",
    )
    p.add_argument(
        "model",
        help="checkpoint file (.pt, .pth or .safetensors) or a name from 'edsr weights list'",
    )
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("-o", "--output", required=True, type=output_file, help="file to write")
    p.add_argument(
        "--scale",
        type=positive_int,
        help="the scale to export (required for ONNX/TorchScript of a multi-scale MDSR)",
    )
    p.add_argument("--res-scale", type=res_scale, help=RES_SCALE_HELP)
    p.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        default="fp32",
        help="int8 (ONNX only): onnxruntime's static int8 graph, calibrated once per weights",
    )
    p.add_argument(
        "--calibrate",
        metavar="DIR",
        type=input_folder,
        help="int8: measure activation ranges on these images (the model's training images, "
        "never ones you evaluate on); stored for later int8 runs",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from edsr.errors import EdsrError
    from edsr.export import check_suffix, export_model
    from edsr.models import SRModel
    from edsr.runtimes import KINDS
    from edsr.weights import load_model
    from edsr.weights.io import file_kind

    check_suffix(args.output, args.format)  # before any model is loaded
    # a graph is told by its bytes and never loaded: TorchScript would run its code
    if args.model and Path(args.model).is_file() and file_kind(args.model) in KINDS:
        raise EdsrError(
            f"{args.model} is an exported graph already; export from the checkpoint it came from"
        )
    model = load_model(args.model, scale=args.scale, res_scale=args.res_scale, device="cpu")
    assert isinstance(model, SRModel)  # names and folders resolve to checkpoints only
    done = export_model(
        model,
        args.output,
        args.format,
        scale=args.scale,
        overwrite=args.overwrite,
        precision=args.precision,
        calibrate=args.calibrate,
    )
    if done.int8 is not None:
        check = done.int8.summary()
    elif done.max_diff is None:
        check = "not checked: onnxruntime is not installed"
    else:
        check = f"{args.precision}, max |diff| vs PyTorch fp32 {done.max_diff:.1e}"
    scales = "/".join(f"x{s}" for s in done.scales)
    print(f"wrote {done.path} ({args.format}, {scales}; {check})")
    return 0
