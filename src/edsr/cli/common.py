"""What every command's parser shares: usage errors in one line, the checked option types
(each runs an :mod:`edsr.validators` check), help texts, and where the library's notes go."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from edsr import validators
from edsr.degrade import parse_degradation
from edsr.errors import EdsrError

if TYPE_CHECKING:
    from edsr.inference.distributed import Ranks

T = TypeVar("T")


class _Commands(argparse._SubParsersAction):
    """Subcommands whose ``--help`` opens with a description: the help line they are listed
    with, where no longer one is given."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if not kwargs.get("description"):
            kwargs["description"] = kwargs.get("help")
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with where to look, instead of the full usage block; every
    subcommand described (:class:`_Commands`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _Commands)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


class Checked:
    """An argparse ``type=`` running one of :mod:`edsr.validators`' checks, so a bad value is
    refused at the door in one line naming the option. ``kind`` and the bounds say what the
    option takes, to whoever walks the parser."""

    def __init__(
        self,
        kind: str,
        check: Callable[[str], object],
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> None:
        self.kind, self.check, self.minimum, self.maximum = kind, check, minimum, maximum
        self.__name__ = kind  # argparse names a type by it

    def __call__(self, text: str) -> Any:
        try:
            return self.check(text)
        except EdsrError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    def __repr__(self) -> str:
        return f"Checked({self.kind!r}, minimum={self.minimum}, maximum={self.maximum})"


def whole_number(minimum: int = 1, maximum: int = validators.MAX_INT) -> Checked:
    return Checked(
        "int",
        lambda t: validators.int_in_range(t, minimum=minimum, maximum=maximum),
        minimum=minimum,
        maximum=maximum,
    )


def positive_float(maximum: float = math.inf) -> Checked:
    """A finite number above 0 (nan, inf, 0 and negatives refused), at most ``maximum``."""
    return Checked(
        "float",
        lambda t: validators.finite_float(t, maximum=maximum),
        minimum=0.0,
        maximum=maximum,
    )


def _keep_text(check: Callable[[str], object]) -> Callable[[str], str]:
    """Check a path and pass the text on as typed: the library takes it from there."""

    def checked(text: str) -> str:
        check(text)
        return text

    return checked


positive_int = whole_number(1)
processes = whole_number(1, validators.MAX_PROCESSES)
#: Seconds to wait on a network peer or a request: finite, at most a day.
seconds = positive_float(86400.0)
res_scale = positive_float(validators.MAX_RES_SCALE)
memory_size = Checked("memory", validators.memory_size)
device = Checked("device", validators.device_name)
#: A folder written into (made if missing); a file there, or a file in its path, is refused.
output_folder = Checked("output_folder", _keep_text(validators.output_folder))
#: A file written; a folder there, or a file in its path, is refused.
output_file = Checked("output_file", _keep_text(validators.output_file))
#: A file or a folder written (upscale's -o): only a file in its path is refused.
output_path = Checked("output_path", _keep_text(validators.output_path))
#: A folder read; it must exist.
input_folder = Checked("input_folder", _keep_text(validators.input_folder))
#: A folder that exists and can be written into.
existing_folder = Checked("existing_folder", _keep_text(validators.existing_folder))
#: A degradation spec (:mod:`edsr.degrade`), passed on in its canonical form.
degradation = Checked("degradation", lambda t: str(parse_degradation(t)))


MODEL_HELP = (
    "checkpoint file (.pt, .pth or .safetensors), an ONNX or TorchScript file from 'edsr "
    "export', or a name from 'edsr weights list' (default: the bundled MDSR, x2/x3/x4)"
)
RES_SCALE_HELP = "override the residual scaling the checkpoint cannot store"
DEVICE_HELP = "cpu, cuda, cuda:1, ... (default: cuda if available)"


def add_run_code(p: argparse.ArgumentParser) -> None:
    """The opt-in that lets a TorchScript --model run: loading one runs the code it holds."""
    from edsr.runtimes import RUN_CODE_FLAG

    p.add_argument(
        RUN_CODE_FLAG,
        action="store_true",
        help="allow a TorchScript --model file: loading it runs the code inside it, so give "
        "this only for a file whose source you trust (checkpoints and ONNX never run code)",
    )


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
