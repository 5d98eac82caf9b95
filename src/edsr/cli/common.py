"""What every command's parser shares: usage errors in one line, whole-number flags, help texts,
and where the library's one-line notes go."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

from edsr.errors import EdsrError

if TYPE_CHECKING:
    from edsr.inference.distributed import Ranks

T = TypeVar("T")


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with where to look, instead of the full usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


MODEL_HELP = (
    "checkpoint file (.pt, .pth or .safetensors) or a name from 'edsr weights list' "
    "(default: the bundled MDSR, x2/x3/x4)"
)
RES_SCALE_HELP = "override the residual scaling the checkpoint cannot store"
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"


def say_to_stderr(quiet: bool) -> Callable[[str], None]:
    """Where the library's one-line notes go: stderr, unless --quiet."""

    def say(line: str) -> None:
        if not quiet:
            print(line, file=sys.stderr)

    return say


def on_ranks(work: Callable[[Ranks], T]) -> T | None:
    """Run a command's work under torchrun's process group (in place without torchrun).

    Rank 0 speaks for all: it gets the result, and an error to report; the other ranks get None
    and stay quiet, so a summary or an error line is printed once.
    """
    from edsr.inference.distributed import process_group

    with process_group() as ranks:
        try:
            result = work(ranks)
        except EdsrError:
            if ranks.main:
                raise
            return None
        return result if ranks.main else None
