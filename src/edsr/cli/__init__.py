"""Command line: parses arguments and calls the library; nothing else lives here.

One module per command (``add_<command>`` builds its parser, a private ``_run`` function calls
the library); this one assembles them and turns what escapes into one line and an exit status.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import TextIO

from edsr.cli import data, demo, evaluate, export, serve, train, upscale, weights
from edsr.cli.common import Parser
from edsr.errors import EdsrError, Terminated, one_line
from edsr.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edsr", description="EDSR and MDSR super-resolution: upscale, evaluate, train."
    )
    parser.add_argument("--version", action="version", version=f"edsr {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    demo.add_demo(sub)
    upscale.add_upscale(sub)
    export.add_export(sub)
    evaluate.add_eval(sub)
    weights.add_weights(sub)
    train.add_train(sub)
    serve.add_serve(sub)
    data.add_data(sub)
    data.add_downscale(sub)
    return parser


def _on_sigterm(signum: int, frame: object) -> None:
    # Taken as Ctrl-C: atomic writes remove their temporaries, and the command exits as a
    # terminated process does (training installs its own handler, to checkpoint first).
    raise Terminated


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
    words = list(sys.argv[1:] if argv is None else argv)
    if not words:  # a newcomer's first try: the command list, not an error
        parser.print_help()
        return 0
    args = parser.parse_args(words)
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
    except Terminated as e:
        # a stopped job says how far it got and how to finish (upscale_files); else this
        print(f"edsr: {str(e) or 'terminated'}", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt as e:
        print(f"edsr: {str(e) or 'interrupted'}", file=sys.stderr)
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
            f"edsr: internal error: {type(e).__name__}: {one_line(e)} "
            "(run with EDSR_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
