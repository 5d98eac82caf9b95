"""The one atomic, no-clobber file writer: every file this package writes goes through it.

A write goes to a temporary file beside the destination, created exclusively and named
``.NAME.edsr-PID-XXXXXXXX.tmp`` so that :func:`remove_stale_temps` can recognise what a killed
run left behind. The data is fsynced, the file gets the mode a plain ``open()`` would give it
(``0o666`` less the umask, or the mode of the file it replaces; never mkstemp's ``0o600``), and
only then is it published: with ``os.replace`` when replacing is allowed, else with a hard link
that fails if the destination appeared meanwhile, so a racing writer's file is never replaced.
The directory is fsynced last. On any failure, Ctrl-C and SIGTERM turned into an exception
included, the temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from edsr.errors import EdsrError, one_line
from edsr.validators import output_file, output_folder

__all__ = [
    "STALE_TEMP_AGE",
    "atomic_open",
    "atomic_write",
    "atomic_write_stream",
    "check_folder_writable",
    "check_writable",
    "remove_stale_temps",
]

_TEMP_MARK = ".edsr-"
# .NAME.edsr-PID-XXXXXXXX.tmp; NAME is cut so the whole name stays within 255 bytes.
_TEMP_NAME = re.compile(r"^\..*\.edsr-(\d+)-[0-9a-f]{8}\.tmp$", re.DOTALL)
_NAME_KEPT = 120

#: A temporary file this old is stale whoever wrote it (see :func:`remove_stale_temps`).
STALE_TEMP_AGE = 24 * 3600.0

_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


# --------------------------------------------------------------------------------------------
# Messages: one style for every writer
# --------------------------------------------------------------------------------------------


def _exists_error(dest: Path) -> EdsrError:
    return EdsrError(f"{dest} already exists; pass --overwrite to replace it")


def _write_error(dest: Path, e: OSError) -> EdsrError:
    if e.errno in _DISK_FULL:
        return EdsrError(f"disk full while writing {dest}; nothing was written")
    if isinstance(e, PermissionError):
        return EdsrError(f"cannot write {dest}: permission denied; write to a folder you own")
    if e.errno == errno.EROFS:
        return EdsrError(f"cannot write {dest}: the file system is read-only; write elsewhere")
    return EdsrError(f"cannot write {dest}: {one_line(e)}")


def check_writable(dest: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse early what :func:`atomic_write` would refuse at the end: an existing ``dest``
    without ``overwrite``, or a ``dest`` that is a folder."""
    dest = Path(dest)
    if dest.is_dir():
        raise EdsrError(f"{dest} is a directory; give a file name")
    output_file(dest)  # a file in its path, or a folder this process cannot write in
    if not overwrite and os.path.lexists(dest):
        raise _exists_error(dest)


def check_folder_writable(folder: str | os.PathLike[str]) -> None:
    """Check, before any work, that files can be created in ``folder``.

    Creates and removes one temporary file: permission bits do not tell (root ignores them,
    a read-only mount or a full quota does not show in them). The folders made for it are
    removed again, so a run that fails later leaves nothing; the writers make them anew.
    """
    folder = output_folder(folder)
    made = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temp(folder / "probe")
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    except FileExistsError:
        raise EdsrError(f"cannot write to {folder}: it is not a folder") from None
    except OSError as e:
        raise _write_error(folder, e) from None
    finally:
        for p in made:
            with contextlib.suppress(OSError):
                p.rmdir()


# --------------------------------------------------------------------------------------------
# The writer
# --------------------------------------------------------------------------------------------


def _temp_path(dest: Path) -> Path:
    return dest.with_name(
        f".{dest.name[:_NAME_KEPT]}{_TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    )


def _create_temp(dest: Path) -> tuple[Path, int]:
    """Create a new temporary file beside ``dest``; OSError as the file system raised it."""
    # O_EXCL: never open a file someone else made (a symlink planted under the name included).
    # Mode 0o666 lets the umask decide, as for any new file.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = _temp_path(dest)
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
    raise EdsrError(f"cannot write {dest}: no free temporary name beside it; clean up the folder")


def _prepare(dest: Path, overwrite: bool) -> tuple[Path, int, int]:
    """Check ``dest``, make its folder, create the temporary file; return (tmp, fd, mode)."""
    check_writable(dest, overwrite=overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EdsrError(f"cannot write {dest}: {dest.parent} is not a folder") from None
    except OSError as e:
        raise _write_error(dest, e) from None
    try:
        tmp, fd = _create_temp(dest)
    except OSError as e:
        raise _write_error(dest, e) from None
    try:
        # The kernel applied the umask to 0o666: that is the mode a plain open() gives, read
        # without os.umask() (which can only be read by setting it, unsafe with threads).
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                mode = stat.S_IMODE(os.stat(dest).st_mode)
                # Now already: the new content of a private file is private while written.
                with contextlib.suppress(OSError):
                    os.chmod(tmp, mode | stat.S_IWUSR)
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    return tmp, fd, mode


def _discard(tmp: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def _publish(tmp: Path, dest: Path, mode: int, overwrite: bool) -> None:
    # Set the mode last: a writer handed the temporary path may have replaced the file with its
    # own (safetensors' save_file does, with mode 0o600).
    with contextlib.suppress(OSError):  # file systems without modes (FAT, some mounts)
        os.chmod(tmp, mode)
    if overwrite:
        os.replace(tmp, dest)
    else:
        _publish_no_clobber(tmp, dest)
    _fsync_dir(dest.parent)


def _publish_no_clobber(tmp: Path, dest: Path) -> None:
    try:
        # link() fails if dest exists, so a file created since the first check is never lost.
        os.link(tmp, dest)
    except FileExistsError:
        raise _exists_error(dest) from None
    except (OSError, NotImplementedError, AttributeError):
        # No hard links here (FAT, some network file systems): re-check right before replace.
        if os.path.lexists(dest):
            raise _exists_error(dest) from None
        os.replace(tmp, dest)
    else:
        _discard(tmp)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not possible on every OS / file system)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file to write ``dest``'s content into; published when the block ends.

    Raises :class:`~edsr.errors.EdsrError` if ``dest`` exists and ``overwrite`` is False
    (checked before the block runs and again, race-free, when publishing), and for every
    failure of the file system, with a one-line message naming ``dest``.
    """
    dest = Path(dest)
    tmp, fd, mode = _prepare(dest, overwrite)
    with _discarded_on_failure(tmp, dest):
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        _publish(tmp, dest, mode, overwrite)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` for a writer that wants a path (torch.save,
    safetensors, ONNX, matplotlib); published as :func:`atomic_open` does when the block ends.
    """
    dest = Path(dest)
    tmp, fd, mode = _prepare(dest, overwrite)
    os.close(fd)
    with _discarded_on_failure(tmp, dest):
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _publish(tmp, dest, mode, overwrite)


@contextlib.contextmanager
def _discarded_on_failure(tmp: Path, dest: Path) -> Iterator[None]:
    """Any failure, Ctrl-C included, removes the temporary; file-system errors become one line."""
    try:
        yield
    except OSError as e:
        _discard(tmp)
        raise _write_error(dest, e) from None
    except BaseException:
        _discard(tmp)
        raise


def atomic_write_stream(
    dest: str | os.PathLike[str], encode: Callable[[BinaryIO], None], *, overwrite: bool = False
) -> Path:
    """Write ``dest`` with ``encode(file)`` through :func:`atomic_open`; return ``dest``."""
    with atomic_open(dest, overwrite=overwrite) as f:
        encode(f)
    return Path(dest)


# --------------------------------------------------------------------------------------------
# Leftovers of killed runs
# --------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return True  # os.kill(pid, 0) would terminate it there; fall back on the age rule
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # exists, owned by someone else (or cannot tell: keep it)
    return True


def remove_stale_temps(
    folder: str | os.PathLike[str], *, recursive: bool = False, max_age: float = STALE_TEMP_AGE
) -> list[Path]:
    """Remove the temporary files of this package's own naming that no writer will finish.

    A temporary file is stale when its writer (the pid in its name) is no longer running, or
    when it was last written more than ``max_age`` seconds ago. The pid rule removes what a
    kill -9 left at once, without a grace period that would make the next run miss it; the age
    rule covers what the pid cannot tell (a pid reused since, a writer on another machine
    sharing the folder), and is long because a live writer may go quiet for a while (a strip
    writer between bands). A folder shared by machines with clashing pids keeps a dead
    writer's file until it is ``max_age`` old; one whose pid is reused is never wrongly removed.

    Only files named ``.NAME.edsr-PID-XXXXXXXX.tmp`` are considered; anything else, and any
    file that cannot be removed, is left alone. Returns the removed paths.
    """
    root = Path(folder)
    if recursive:
        candidates = [Path(d, n) for d, _, names in os.walk(root) for n in names]
    else:
        try:
            candidates = list(root.iterdir())
        except OSError:
            return []
    removed: list[Path] = []
    now = time.time()
    for path in candidates:
        m = _TEMP_NAME.match(path.name)
        if m is None:
            continue
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            if _pid_alive(int(m.group(1))) and now - st.st_mtime <= max_age:
                continue
            path.unlink()
        except OSError:
            continue
        removed.append(path)
    return sorted(removed)
