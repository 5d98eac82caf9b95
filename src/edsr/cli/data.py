"""`edsr data list|download` and `edsr downscale`: data sets and their LR images."""

from __future__ import annotations

import argparse

from edsr.cli.common import (
    positive_int,
)


def add_data(sub: argparse._SubParsersAction) -> None:
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


def add_downscale(sub: argparse._SubParsersAction) -> None:
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
        "--jobs", type=positive_int, default=None, help="processes (default: the core count)"
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
