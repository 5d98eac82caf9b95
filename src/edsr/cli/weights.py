"""`edsr weights list|info|download|import`: the registry of known weights."""

from __future__ import annotations

import argparse

from edsr.cli.common import output_file, res_scale, seconds
from edsr.errors import EdsrError


def add_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="list, download and import pretrained weights",
        description="The registry of known weights: each name can be given to --model, which "
        "downloads it into the cache ($EDSR_HOME, else the platform cache folder), checked "
        "against the first 8 hex digits (32 bits) of its SHA-256, all the authors publish (in "
        "the file name); the bundled files are checked against their full SHA-256.",
    )
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    ls = wsub.add_parser("list", help="table of the known weights")
    ls.add_argument("--json", action="store_true", help="print every entry as JSON")
    ls.set_defaults(func=_run_weights_list)
    info = wsub.add_parser("info", help="every detail of one entry, and where its file is")
    info.add_argument("name", help="registry name, e.g. edsr-baseline-x2")
    info.set_defaults(func=_run_weights_info)
    dl = wsub.add_parser(
        "download",
        help="download weights into the cache, checked against their published SHA-256 (for "
        "the official files, its first 8 hex digits)",
    )
    dl.add_argument("names", nargs="*", metavar="NAME", help="registry names")
    dl.add_argument("--all", action="store_true", help="every entry")
    dl.add_argument("--force", action="store_true", help="download again even if cached")
    dl.add_argument(
        "--timeout", type=seconds, default=30.0, help="seconds without data before an address fails"
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
    imp.add_argument(
        "-o", "--output", required=True, type=output_file, help="output .safetensors file"
    )
    imp.add_argument("--res-scale", type=res_scale, help="residual scaling, if not the paper's")
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
    state = f"present; matches {entry.hash_check}" if is_cached(entry) else "not downloaded"
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
