"""Downloading registry weights into a hash-checked cache, and checking files against it.

A file reaches its cache path only by an atomic rename after its SHA-256 matched, so an
interrupted, truncated or corrupted transfer never leaves a file that a later run trusts
(the public code's cache does, and later runs crash on it). Addresses are tried in order;
each failure (HTTP error, timeout, short transfer, wrong hash) moves on to the next one.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from edsr.errors import CheckpointError, EdsrError
from edsr.io.atomic import atomic_write
from edsr.io.cache import edsr_home, sha256_file
from edsr.weights.catalogue import ASSETS
from edsr.weights.entry import WeightsEntry
from edsr.weights.registry import get_entry

DEFAULT_TIMEOUT = 30.0  # seconds without a byte before an address counts as failed
_CHUNK = 1 << 20
# No official file is near this; a server streaming without end must not fill the disk.
_MAX_BYTES = 4 << 30


class _FetchFailed(Exception):
    """One address failed; the message says why. Deliberately not an OSError, so that
    ``atomic_write`` does not mistake a network failure for a failure to write the file."""


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


def hash_matches(digest: str, expected: str) -> bool:
    """True when the full hex ``digest`` starts with ``expected`` (a full digest or a prefix)."""
    return len(expected) >= 8 and digest.lower().startswith(expected.lower())


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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}".strip()
    if isinstance(exc, urllib.error.URLError):
        if not isinstance(exc.reason, BaseException):
            return str(exc.reason)
        exc = exc.reason
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "host not found"
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection closed after {len(exc.partial)} more bytes (truncated)"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:120]


def _fetch(url: str, dest: Path, entry: WeightsEntry, *, timeout: float, progress: bool) -> str:
    """Download ``url`` into ``dest`` (a temporary file) and return its SHA-256.

    Raises :class:`_FetchFailed` for every way the transfer can go wrong, the hash included.
    """
    from tqdm import tqdm

    from edsr.version import __version__

    if not url.lower().startswith(("https://", "http://")):
        raise _FetchFailed("only http(s) addresses are fetched")
    req = urllib.request.Request(url, headers={"User-Agent": f"edsr/{__version__}"})
    h = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length_text = resp.headers.get("Content-Length")
            length = int(length_text) if length_text and length_text.isdigit() else None
            if length is not None and entry.size is not None and length != entry.size:
                raise _FetchFailed(f"server offers {length:,} bytes, expected {entry.size:,}")
            limit = entry.size or length or _MAX_BYTES
            bar = tqdm(
                total=length or entry.size,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=entry.filename,
                disable=not progress,
                leave=False,
                file=sys.stderr,
            )
            with bar, open(dest, "wb") as f:
                while chunk := resp.read(_CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise _FetchFailed(f"server sent more than the expected {limit:,} bytes")
                    f.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except _FetchFailed:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # OSError covers refused connections, timeouts and resets mid-transfer.
        raise _FetchFailed(_reason(e)) from None
    # http.client's read(n) returns b"" rather than raising when the connection closes before
    # Content-Length bytes arrived, so a truncated transfer is caught here, by counting.
    expected_len = length if length is not None else entry.size
    if expected_len is not None and received != expected_len:
        raise _FetchFailed(f"truncated: got {received:,} of {expected_len:,} bytes")
    if received == 0:
        raise _FetchFailed("empty response")
    digest = h.hexdigest()
    if not hash_matches(digest, entry.sha256):
        raise _FetchFailed(f"SHA-256 mismatch: got {digest[:16]}..., expected {entry.sha256}...")
    return digest


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
    offline = os.environ.get("EDSR_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")
    for url in () if offline else e.urls:
        try:
            # The temporary file sits beside the target (same file system, so the rename is
            # atomic) and is removed on any failure, Ctrl-C included.
            with atomic_write(path, overwrite=True) as tmp:
                digest = _fetch(url, tmp, e, timeout=timeout, progress=progress)
        except _FetchFailed as err:
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
