"""`edsr data list|download` and `edsr downscale`: data sets and their LR images."""

from __future__ import annotations

import argparse
import sys

from edsr.cli.common import (
    input_folder,
    output_folder,
    positive_int,
    processes,
    seconds,
    whole_number,
)


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="list and download DIV2K, Flickr2K, T91, BSD200 and the benchmark sets",
        description="Known data sets: downloaded (resumable, checksum-verified; T91 and BSD200 "
        "image by image, each checked by a hash of its decoded pixels) and put into the "
        "layouts 'edsr train' and 'edsr eval' take, under $EDSR_HOME/data by default.",
    )
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    ls = dsub.add_parser("list", help="the known data sets and which are on disk")
    ls.add_argument("--root", type=output_folder, help="data folder (default: $EDSR_HOME/data)")
    ls.set_defaults(func=_run_data_list)
    dl = dsub.add_parser("download", help="download, verify and extract data sets")
    dl.add_argument("names", nargs="+", metavar="NAME", help="names from 'edsr data list'")
    dl.add_argument("--root", type=output_folder, help="data folder (default: $EDSR_HOME/data)")
    dl.add_argument(
        "--keep-archives", action="store_true", help="keep the zip/tar files after extracting"
    )
    dl.add_argument(
        "--timeout", type=seconds, default=30.0, help="seconds without data before an address fails"
    )
    dl.add_argument(
        "--mirror",
        metavar="URL",
        type=_mirror,
        help="an http(s) address tried before the published ones (default: $EDSR_DATA_MIRROR); "
        "it holds each archive under its file name and each image of T91/BSD200 as "
        "NAME/FILE (T91/t1.bmp)",
    )
    dl.add_argument("--quiet", action="store_true", help="no progress bars")
    dl.set_defaults(func=_run_data_download)


def _mirror(text: str) -> str:
    from edsr.datasets.fetch import mirror_base
    from edsr.errors import EdsrError

    try:
        return mirror_base(text, what=None) or text
    except EdsrError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _run_data_list(args: argparse.Namespace) -> int:
    from edsr.datasets import DATASETS
    from edsr.datasets.table import format_table

    print(format_table(list(DATASETS.values()), args.root))
    return 0


def _run_data_download(args: argparse.Namespace) -> int:
    from edsr.datasets import download_dataset, get_dataset
    from edsr.datasets.fetch import mirror_base, prepare_root
    from edsr.errors import EdsrError
    from edsr.io.download import UnreachableHosts

    # What every name shares is checked once: a bad root or mirror is one line, not one a name;
    # the root is made only when there is a set to put in it; a host found down is not asked
    # again for the next name.
    mirror = mirror_base(args.mirror)
    hosts = UnreachableHosts()
    root = None
    failed: list[str] = []
    # Sets that fail for one reason (benchmark.tar serves four) are said on one line, not four.
    errors: dict[str, list[str]] = {}
    for name in args.names:  # each tried, whatever happened to the one before
        try:
            entry = get_dataset(name)
            root = root or prepare_root(args.root)
            folder = download_dataset(
                entry,
                root,
                progress=not args.quiet,
                keep_archives=args.keep_archives,
                timeout=args.timeout,
                mirror=mirror,
                hosts=hosts,
            )
        except EdsrError as e:
            failed.append(name)
            text = str(e)
            same = next((k for k, v in errors.items() if k.replace(v[0], name) == text), None)
            errors.setdefault(same or text, []).append(name)
            continue
        print(f"{entry.name}: {folder}")
    for text, names in errors.items():
        also = f" (the same for {', '.join(names[1:])})" if len(names) > 1 else ""
        print(f"edsr: error: {text}{also}", file=sys.stderr)
    if len(errors) > 1:
        print(
            f"edsr: error: {len(failed)} of {len(args.names)} data sets not downloaded: "
            f"{', '.join(failed)}",
            file=sys.stderr,
        )
    return 1 if failed else 0


def add_downscale(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "downscale",
        help="make bicubic LR images (MATLAB-exact) in the benchmark layout",
        description="Write OUT/HR/NAME.png and OUT/LR_bicubic/X{s}/NAMEx{s}.png from a folder "
        "of HR images, with the LR making 'edsr eval' and 'edsr train' use; images already "
        "done from the same HR file are skipped.",
    )
    p.add_argument(
        "hr_dir",
        metavar="HR_DIR",
        type=input_folder,
        help="folder of HR images (or a benchmark folder)",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", type=output_folder, help="output folder"
    )
    p.add_argument(
        "--scale",
        dest="scales",
        type=positive_int,
        nargs="+",
        default=[2, 3, 4],
        help="default: 2 3 4",
    )
    p.add_argument(
        "--jobs", type=processes, default=None, help="processes (default: the core count)"
    )
    p.add_argument(
        "--jpeg",
        type=whole_number(1, 100),
        metavar="Q",
        help="write the LR images as NAMEx{s}.jpg, saved by Pillow at quality Q (4:2:0 chroma): "
        "the inputs 'edsr eval --degrade jpeg:Q' scores, as files other tools can read",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_downscale)


def _run_downscale(args: argparse.Namespace) -> int:
    from edsr.datasets import downscale_folder

    report = downscale_folder(
        args.hr_dir,
        args.output,
        args.scales,
        jobs=args.jobs,
        progress=not args.quiet,
        jpeg=args.jpeg,
    )
    summary = f"wrote {report.written} images; {report.skipped} already done"
    if report.failed:
        print(f"{summary}; {len(report.failed)} refused: {report.failed[0]}")
        return 1
    print(f"{summary} -> {args.output}")
    return 0
