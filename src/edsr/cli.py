"""Command line: parses arguments and calls the library; nothing else lives here."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from edsr.errors import EdsrError
from edsr.export import EXPORT_PRECISIONS, FORMATS
from edsr.inference.precision import PRECISIONS as PRECISION_CHOICES
from edsr.inference.precision import TRAINING_PRECISIONS, explain_precision
from edsr.version import __version__


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, with where to look, instead of the full usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


_MODEL_HELP = (
    "checkpoint file (.pt, .pth or .safetensors) or a name from 'edsr weights list' "
    "(default: the bundled MDSR, x2/x3/x4)"
)
_RES_SCALE_HELP = "override the residual scaling the checkpoint cannot store"
_DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"


def _add_upscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upscale", help="upscale images", description="Upscale image files, folders or a video."
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files or directories (searched recursively), or one video file",
    )
    p.add_argument(
        "-o", "--output", required=True, help="output directory, or a file name for one input"
    )
    p.add_argument("--model", help=_MODEL_HELP)
    p.add_argument(
        "--scale",
        type=_positive_int,
        help="upscaling factor (default: the model's only scale, else x4)",
    )
    p.add_argument("--res-scale", type=float, help=_RES_SCALE_HELP)
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument(
        "--skip-existing",
        action="store_true",
        help="leave inputs whose output exists alone (resume a folder where it stopped)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "-v", "--verbose", action="store_true", help="print the precision path chosen, and why"
    )
    p.add_argument(
        "--tile",
        type=_positive_int,
        help="tiles of N LR pixels (incl. context); default: as large as --max-memory allows",
    )
    p.add_argument(
        "--max-memory",
        metavar="SIZE",
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
        default="auto",
        help="compute precision (default auto: the fastest path that keeps the quality on "
        "this device: int8 on CPUs with VNNI/AMX for models measured to keep it, else bf16 on "
        "GPUs and CPUs with AMX or AVX-512 BF16, else fp32; -v prints the choice)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="use torch.compile: about a minute to start; for GPUs and long runs",
    )
    p.add_argument(
        "--frames", type=_positive_int, help="videos: upscale only the first N frames (a preview)"
    )
    p.set_defaults(func=_run_upscale)


def _run_upscale(args: argparse.Namespace) -> int:
    from edsr.inference import upscale_files
    from edsr.inference.distributed import process_group
    from edsr.weights import load_model

    # Under torchrun each rank upscales its share; rank 0 prints for all and its exit status
    # is the command's (torchrun fails the command when one rank does).
    with process_group() as ranks:
        try:
            model = ranks.check(
                lambda: load_model(
                    args.model,
                    scale=args.scale,
                    res_scale=args.res_scale,
                    device=ranks.device(args.device),
                ),
                main_first=True,  # a download into the cache happens once
            )
            if args.verbose and ranks.main:
                print(explain_precision(model, args.precision, ranks.device(args.device)))
            result = upscale_files(
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
                say=_say(args.quiet),
                ranks=ranks,
            )
        except EdsrError:
            if ranks.main:
                raise
            return 0
        if not ranks.main:
            return 0
    for path, reason in result.failed:
        where = "" if str(path) in reason else f"{path}: "
        print(f"edsr: skipped {where}{reason}", file=sys.stderr)
    if not args.quiet or not result.ok:
        print(result.summary(args.output))
    return 0 if result.ok else 1


def _say(quiet: bool) -> Callable[[str], None]:
    """Where the library's one-line notes go: stderr, unless --quiet."""

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr)

    return say


def _add_eval(sub: argparse._SubParsersAction) -> None:
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
        "--scale", nargs="+", type=_positive_int, required=True, help="scales to evaluate"
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
    p.add_argument("--res-scale", type=float, help=_RES_SCALE_HELP)
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
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
    from edsr.inference.distributed import process_group
    from edsr.io.atomic import atomic_write, check_writable
    from edsr.models import SRModel
    from edsr.weights import load_model

    if args.shave is not None and args.shave < 0:
        raise EdsrError(f"--shave must be 0 or more, got {args.shave}")
    # Under torchrun each rank scores its share of the images; rank 0 prints the table and
    # writes --json for all, and its exit status is the command's.
    with process_group() as ranks:
        try:
            if args.json_path:
                ranks.from_main(
                    lambda: check_writable(Path(args.json_path), overwrite=args.overwrite)
                )
            model: SRModel | str = BICUBIC
            if args.model != BICUBIC:
                model = ranks.check(
                    lambda: load_model(
                        args.model, res_scale=args.res_scale, device=ranks.device(args.device)
                    ),
                    main_first=True,  # a download into the cache happens once
                )
            report = evaluate(
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
        except EdsrError:
            if ranks.main:
                raise
            return 0
        if not ranks.main:
            return 0
    print(format_table(report))
    if args.json_path:
        with atomic_write(args.json_path, overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_path}")
    return 1 if report["skipped"] else 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from edsr.models import PRESETS
    from edsr.training.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train EDSR or MDSR with the paper's recipe",
        description="Train with the paper's recipe (L1, Adam 1e-4 halved every 2e5 updates, "
        "48x48 LR patches, batch 16). Values come from the preset's recipe, then --config, "
        "then flags. Under torchrun every process trains one shard of each batch.",
    )
    d = TrainConfig()  # the defaults shown are the ones the run gets (the paper's recipe)
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help=f"model preset (default {d.preset}; each brings the paper's recipe)",
    )
    p.add_argument(
        "--scale",
        nargs="+",
        type=_positive_int,
        dest="scales",
        help="scale(s); MDSR takes several (default: 2 for EDSR, 2 3 4 for MDSR)",
    )
    p.add_argument(
        "--train", nargs="+", help="training folders (DIV2K, HR/ benchmark layout, or flat)"
    )
    p.add_argument("--val", help="validation set folder (PSNR/SSIM every --val-every iterations)")
    p.add_argument("--out", help="run directory (default runs/<preset>-x<scale>)")
    p.add_argument("--iters", type=_positive_int, help=f"total iterations (default {d.iters})")
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help=f"global batch size, split over processes (default {d.batch_size})",
    )
    p.add_argument(
        "--patch-size",
        type=_positive_int,
        help=f"LR patch size; HR = patch x scale (default {d.patch_size})",
    )
    p.add_argument("--lr", type=float, help=f"initial learning rate (default {d.lr:g})")
    p.add_argument(
        "--lr-decay-every",
        type=_positive_int,
        help=f"halve the learning rate every N updates (default {d.lr_decay_every})",
    )
    p.add_argument(
        "--precision",
        choices=TRAINING_PRECISIONS,
        help=f"compute precision (default {d.precision})",
    )
    p.add_argument(
        "--init-from",
        help="trained model to start from, EDSR or MDSR: every matching layer is copied, "
        "an upsampler only from the same scale",
    )
    p.add_argument(
        "--val-every",
        type=_positive_int,
        help=f"validate every N iterations (default {d.val_every})",
    )
    p.add_argument(
        "--checkpoint-every",
        type=_positive_int,
        help=f"save a checkpoint every N iterations (default {d.checkpoint_every})",
    )
    p.add_argument(
        "--log-every",
        type=_positive_int,
        help=f"log loss every N iterations (default {d.log_every})",
    )
    p.add_argument(
        "--workers",
        type=int,
        help=f"data loader processes (default {d.workers}: patches are cheap)",
    )
    p.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")
    p.add_argument(
        "--on-bad-image",
        choices=["skip", "fail"],
        help=f"what to do with unreadable training images (default {d.on_bad_image})",
    )
    p.add_argument("--cache-dir", help="where decoded images are cached (default: $EDSR_HOME/data)")
    p.add_argument("--config", help="TOML file with config keys (see a run's config.toml)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly where it stopped")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from edsr.training.config import resolve
    from edsr.training.loop import train

    if args.resume:
        train(resume=args.resume, iters=args.iters, progress=not args.quiet)
        return 0
    flags = {
        "train": args.train,
        "val": args.val,
        "out": args.out,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "patch_size": args.patch_size,
        "lr": args.lr,
        "lr_decay_every": args.lr_decay_every,
        "precision": args.precision,
        "init_from": args.init_from,
        "val_every": args.val_every,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "workers": args.workers,
        "seed": args.seed,
        "on_bad_image": args.on_bad_image,
        "cache_dir": args.cache_dir,
    }
    cfg = resolve(args.preset, args.scales, args.config, flags)
    train(cfg, overwrite=args.overwrite, progress=not args.quiet)
    return 0


def _add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list, download and import pretrained weights",
        description="The registry of known weights: each name can be given to --model, which "
        "downloads it (hash-checked) into the cache ($EDSR_HOME, else the platform cache folder).",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    ls = wsub.add_parser("list", help="table of the known weights")
    ls.add_argument("--json", action="store_true", help="print every entry as JSON")
    ls.set_defaults(func=_run_weights_list)
    info = wsub.add_parser("info", help="every detail of one entry, and where its file is")
    info.add_argument("name", help="registry name, e.g. edsr-baseline-x2")
    info.set_defaults(func=_run_weights_info)
    dl = wsub.add_parser("download", help="download and verify weights into the cache")
    dl.add_argument("names", nargs="*", metavar="NAME", help="registry names")
    dl.add_argument("--all", action="store_true", help="every entry")
    dl.add_argument("--force", action="store_true", help="download again even if cached")
    dl.add_argument(
        "--timeout", type=float, default=30.0, help="seconds without data before an address fails"
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(func=_run_weights_download)
    imp = wsub.add_parser(
        "import",
        help="convert a checkpoint to this project's safetensors",
        description="Convert any accepted checkpoint (official .pt, wrapped dicts, BasicSR, "
        "safetensors) or a registry name to self-describing safetensors.",
    )
    imp.add_argument("file", help="checkpoint file or registry name")
    imp.add_argument("-o", "--output", required=True, help="output .safetensors file")
    imp.add_argument("--res-scale", type=float, help="residual scaling, if not the paper's")
    imp.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_run_weights_import)


def _run_weights_list(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from edsr.weights import format_table, is_cached, list_entries

    entries = list_entries()
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    local = {e.name: ("bundled" if e.bundled else "cached") for e in entries if is_cached(e)}
    print(format_table(entries, local=local))
    return 0


def _run_weights_info(args: argparse.Namespace) -> int:
    from edsr.weights import describe, get_entry, is_cached, weights_path

    entry = get_entry(args.name)
    print(describe(entry))
    state = "present and verified" if is_cached(entry) else "not downloaded"
    print(f"{'local file:':<13}{weights_path(entry)} ({state})")
    return 0


def _run_weights_download(args: argparse.Namespace) -> int:
    from edsr.weights import download_weights, get_entry, list_entries

    if args.all == bool(args.names):
        raise EdsrError("give weights names or --all (see 'edsr weights list')")
    entries = list_entries() if args.all else [get_entry(n) for n in args.names]
    for entry in entries:
        path = download_weights(
            entry, force=args.force, progress=not args.quiet, timeout=args.timeout
        )
        print(f"{entry.name}: {path}")
    return 0


def _run_weights_import(args: argparse.Namespace) -> int:
    import torch

    from edsr.weights import import_checkpoint

    path, config = import_checkpoint(
        args.file,
        args.output,
        overwrite=args.overwrite,
        res_scale=args.res_scale,
        dtype=torch.float16 if args.fp16 else None,
        progress=not args.quiet,
    )
    scales = "/".join(f"x{s}" for s in config.get("scales", [config.get("scale")]))
    res = f", res_scale {config['res_scale']}" if "res_scale" in config else ""
    arch = f"{config['arch'].upper()} {config['n_resblocks']}x{config['n_feats']}"
    print(f"wrote {path} ({arch}, {scales}{res})")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.add_argument(
        "--scale",
        type=_positive_int,
        help="the scale to export (required for ONNX/TorchScript of a multi-scale MDSR)",
    )
    p.add_argument("--res-scale", type=float, help=_RES_SCALE_HELP)
    p.add_argument(
        "--precision",
        choices=EXPORT_PRECISIONS,
        default="fp32",
        help="int8 (ONNX only): onnxruntime's static int8 graph, calibrated once per weights",
    )
    p.add_argument(
        "--calibrate",
        metavar="DIR",
        help="int8: measure activation ranges on these images (the model's training images, "
        "never ones you evaluate on); stored for later int8 runs",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from edsr.export import export_model
    from edsr.weights import load_model

    model = load_model(args.model, scale=args.scale, res_scale=args.res_scale, device="cpu")
    done = export_model(
        model,
        args.output,
        args.format,
        scale=args.scale,
        overwrite=args.overwrite,
        precision=args.precision,
        calibrate=args.calibrate,
    )
    if done.max_diff is None:
        check = "not checked: onnxruntime is not installed"
    else:
        check = f"{args.precision}, max |diff| vs PyTorch fp32 {done.max_diff:.1e}"
    scales = "/".join(f"x{s}" for s in done.scales)
    print(f"wrote {done.path} ({args.format}, {scales}; {check})")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="upscale the bundled samples and compare with bicubic",
        description="Shrink the bundled sample images with MATLAB bicubic, upscale them with "
        "bicubic and with the model, print PSNR (Y, shave = scale) and write a side-by-side "
        "comparison PNG (bicubic, model, ground truth, with a zoomed crop) for each. A re-run "
        "replaces the comparison PNGs it wrote before.",
    )
    p.add_argument("--model", help=_MODEL_HELP)
    p.add_argument("--scale", type=_positive_int, default=4, help="upscaling factor (default 4)")
    p.add_argument("--samples", help="folder of HR images to use instead of the bundled samples")
    p.add_argument(
        "-o",
        "--output",
        default="edsr-demo",
        help="folder for the comparison PNGs (default edsr-demo)",
    )
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from edsr.demo import SAMPLES, format_results, run_demo
    from edsr.weights import default_model, load_model

    spec = args.model or default_model()
    model = load_model(spec, device=args.device or "auto")
    name = Path(spec).stem if Path(spec).is_file() else spec
    results = run_demo(
        model, args.output, scale=args.scale, samples=args.samples or SAMPLES, model_name=name
    )
    print(f"model: {name}; LR made with MATLAB bicubic; PSNR on Y, shave {args.scale}")
    print(format_results(results))
    mean = sum(r.gain for r in results) / len(results)
    print(
        f"mean gain over bicubic: {mean:+.2f} dB; "
        f"wrote {len(results)} comparison PNG(s) to {args.output}"
    )
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="web page and HTTP API for upscaling",
        description="Serve a web page (drag and drop, before/after slider) and an HTTP API "
        "(POST /v1/upscale, GET /v1/models, GET /healthz). Models are loaded once and shared; "
        "at most --workers images are upscaled at once and --queue more wait, the rest get 503.",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help="checkpoint file or weights name; repeat or comma-separate to serve several "
        "(default: the bundled model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload (default 20)")
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=4_000_000,
        help="largest input image (default 4000000)",
    )
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="images upscaled at once (default 1)"
    )
    p.add_argument(
        "--queue", type=int, default=4, help="requests that may wait for a worker (default 4)"
    )
    p.add_argument(
        "--timeout", type=float, default=300.0, help="seconds a request may take (default 300)"
    )
    p.add_argument(
        "--max-memory", help="tile working memory per worker, e.g. 2GiB (default: automatic)"
    )
    p.add_argument("--device", default=None, help=_DEVICE_HELP)
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help="prepare the models for this precision (as upscale's --precision; default: "
        "the plain fp32 model)",
    )
    p.add_argument(
        "--tmp-dir", help="where the server's temporary folder goes (default: system temp)"
    )
    p.add_argument("--quiet", action="store_true", help="no access log")
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from edsr.serve import ServeConfig, serve
    except ImportError as e:
        raise EdsrError(
            f"edsr serve needs the 'serve' extra: pip install 'edsr[serve]' (missing: {e.name})"
        ) from None
    if not 0 <= args.port <= 65535:
        raise EdsrError(f"--port must be 0 to 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise EdsrError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    config = ServeConfig(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue=args.queue,
        timeout=args.timeout,
        max_memory=args.max_memory,
        tmp_dir=args.tmp_dir,
    )
    serve(
        args.model,
        host=args.host,
        port=args.port,
        config=config,
        device=args.device,
        access_log=not args.quiet,
        precision=args.precision,
    )
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="list and download DIV2K, Flickr2K and the benchmark sets",
        description="Known data sets: downloaded (resumable, checksum-verified) and extracted "
        "into the layouts 'edsr train' and 'edsr eval' take, under $EDSR_HOME/data by default.",
    )
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", help="the known data sets and which are on disk")
    ls.add_argument("--root", help="data folder (default: $EDSR_HOME/data)")
    ls.set_defaults(func=_run_data_list)
    dl = dsub.add_parser("download", help="download, verify and extract data sets")
    dl.add_argument("names", nargs="+", metavar="NAME", help="names from 'edsr data list'")
    dl.add_argument("--root", help="data folder (default: $EDSR_HOME/data)")
    dl.add_argument(
        "--keep-archives", action="store_true", help="keep the zip/tar files after extracting"
    )
    dl.add_argument(
        "--timeout", type=float, default=30.0, help="seconds without data before an address fails"
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(func=_run_data_download)


def _run_data_list(args: argparse.Namespace) -> int:
    from edsr.datasets import DATASETS
    from edsr.datasets.table import format_table

    print(format_table(list(DATASETS.values()), args.root))
    return 0


def _run_data_download(args: argparse.Namespace) -> int:
    from edsr.datasets import download_dataset, get_dataset

    entries = [get_dataset(n) for n in args.names]  # every name checked before any download
    for entry in entries:
        folder = download_dataset(
            entry,
            args.root,
            progress=not args.quiet,
            keep_archives=args.keep_archives,
            timeout=args.timeout,
        )
        print(f"{entry.name}: {folder}")
    return 0


def _add_downscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "downscale",
        help="make bicubic LR images (MATLAB-exact) in the benchmark layout",
        description="Write OUT/HR/NAME.png and OUT/LR_bicubic/X{s}/NAMEx{s}.png from a folder "
        "of HR images, with the LR making 'edsr eval' and 'edsr train' use; images already "
        "done from the same HR file are skipped.",
    )
    p.add_argument("hr_dir", metavar="HR_DIR", help="folder of HR images (or a benchmark folder)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.add_argument(
        "--scale", dest="scales", type=int, nargs="+", default=[2, 3, 4], help="default: 2 3 4"
    )
    p.add_argument(
        "--jobs", type=_positive_int, default=None, help="processes (default: the core count)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_downscale)


def _run_downscale(args: argparse.Namespace) -> int:
    from edsr.datasets import downscale_folder

    report = downscale_folder(
        args.hr_dir, args.output, args.scales, jobs=args.jobs, progress=not args.quiet
    )
    summary = f"wrote {report.written} images; {report.skipped} already done"
    if report.failed:
        print(f"{summary}; skipped {len(report.failed)} unreadable: {report.failed[0]}")
        return 1
    print(f"{summary} -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edsr", description="EDSR and MDSR super-resolution: upscale, evaluate, train."
    )
    parser.add_argument("--version", action="version", version=f"edsr {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    _add_demo(sub)
    _add_upscale(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_weights(sub)
    _add_train(sub)
    _add_serve(sub)
    _add_data(sub)
    _add_downscale(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, SLURM) taken as Ctrl-C: training checkpoints, atomic
    writes remove their temporaries, and the command exits as a terminated process does."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"edsr: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with warnings.catch_warnings():
            # A user reads one line per warning, not Python's file:line report of it.
            warnings.showwarning = _show_warning
            return int(args.func(args) or 0)
    except EdsrError as e:
        print(f"edsr: error: {e}", file=sys.stderr)
        return 1
    except _Terminated:
        print("edsr: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("edsr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`edsr weights list | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
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
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
