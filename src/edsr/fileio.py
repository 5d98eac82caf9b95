"""Atomic, no-clobber file writing shared by everything that saves user-visible files."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edsr.errors import EdsrError


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
