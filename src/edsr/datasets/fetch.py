"""Getting a catalogued data set onto disk: download (resumable), verify, extract safely.

Archives go to ``ROOT/downloads/`` (``ROOT`` is ``$EDSR_HOME/data`` unless given), where a
copy placed by hand is used once it verifies. Extraction writes each member atomically under
``ROOT`` through the entry's prefix map, refusing links and any path that would land outside
``ROOT``, and marks each finished archive with ``FOLDER/.edsr-ARCHIVE.json``: a data set is
present when all its archives are marked.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
import sys
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from edsr.datasets.catalogue import DATASETS, Archive, DataSetEntry
from edsr.errors import EdsrError
from edsr.io.atomic import atomic_open, atomic_write
from edsr.io.cache import edsr_home
from edsr.io.datasets import find_dataset
from edsr.io.download import DEFAULT_TIMEOUT, download, file_digest, offline, part_path

__all__ = ["data_root", "download_dataset", "get_dataset", "status"]

# Flickr2K's size is not published; a server streaming without end stops here.
_MAX_ARCHIVE = 64 << 30


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where data sets live: ``root`` if given, else ``edsr_home() / "data"``."""
    return Path(root) if root is not None else edsr_home() / "data"


def get_dataset(name: str | DataSetEntry) -> DataSetEntry:
    """The catalogue entry called ``name`` (case-insensitive), or an error listing the names."""
    if isinstance(name, DataSetEntry):
        return name
    for key, entry in DATASETS.items():
        if key.lower() == name.lower():
            return entry
    raise EdsrError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def _marker(root: Path, entry: DataSetEntry, archive: Archive) -> Path:
    return root / entry.folder / f".edsr-{archive.filename}.json"


@dataclass(frozen=True)
class Status:
    """What is on disk for a data set: ``state`` is present, partial, absent or by hand."""

    state: str
    archives_done: int
    folder: Path


def status(entry: str | DataSetEntry, root: str | os.PathLike[str] | None = None) -> Status:
    """Whether ``entry`` is on disk under ``root``: all its archives extracted ("present"),
    some ("partial"), none ("absent"); a set with no public download is "present" when its
    folder holds images, else "by hand"."""
    e = get_dataset(entry)
    base = data_root(root)
    folder = base / e.folder
    if e.manual is not None:
        try:
            find_dataset(folder)
            return Status("present", 0, folder)
        except EdsrError:
            return Status("by hand", 0, folder)
    done = sum(_marker(base, e, a).is_file() for a in e.archives)
    state = "present" if done == len(e.archives) else "partial" if done else "absent"
    return Status(state, done, folder)


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


def _describe_checksum(a: Archive) -> str:
    if a.checksum is None:
        return "no checksum is published; its size is checked only"
    return f"its {a.checksum.label} starts with {a.checksum.hexdigest[:16]}"


def _verifies(path: Path, a: Archive) -> bool:
    try:
        size = path.stat().st_size
    except OSError:
        return False
    if a.size is not None and size != a.size:
        return False
    if a.checksum is None:
        return a.size is not None
    return a.checksum.matches(file_digest(path, a.checksum.algorithm))


def _fetch_archive(
    entry: DataSetEntry, a: Archive, dest: Path, *, progress: bool, timeout: float
) -> None:
    placed = dest.is_file()
    if placed and _verifies(dest, a):
        return
    failures: list[str] = []
    if not offline():
        _, failures = download(
            a.urls,
            dest,
            size=a.size,
            checksum=a.checksum,
            label=a.filename,
            timeout=timeout,
            progress=progress,
            max_bytes=_MAX_ARCHIVE,
        )
        if not failures:
            return
    if failures:
        tried = f"addresses tried: {'; '.join(failures)}"
    else:
        tried = f"EDSR_OFFLINE is set, so none was tried of: {'; '.join(a.urls)}"
    existing = " The file already there does not match and was not used." if placed else ""
    kept = part_path(dest)
    resume = ""
    if kept.is_file():
        resume = f" {kept.stat().st_size:,} bytes are kept in {kept} for resuming."
    raise EdsrError(
        f"could not download {a.filename} for {entry.name}; {tried}.{resume} Download it by "
        f"hand ({_describe_checksum(a)}) and place it at {dest}, then run "
        f"`edsr data download {entry.name}` again.{existing}"
    )


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


_Opener = Callable[[], "IO[bytes] | None"]


def _members(path: Path) -> Iterator[tuple[str, bool, bool, _Opener]]:
    """(name, is regular file, is folder, opener) for each member of a zip or tar archive."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                is_link = stat.S_ISLNK(mode)
                is_dir = info.is_dir()
                opener: _Opener = functools.partial(zf.open, info)
                yield info.filename, not is_dir and not is_link, is_dir, opener
        return
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                yield m.name, m.isfile(), m.isdir(), functools.partial(tf.extractfile, m)
    except tarfile.TarError as e:
        raise EdsrError(f"{path} is neither a zip nor a tar archive ({e})") from None


def _target(root: Path, name: str, members: tuple[tuple[str, str], ...]) -> Path | None:
    """Where member ``name`` goes under ``root``, None when no prefix takes it; an EdsrError
    for a path that would escape ``root``."""
    clean = name.replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    for src, dst in members:
        if clean.startswith(src):
            rel = PurePosixPath(dst + clean[len(src) :])
            if rel.is_absolute() or ".." in rel.parts or ":" in rel.parts[0]:
                raise EdsrError(f"refusing archive member {name!r}: it points outside {root}")
            out = root.joinpath(*rel.parts)
            if not out.resolve().is_relative_to(root.resolve()):
                raise EdsrError(f"refusing archive member {name!r}: it points outside {root}")
            return out
    return None


def _extract(archive: Path, root: Path, a: Archive, *, progress: bool) -> int:
    from tqdm import tqdm

    count = 0
    with tqdm(
        desc=f"extracting {a.filename}",
        unit=" files",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    ) as bar:
        for name, is_file, is_dir, opener in _members(archive):
            out = _target(root, name, a.members)
            if out is None or is_dir:
                continue
            if not is_file:
                raise EdsrError(
                    f"refusing archive member {name!r} of {archive}: links and special files "
                    "are not extracted"
                )
            src = opener()
            if src is None:  # tarfile's way of saying "not a regular file"
                raise EdsrError(f"cannot read archive member {name!r} of {archive}")
            with contextlib.closing(src), atomic_open(out, overwrite=True) as f:
                shutil.copyfileobj(src, f, 1 << 20)
            count += 1
            bar.update(1)
    if count == 0:
        wanted = ", ".join(src for src, _ in a.members)
        raise EdsrError(f"{archive} holds nothing under {wanted}; it is not the expected archive")
    return count


def _still_needed(root: Path, a: Archive, done: DataSetEntry) -> bool:
    """True when another catalogued set that is not yet present takes ``a`` too."""
    return any(
        e.name != done.name
        and any(x.filename == a.filename for x in e.archives)
        and not _marker(root, e, next(x for x in e.archives if x.filename == a.filename)).is_file()
        for e in DATASETS.values()
    )


def download_dataset(
    name: str | DataSetEntry,
    root: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    keep_archives: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """Download, verify and extract data set ``name`` under ``root``; return its folder (what
    ``edsr train --train`` and ``edsr eval --data`` take).

    Archives already extracted are skipped; an interrupted download resumes. Archives are
    removed once extracted unless ``keep_archives`` or another catalogued set still needs
    them (``benchmark.tar`` serves four). Offline (``$EDSR_OFFLINE``) or on a bad checksum,
    an :class:`EdsrError` names the file, its address and where to put a copy by hand.
    """
    e = get_dataset(name)
    base = data_root(root)
    folder = base / e.folder
    if e.manual is not None:
        if status(e, base).state == "present":
            return folder
        raise EdsrError(e.manual.format(folder=folder))
    for a in e.archives:
        marker = _marker(base, e, a)
        if marker.is_file():
            continue
        archive = base / "downloads" / a.filename
        _fetch_archive(e, a, archive, progress=progress, timeout=timeout)
        n = _extract(archive, base, a, progress=progress)
        with atomic_write(marker, overwrite=True) as tmp:
            record = {"archive": a.filename, "files": n, "source": a.urls[0] if a.urls else None}
            tmp.write_text(json.dumps(record) + "\n")
        if not keep_archives and not _still_needed(base, a, e):
            archive.unlink(missing_ok=True)
    find_dataset(folder)  # the layout the readers take, with images in it
    return folder
