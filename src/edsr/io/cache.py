"""The cache folder of this package, and the file hash that checks what is stored in it."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

__all__ = ["edsr_home", "sha256_file"]


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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
