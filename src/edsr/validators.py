"""Values and paths checked where they enter: the command line, a config file, the server, an
entry point of the library. The engine below never meets them raw.

Each check returns the value it accepts and raises :class:`~edsr.errors.EdsrError` with one
line otherwise. ``what`` names the value for that line ("learning rate", "--timeout"); without
it the line reads "expected ..., got ...", the form argparse prefixes with the option's name
(see ``edsr.cli.common``). Path checks write nothing: a folder that is missing but can be made
is accepted, and made later by whoever writes into it.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import stat
from pathlib import Path
from typing import Any

from edsr.errors import EdsrError

__all__ = [
    "MAX_INT",
    "MAX_PROCESSES",
    "MAX_RES_SCALE",
    "device_name",
    "existing_folder",
    "finite_float",
    "input_file",
    "input_folder",
    "int_in_range",
    "memory_size",
    "output_file",
    "output_folder",
    "output_path",
]

#: The largest count any option takes: beyond it a value is a typo, and C code below would
#: overflow on it.
MAX_INT = 2**31 - 1
#: Processes or threads one option may ask for: more is a typo, not a machine.
MAX_PROCESSES = 256
#: The residual scaling of a model: the paper uses 0.1 and 1; above 10 is a typo.
MAX_RES_SCALE = 10.0


def _refuse(what: str | None, requirement: str, value: object) -> EdsrError:
    shown: object = value
    if isinstance(value, str):
        shown = repr(value)
    elif isinstance(value, float):
        shown = f"{value:g}"
    if what:
        return EdsrError(f"{what} must be {requirement}, got {shown}")
    return EdsrError(f"expected {requirement}, got {shown}")


def _number(value: object, what: str | None, parse: type, kind: type, noun: str) -> Any:
    """``value`` as a number of ``kind`` (numpy's too, never a bool), text read by ``parse``."""
    if isinstance(value, str):
        try:
            value = parse(value)
        except ValueError:
            raise _refuse(what, noun, value) from None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _refuse(what, noun, value)
    return value


def finite_float(
    value: float | int | str,
    what: str | None = None,
    *,
    minimum: float = 0.0,
    maximum: float = math.inf,
    inclusive: bool = False,
) -> float:
    """A finite number above ``minimum`` (or equal to it, with ``inclusive``), at most
    ``maximum``. Text is read as a number; nan and inf are refused."""
    value = float(_number(value, what, float, numbers.Real, "a number"))
    low = f"{minimum:g} or more" if inclusive else f"above {minimum:g}"
    requirement = f"a finite number {low}" + (
        f" and at most {maximum:g}" if math.isfinite(maximum) else ""
    )
    if not math.isfinite(value) or value > maximum:
        raise _refuse(what, requirement, value)
    if value < minimum or (value == minimum and not inclusive):
        raise _refuse(what, requirement, value)
    return value


def int_in_range(
    value: int | str, what: str | None = None, *, minimum: int = 1, maximum: int = MAX_INT
) -> int:
    """A whole number from ``minimum`` to ``maximum``; text is read as one (no "1e3", no "2.0")."""
    value = int(_number(value, what, int, numbers.Integral, "a whole number"))
    if not minimum <= value <= maximum:
        low = "a positive whole number" if minimum == 1 else f"a whole number from {minimum}"
        top = "2^31-1" if maximum == MAX_INT else f"{maximum}"
        raise _refuse(what, f"{low} up to {top}", value)
    return value


_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip
_MAX_MEMORY = 2**60  # an exbibyte: anything above is a typo


def memory_size(text: str | int | float, what: str | None = None) -> int:
    """Bytes in a size such as ``"2GB"`` (10^9), ``"512MiB"`` (2^20), ``"1.5G"`` or ``1000000``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise EdsrError(f"cannot read the memory size {text!r}; write e.g. 2GB, 512MiB or 1.5G")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = value * _UNITS[unit]
    if not (math.isfinite(size) and 1 <= size <= _MAX_MEMORY):
        raise _refuse(what, "a memory size from 1 byte to 1 EiB", text)
    return int(size)


_DEVICE = re.compile(r"auto|cpu|mps|(cuda|xpu)(:[0-9]{1,3})?")


def device_name(text: str, what: str | None = None) -> str:
    """A device name (cpu, cuda, cuda:1, mps, xpu, auto); whether it is present is for the
    code that uses it to say."""
    if not _DEVICE.fullmatch(text):
        raise EdsrError(f"unknown device {text!r}; use cpu, cuda, cuda:N, mps or auto")
    return text


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of ``path`` that exists and is not a folder (so nothing can be made
    under it), or None."""
    for parent in reversed(path.parents):
        if os.path.lexists(parent) and not parent.is_dir():
            return parent
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _special_kind(path: Path) -> str | None:
    """What ``path`` is when it exists and is neither a regular file nor a folder (links
    followed): a device, a FIFO or a socket is never replaced by a file, ``--overwrite`` or not."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return None


def _check_can_create(path: Path, what: str) -> None:
    """``path``'s missing folders could be made: no file in the way, and the nearest existing
    folder is writable (a first answer: writers still report a read-only mount or a full disk).
    A device, FIFO or socket at ``path`` is refused: writing replaces files, never those."""
    special = _special_kind(path)
    if special is not None:
        raise EdsrError(
            f"cannot write {what} {path}: it is {special}, not a regular file; give a file name"
        )
    blocker = _blocking_file(path)
    if blocker is not None:
        raise EdsrError(f"cannot write {what} {path}: {blocker} is not a folder")
    base = _nearest_existing(path.parent if not path.exists() else path)
    if base.is_dir() and not os.access(base, os.W_OK | os.X_OK):
        raise EdsrError(
            f"cannot write {what} {path}: permission denied in {base}; write to a folder you own"
        )


def _path(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path; a NUL character, which no file system takes, is refused."""
    if "\x00" in os.fsdecode(path):
        raise EdsrError(f"{what} {os.fsdecode(path)!r}: a path cannot hold a NUL character")
    return Path(path)


def output_folder(path: str | os.PathLike[str], what: str = "to") -> Path:
    """A folder to write into: an existing folder, or one that can be made (nothing made here)."""
    p = _path(path, f"cannot write {what}")
    if str(path) == "":
        raise EdsrError(f"cannot write {what} an empty path; give a folder")
    if os.path.lexists(p) and not p.is_dir():
        raise EdsrError(f"cannot write {what} {p}: it is not a folder")
    _check_can_create(p, what)
    return p


def output_file(path: str | os.PathLike[str], what: str = "") -> Path:
    """A file to write: not a folder, with a parent that is or can be made a folder. Whether an
    existing file may be replaced is for the writer to say (``--overwrite``)."""
    what = what or "the file"
    p = _path(path, f"cannot write {what}")
    if str(path) == "":
        raise EdsrError(f"cannot write {what}: the path is empty; give a file name")
    if p.is_dir():
        raise EdsrError(f"cannot write {what} {p}: it is a folder; give a file name")
    _check_can_create(p, what)
    return p


def output_path(path: str | os.PathLike[str], what: str = "to") -> Path:
    """A file or a folder to write (which one the input decides): only its parents are checked."""
    p = _path(path, f"cannot write {what}")
    if str(path) == "":
        raise EdsrError(f"cannot write {what} an empty path")
    _check_can_create(p, what)
    return p


def input_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """A folder that exists."""
    p = _path(path, what)
    if not p.exists():
        raise EdsrError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise EdsrError(f"{what} {p} is a file, not a folder")
    return p


def input_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """A file that exists."""
    p = _path(path, what)
    if not p.exists():
        raise EdsrError(f"{what} {p} does not exist")
    if p.is_dir():
        raise EdsrError(f"{what} {p} is a folder; give a file")
    return p


def existing_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """A folder that exists and that this process may create files in."""
    p = input_folder(path, what)
    if not os.access(p, os.W_OK | os.X_OK):
        raise EdsrError(f"{what} {p} is not writable; give a folder you own")
    return p
