"""`edsr serve`: the web page and HTTP API."""

from __future__ import annotations

import argparse

from edsr import defaults
from edsr.cli.common import (
    DEVICE_HELP,
    add_run_code,
    device,
    existing_folder,
    memory_size,
    positive_float,
    positive_int,
    processes,
    seconds,
    whole_number,
)
from edsr.errors import EdsrError
from edsr.inference.precision import PRECISIONS as PRECISION_CHOICES


def add_serve(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument(
        "--port",
        type=whole_number(0, 65535),
        default=8000,
        help="port (default 8000; 0 picks a free one)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=positive_float(2.0**20),
        default=20.0,
        help="largest upload (default 20)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=4_000_000,
        help="largest input image (default 4000000)",
    )
    p.add_argument(
        "--workers", type=processes, default=1, help="images upscaled at once (default 1)"
    )
    p.add_argument(
        "--queue",
        type=whole_number(0, 100_000),
        default=4,
        help="requests that may wait for a worker (default 4)",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=300.0,
        help="seconds a request may take once its upload is in (default 300)",
    )
    p.add_argument(
        "--upload-timeout",
        type=seconds,
        default=30.0,
        help="seconds an upload may take to arrive; a slower one gets 408 (default 30)",
    )
    p.add_argument(
        "--max-uploads",
        type=whole_number(1, 10_000),
        default=16,
        help="uploads that may be arriving at once; the next gets 503 (default 16)",
    )
    p.add_argument(
        "--max-uploads-per-client",
        type=whole_number(1, 10_000),
        default=4,
        help="of those, uploads one client address may have arriving; its next gets 429 "
        "(default 4; behind a reverse proxy every client has the proxy's address)",
    )
    p.add_argument(
        "--max-memory",
        type=memory_size,
        help="tile working memory per worker, e.g. 2GiB (default: automatic)",
    )
    p.add_argument("--device", default=None, type=device, help=DEVICE_HELP)
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        help=f"compute precision of the models (as upscale's --precision; default "
        f"{defaults.PRECISION})",
    )
    p.add_argument(
        "--tmp-dir",
        type=existing_folder,
        help="where the server's temporary folder goes (default: system temp)",
    )
    p.add_argument("--quiet", action="store_true", help="no access log")
    add_run_code(p)
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from edsr.serve import ServeConfig, serve
    except ImportError as e:
        raise EdsrError(
            f"edsr serve needs the 'serve' extra: pip install 'edsr[serve]' (missing: {e.name})"
        ) from None
    config = ServeConfig(
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue=args.queue,
        timeout=args.timeout,
        upload_timeout=args.upload_timeout,
        max_uploads=args.max_uploads,
        max_uploads_per_client=args.max_uploads_per_client,
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
        run_torchscript_code=args.run_torchscript_code,
    )
    return 0
