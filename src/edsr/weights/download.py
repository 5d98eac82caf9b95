"""Downloading registry weights into a hash-checked cache, and checking files against it.

A file reaches its cache path only by an atomic rename after its SHA-256 matched, so an
interrupted, truncated or corrupted transfer never leaves a file that a later run trusts
(the public code's cache does, and later runs crash on it). Addresses are tried in order;
each failure (HTTP error, timeout, short transfer, wrong hash) moves on to the next one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from edsr.errors import CheckpointError, EdsrError
from edsr.io.atomic import atomic_write
from edsr.io.cache import edsr_home, sha256_file
from edsr.io.download import (
    DEFAULT_TIMEOUT,
    Checksum,
    FetchFailed,
    fetch_url,
    hash_matches,
    offline,
)
from edsr.weights.catalogue import ASSETS
from edsr.weights.entry import WeightsEntry
from edsr.weights.registry import get_entry

# No official file is near this; a server streaming without end must not fill the disk.
_MAX_BYTES = 4 << 30


def cache_dir() -> Path:
    """Where downloaded weights live: ``edsr_home() / "weights"``.

    ``edsr_home()`` is ``$EDSR_HOME`` or the platform's cache folder.
    """
    return edsr_home() / "weights"


def weights_path(entry: str | WeightsEntry) -> Path:
    """Where ``entry``'s file is (bundled) or will be (cache), whether or not it exists yet."""
    e = get_entry(entry)
    if e.bundled is not None:
        return ASSETS / e.bundled
    return cache_dir() / e.filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _write_marker(path: Path, digest: str) -> None:
    st = path.stat()
    record = {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        with atomic_write(_marker(path), overwrite=True) as tmp:
            tmp.write_text(json.dumps(record) + "\n")
    except EdsrError:
        pass  # a read-only cache still works; the next run just hashes the file again


def verify_file(
    path: str | os.PathLike, entry: str | WeightsEntry, *, full: bool = False
) -> str | None:
    """Return the file's SHA-256 if it is ``entry``'s file, else None.

    For the cache file, a marker written beside it when it was verified records its digest,
    size and modification time; while all three still hold, the file is not hashed again
    (unless ``full``). Anything else (no marker, file replaced or edited) means a full hash.
    Files elsewhere are always hashed, and get no marker.
    """
    e = get_entry(entry)
    path = Path(path)
    use_marker = e.bundled is None and path == weights_path(e)
    try:
        st = path.stat()
    except OSError:
        return None
    if not path.is_file() or (e.size is not None and st.st_size != e.size):
        return None
    if use_marker and not full:
        try:
            rec = json.loads(_marker(path).read_text())
            if rec["size"] == st.st_size and rec["mtime_ns"] == st.st_mtime_ns:
                return rec["sha256"] if hash_matches(rec["sha256"], e.sha256) else None
        except (OSError, ValueError, KeyError, TypeError):
            pass
    digest = sha256_file(path)
    if not hash_matches(digest, e.sha256):
        return None
    if use_marker:
        _write_marker(path, digest)
    return digest


def _fetch(url: str, dest: Path, entry: WeightsEntry, *, timeout: float, progress: bool) -> str:
    """Download ``url`` into ``dest`` (a temporary file) and return its SHA-256.

    Raises :class:`FetchFailed` for every way the transfer can go wrong, the hash included.
    No resume: the temporary file goes with a failed address, and weights files are small.
    """
    return fetch_url(
        url,
        dest,
        size=entry.size,
        checksum=Checksum("sha256", entry.sha256),
        label=entry.filename,
        timeout=timeout,
        progress=progress,
        max_bytes=_MAX_BYTES,
        say=lambda line: print(line, file=sys.stderr) if progress else None,
    )


def download_weights(
    entry: str | WeightsEntry,
    *,
    force: bool = False,
    progress: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Make sure ``entry``'s file is present and verified; return its path.

    A cached (or bundled) file that verifies is used as is, unless ``force``. Otherwise each
    address is tried in turn. ``$EDSR_OFFLINE=1`` skips the network altogether.
    """
    e = get_entry(entry)
    path = weights_path(e)
    if e.bundled is not None:
        if verify_file(path, e, full=True) is None:
            raise CheckpointError(
                f"the bundled weights {path} are missing or damaged (SHA-256 does not start with "
                f"{e.sha256}); reinstall the edsr package"
            )
        return path
    if not force and verify_file(path, e) is not None:
        return path
    stale = path.exists()
    failures: list[str] = []
    for url in () if offline() else e.urls:
        try:
            # The temporary file sits beside the target (same file system, so the rename is
            # atomic) and is removed on any failure, Ctrl-C included.
            with atomic_write(path, overwrite=True) as tmp:
                digest = _fetch(url, tmp, e, timeout=timeout, progress=progress)
        except FetchFailed as err:
            failures.append(f"{url} ({err})")
            continue
        _write_marker(path, digest)
        return path
    if failures:
        tried = f"addresses tried: {'; '.join(failures)}"
    else:
        tried = f"EDSR_OFFLINE is set, so none was tried of: {'; '.join(e.urls)}"
    existing = ""
    if stale:
        found = sha256_file(path)[:16]
        existing = f" The file already there does not match (SHA-256 {found}...) and was not used."
    raise EdsrError(
        f"could not download weights {e.name!r}; {tried}. Download "
        f"{e.filename} by hand (its SHA-256 starts with {e.sha256}) and place it at {path}, "
        f"or set EDSR_HOME to choose the cache folder.{existing}"
    )


def is_cached(entry: str | WeightsEntry) -> bool:
    """True when the file is present and verified (cheaply, through its marker)."""
    e = get_entry(entry)
    return verify_file(weights_path(e), e, full=e.bundled is not None) is not None
