"""Atomic, no-clobber file writing shared by everything that saves user-visible files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edsr.errors import EdsrError


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not safe once
# threads (edsr serve's workers) are writing files.
_UMASK = _read_umask()


def check_writable(dest: Path, *, overwrite: bool) -> None:
    if dest.exists() and not overwrite:
        raise EdsrError(f"{dest} already exists; pass --overwrite to replace it")
    if dest.is_dir():
        raise EdsrError(f"{dest} is a directory; give a file name")


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is fsynced and renamed onto ``dest``.

    On any failure, Ctrl-C included, the temporary file is removed, so a reader never sees a
    half-written file. Without ``overwrite`` an existing ``dest`` is an error, checked before
    the work starts and again just before the rename.
    """
    dest = Path(dest)
    check_writable(dest, overwrite=overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as e:
        raise EdsrError(f"cannot write {dest}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; give the file the mode a plain open() would (or the one of the file
    # it replaces), or outputs and checkpoints end up unreadable to everyone but their writer.
    try:
        mode = stat.S_IMODE(dest.stat().st_mode) if dest.exists() else 0o666 & ~_UMASK
        os.chmod(tmp, mode)
    except OSError:
        pass  # a file system without modes (FAT, some network mounts) still gets the file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        check_writable(dest, overwrite=overwrite)
        os.replace(tmp, dest)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise EdsrError(f"disk full while writing {dest}; nothing was written") from None
        raise EdsrError(f"cannot write {dest}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def edsr_home() -> Path:
    """Root of everything this package caches: ``$EDSR_HOME``, else the platform's cache folder.

    Linux: ``$XDG_CACHE_HOME/edsr`` (``~/.cache/edsr``); macOS: ``~/Library/Caches/edsr``;
    Windows: ``%LOCALAPPDATA%\\edsr``.
    """
    env = os.environ.get("EDSR_HOME")
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Caches"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        # The XDG spec says relative paths are to be ignored.
        base = Path(xdg) if xdg and os.path.isabs(xdg) else home / ".cache"
    return base / "edsr"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
