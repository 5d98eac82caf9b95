"""The one HTTP downloader: weights and data sets both fetch through it.

A transfer writes into a file the caller names (a temporary one for weights, a ``.part`` file
for data sets, kept between runs), every byte as it arrives, checks the size it must have and a
checksum of any ``hashlib`` algorithm, and raises :class:`FetchFailed` with a short reason for
every way it can go wrong. With ``resume``, bytes already in the file are kept and the server is
asked for the rest (``Range: bytes=N-``); a server that ignores the request answers 200 with
the whole file, and the transfer starts over from byte 0. :func:`download` tries addresses in
order and publishes a verified file atomically (``edsr.io.atomic``), so a file at its final
path has always been checked. A host that cannot be resolved or connected to is noted in an
:class:`UnreachableHosts` the caller shares across a run, and not asked again in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edsr.errors import one_line
from edsr.io.atomic import atomic_write

__all__ = [
    "DEFAULT_TIMEOUT",
    "Checksum",
    "FetchFailed",
    "UnreachableHosts",
    "download",
    "fetch_url",
    "file_digest",
    "hash_matches",
    "host_of",
    "offline",
    "part_path",
    "reason",
]

DEFAULT_TIMEOUT = 30.0  # seconds without a byte before an address counts as failed
_CHUNK = 1 << 20
# A server streaming without end must not fill the disk: the cap when no size is known.
DEFAULT_MAX_BYTES = 16 << 30
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class FetchFailed(Exception):
    """One address failed; the message says why. Deliberately not an OSError, so that
    ``atomic_write`` does not mistake a network failure for a failure to write the file.

    ``discard``: the bytes written are wrong (a checksum mismatch, too many bytes), so a
    partial file must not be continued. ``unreachable``: no connection was made (the name did
    not resolve, the connection was refused or timed out), so no other file of the host can be
    fetched either."""

    def __init__(self, message: str, *, discard: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.discard = discard
        self.unreachable = unreachable


def host_of(url: str) -> str:
    """The ``host[:port]`` an address is fetched from, as it is written in it."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2] or url


class UnreachableHosts:
    """Hosts a run could not resolve or connect to, each with why: one shared by the downloads
    of a run tries a dead host once, not once per file (291 files, 291 DNS failures)."""

    def __init__(self) -> None:
        self._why: dict[str, str] = {}

    def why(self, url: str) -> str | None:
        """Why ``url``'s host was given up in this run; None while it is not."""
        return self._why.get(host_of(url))

    def note(self, url: str, why: str) -> None:
        self._why.setdefault(host_of(url), why)

    def describe(self, urls: Sequence[str]) -> str:
        """ "HOST (why); HOST2 (why)" for the given-up hosts among ``urls``, in their order."""
        hosts = dict.fromkeys(host_of(u) for u in urls if self.why(u))
        return "; ".join(f"{h} ({self._why[h]})" for h in hosts)


@dataclass(frozen=True)
class Checksum:
    """A published checksum: ``algorithm`` as hashlib names it, ``hexdigest`` full or a prefix
    of at least 8 hex digits (the official weights publish 8)."""

    algorithm: str
    hexdigest: str

    def __post_init__(self) -> None:
        if self.algorithm not in hashlib.algorithms_available:
            raise ValueError(f"unknown hash algorithm {self.algorithm!r}")
        if len(self.hexdigest) < 8 or not re.fullmatch(r"[0-9a-fA-F]+", self.hexdigest):
            raise ValueError(f"a checksum needs at least 8 hex digits, got {self.hexdigest!r}")

    @property
    def label(self) -> str:
        """``SHA-256``, ``MD5``: the name to show."""
        return {"sha256": "SHA-256", "md5": "MD5", "sha1": "SHA-1"}.get(
            self.algorithm, self.algorithm.upper()
        )

    def matches(self, digest: str) -> bool:
        return hash_matches(digest, self.hexdigest)


def hash_matches(digest: str, expected: str) -> bool:
    """True when the full hex ``digest`` starts with ``expected`` (a full digest or a prefix)."""
    return len(expected) >= 8 and digest.lower().startswith(expected.lower())


def offline() -> bool:
    """True when ``$EDSR_OFFLINE`` is set to anything but empty, 0, false or no."""
    return os.environ.get("EDSR_OFFLINE", "").strip().lower() not in ("", "0", "false", "no")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file's content, read in 1 MiB pieces."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def part_path(dest: Path) -> Path:
    """Where the bytes of ``dest`` gather until they are verified: ``dest.part``."""
    return dest.with_name(dest.name + ".part")


def reason(exc: BaseException) -> str:
    """A short, one-line reason for a failed transfer."""
    if isinstance(exc, urllib.error.HTTPError):
        # urllib's redirect handler gives up with a three-line reason of its own
        if "redirect error that would lead to an infinite loop" in str(exc.reason):
            return f"a redirect loop: HTTP {exc.code} after too many redirects"
        return one_line(f"HTTP {exc.code} {exc.reason}".strip(), limit=120)
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
    return one_line(exc, limit=120)


def _say(progress: bool) -> Callable[[str], None]:
    def say(line: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)

    return say


def fetch_url(
    url: str,
    dest: Path,
    *,
    size: int | None,
    checksum: Checksum | None,
    label: str,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    resume: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    say: Callable[[str], None] | None = None,
) -> str:
    """Download ``url`` into ``dest``; return the full hex digest (``checksum``'s algorithm,
    else SHA-256) of the whole file.

    With ``resume``, the bytes already in ``dest`` are kept and only the rest is requested.
    ``size`` (bytes), when known, is checked against the server's length and what arrived.
    Raises :class:`FetchFailed` for every way the transfer can go wrong, the checksum included;
    a truncated transfer leaves what arrived in ``dest`` for a later resume.
    """
    from tqdm import tqdm

    from edsr.version import __version__

    say = say or _say(progress)
    if not url.lower().startswith(("https://", "http://")):
        raise FetchFailed("only http(s) addresses are fetched")
    algorithm = checksum.algorithm if checksum is not None else "sha256"
    have = dest.stat().st_size if resume and dest.is_file() else 0
    if size is not None and have > size:
        have = 0  # longer than the file can be: not a prefix of it
    headers = {"User-Agent": f"edsr/{__version__}"}
    if have:
        headers["Range"] = f"bytes={have}-"
    req = urllib.request.Request(url, headers=headers)
    h = hashlib.new(algorithm)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have and have == size:
            pass  # everything is already here; verified below
        else:
            raise FetchFailed(reason(e)) from None
        resp = None
    except urllib.error.URLError as e:
        # urllib wraps in URLError the OSError of connecting and sending the request (DNS,
        # refused, unreachable, connect timeout, TLS handshake): no connection to the host.
        raise FetchFailed(reason(e), unreachable=isinstance(e.reason, OSError)) from None
    except (http.client.HTTPException, OSError, ValueError) as e:
        raise FetchFailed(reason(e)) from None
    received = 0
    total: int | None = size
    try:
        if resp is not None:
            with resp:
                length_text = resp.headers.get("Content-Length")
                length = int(length_text) if length_text and length_text.isdigit() else None
                if have and resp.status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if m is None or int(m.group(1)) != have:
                        raise FetchFailed(
                            f"server answered the range request with "
                            f"{resp.headers.get('Content-Range')!r}, not bytes {have}-"
                        )
                    if m.group(3) != "*":
                        total = int(m.group(3))
                    say(f"{label}: resuming at byte {have:,} from {url}")
                else:
                    if have:
                        say(f"{label}: {url} ignored the range request; starting over")
                    have = 0
                    total = length
                if size is not None and total is not None and total != size:
                    raise FetchFailed(f"server offers {total:,} bytes, expected {size:,}")
                if total is None:
                    total = size
                if have:
                    with open(dest, "rb") as f:
                        while chunk := f.read(_CHUNK):
                            h.update(chunk)
                limit = total or max_bytes
                bar = tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=label,
                    disable=not progress,
                    leave=False,
                    file=sys.stderr,
                )
                with bar, open(dest, "ab" if have else "wb") as f:
                    try:
                        # read1: what has arrived, not a full MiB, so a transfer broken off
                        # (a cut, a stall, Ctrl-C) has written every byte received so far.
                        while chunk := resp.read1(_CHUNK):
                            received += len(chunk)
                            if have + received > limit:
                                raise FetchFailed(
                                    f"server sent more than the expected {limit:,} bytes",
                                    discard=True,
                                )
                            f.write(chunk)
                            f.flush()  # in the OS's hands: survives the process being killed
                            h.update(chunk)
                            bar.update(len(chunk))
                    finally:
                        with contextlib.suppress(OSError):
                            f.flush()
                            os.fsync(f.fileno())  # and on disk, for the next run to resume
        else:
            with open(dest, "rb") as f:
                while chunk := f.read(_CHUNK):
                    h.update(chunk)
    except FetchFailed:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        # OSError covers refused connections, timeouts and resets mid-transfer.
        raise FetchFailed(reason(e)) from None
    got = have + received
    # http.client's read(n) returns b"" rather than raising when the connection closes before
    # Content-Length bytes arrived, so a truncated transfer is caught here, by counting.
    if total is not None and got != total:
        raise FetchFailed(f"truncated: got {got:,} of {total:,} bytes")
    if got == 0:
        raise FetchFailed("empty response")
    digest = h.hexdigest()
    if checksum is not None and not checksum.matches(digest):
        raise FetchFailed(
            f"{checksum.label} mismatch: got {digest[:16]}..., expected {checksum.hexdigest}",
            discard=True,
        )
    return digest


def download(
    urls: Sequence[str],
    dest: Path,
    *,
    size: int | None,
    checksum: Checksum | None,
    label: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    progress: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 2,
    hosts: UnreachableHosts | None = None,
) -> tuple[Path, list[str]]:
    """Fetch ``dest`` from the first address of ``urls`` that gives the right file, resuming.

    Bytes gather in ``dest.part`` (:func:`part_path`), which survives an interrupted run and
    is continued by the next one; an address that breaks off mid-transfer is asked for the
    rest up to ``retries`` times before the next address is tried. The verified file replaces
    ``dest`` atomically. Returns ``(dest, [])`` on success, else ``(dest, failures)`` with one
    ``"URL (reason)"`` per address tried (none when :func:`offline`): the caller words the
    error, since it knows what the file is for. An address whose host ``hosts`` has given up
    is not tried (its failure says so); one that cannot be reached is noted there.
    """
    label = label or dest.name
    say = _say(progress)
    part = part_path(dest)
    failures: list[str] = []
    if offline():
        return dest, failures
    dest.parent.mkdir(parents=True, exist_ok=True)
    for url in urls:
        if hosts is not None and (why := hosts.why(url)):
            failures.append(f"{url} (not tried: {host_of(url)} could not be reached: {why})")
            continue
        tries = 0
        while True:
            before = part.stat().st_size if part.is_file() else 0
            try:
                fetch_url(
                    url,
                    part,
                    size=size,
                    checksum=checksum,
                    label=label,
                    timeout=timeout,
                    progress=progress,
                    resume=True,
                    max_bytes=max_bytes,
                    say=say,
                )
            except FetchFailed as err:
                if err.unreachable and hosts is not None:
                    hosts.note(url, str(err))
                now = part.stat().st_size if part.is_file() else 0
                if err.discard:
                    part.unlink(missing_ok=True)
                    if before and tries < retries:
                        # The kept bytes may be what was wrong: once more, from byte 0.
                        tries += 1
                        say(f"{label}: {err} after resuming; starting over from {url}")
                        continue
                elif now > before and tries < retries:
                    tries += 1  # broke off mid-transfer, but made progress: ask for the rest
                    say(f"{label}: {err} from {url}; asking for the rest")
                    continue
                failures.append(f"{url} ({err})")
                break
            with atomic_write(dest, overwrite=True) as tmp:
                os.replace(part, tmp)
            return dest, []
    return dest, failures
