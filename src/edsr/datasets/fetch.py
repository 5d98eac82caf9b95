"""Getting a catalogued data set onto disk: download (resumable), verify, extract safely.

Archives go to ``ROOT/downloads/`` (``ROOT`` is ``$EDSR_HOME/data`` unless given), where a
copy placed by hand is used once it verifies. Extraction goes through the entry's prefix map
into a staging folder under ``ROOT``, refusing links and any path that would land outside
``ROOT``; only when every member has been written are they moved into place, so a refused or
damaged archive leaves nothing behind. Each finished archive is marked with
``FOLDER/.edsr-ARCHIVE.json``, which lists the files extracted and their sizes: a data set is
present when all its archives are marked and every file they list is there with its size (so a
file deleted since is fetched again). Sets published image by image are fetched by
:mod:`edsr.datasets.images` and marked ``FOLDER/.edsr-NAME.json`` once every image verifies;
they are present when every image is in place.

A host that cannot be reached is tried once per run: the downloads of one run share an
:class:`~edsr.io.download.UnreachableHosts`.

A mirror (``--mirror`` or ``$EDSR_DATA_MIRROR``, an http(s) address) is tried before the
published addresses: it holds each archive under its file name and each image of a set
published image by image as ``FOLDER/FILE`` (``MIRROR/T91/t1.bmp``).
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
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from edsr.datasets.catalogue import DATASETS, Archive, DataSetEntry
from edsr.datasets.images import fetch_images, images_on_disk
from edsr.errors import EdsrError, one_line
from edsr.io.atomic import STALE_TEMP_AGE, atomic_open, atomic_write, check_folder_writable
from edsr.io.cache import edsr_home
from edsr.io.datasets import find_dataset
from edsr.io.download import (
    DEFAULT_TIMEOUT,
    UnreachableHosts,
    download,
    file_digest,
    offline,
    part_path,
)
from edsr.validators import output_folder

__all__ = [
    "MIRROR_ENV",
    "data_root",
    "download_dataset",
    "find_data",
    "get_dataset",
    "mirror_base",
    "prepare_root",
    "status",
]

# Flickr2K's size is not published; a server streaming without end stops here.
_MAX_ARCHIVE = 64 << 30

#: The environment variable naming a mirror, when ``mirror`` is not given.
MIRROR_ENV = "EDSR_DATA_MIRROR"

# Where an archive is extracted before its members are moved into place; one a killed run left
# is removed by a later run once it is a day old (STALE_TEMP_AGE).
_STAGING = ".edsr-extract-"


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Where data sets live: ``root`` if given, else ``edsr_home() / "data"``."""
    return Path(root) if root is not None else edsr_home() / "data"


def prepare_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder, made if missing and checked writable before any download; an
    :class:`EdsrError` naming the path when it is (or lies under) a file, or is not writable."""
    base = output_folder(data_root(root), "data to")
    check_folder_writable(base)
    return base


def mirror_base(mirror: str | None = None, *, what: str | None = "--mirror") -> str | None:
    """The mirror's address, ending in "/": ``mirror``, else ``$EDSR_DATA_MIRROR``, else None.

    ``what`` names ``mirror`` in the error for a value that is not an http(s) address (None:
    "expected ..., got ...", the form argparse prefixes with the option)."""
    if mirror is None:
        mirror, what = os.environ.get(MIRROR_ENV, "").strip() or None, MIRROR_ENV
    if mirror is None:
        return None
    scheme, _, rest = mirror.partition("://")
    if scheme.lower() not in ("http", "https") or not rest.strip("/"):
        need = "an http(s) address such as https://host/edsr-data/"
        said = f"{what} must be {need}" if what else f"expected {need}"
        raise EdsrError(f"{said}, got {mirror!r}")
    return mirror if mirror.endswith("/") else mirror + "/"


def get_dataset(name: str | DataSetEntry) -> DataSetEntry:
    """The catalogue entry called ``name`` (case-insensitive), or an error listing the names."""
    if isinstance(name, DataSetEntry):
        return name
    for key, entry in DATASETS.items():
        if key.lower() == name.lower():
            return entry
    raise EdsrError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def find_data(spec: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> Path:
    """The folder a data set argument (``--data``, ``--train``, ``--val``) names: the path
    itself where it exists (``./Set5``), else a catalogued set of that name (any case) in the
    data cache, where ``edsr data download`` puts it; the one resolver every command uses.

    A catalogued name found in neither place is an :class:`EdsrError` saying which command
    fetches it; any other missing path is returned as given, for the reader to report.
    """
    path = Path(spec)
    if path.exists() or not isinstance(spec, str) or len(path.parts) != 1:
        return path
    try:
        entry = get_dataset(spec)
    except EdsrError:  # not a catalogued name either: the reader says the folder is missing
        return path
    folder = data_root(root) / entry.folder
    if folder.is_dir():
        if status(entry, root).state == "partial":  # a cut download must not pass for the set
            raise EdsrError(
                f"data set {entry.name} in {folder} is only partly downloaded; "
                f"run `edsr data download {entry.name}` to finish it"
            )
        return folder
    raise EdsrError(
        f"no data set {spec!r} in this folder or in the data cache ({folder}); "
        f"run `edsr data download {entry.name}` first"
    )


def _marker(root: Path, entry: DataSetEntry, archive: Archive | None = None) -> Path:
    """What says an archive (or, for a set published image by image, the set) is in place."""
    done = archive.filename if archive is not None else entry.name
    return root / entry.folder / f".edsr-{done}.json"


def _mark(marker: Path, record: dict[str, object]) -> None:
    """Write what says a set (or one archive of it) is in place, all at once."""
    with atomic_write(marker, overwrite=True) as tmp:
        tmp.write_text(json.dumps(record) + "\n")


def _archive_in_place(root: Path, entry: DataSetEntry, a: Archive) -> bool:
    """True when ``a`` was extracted and every file its marker lists is still there, with the
    size it had (a stat each, no hashing). A marker of an older version lists no files: it is
    taken at its word."""
    try:
        record = json.loads(_marker(root, entry, a).read_text())
    except (OSError, ValueError):
        return False
    sizes = record.get("sizes", {}) if isinstance(record, dict) else {}
    for rel, size in sizes.items():
        try:
            if (root / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class Status:
    """What is on disk for a data set: ``state`` is present, partial, absent or by hand;
    ``archives_done`` counts archives extracted, or images in place for a set published image
    by image."""

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
    if e.images is not None:
        done = images_on_disk(e, base)
        # Every image in place is the set, fetched or placed by hand (as a folder given with
        # --data-root is); one deleted since the download makes it a cut set again.
        if done == len(e.images.files):
            return Status("present", done, folder)
        return Status("partial" if done else "absent", done, folder)
    done = sum(_archive_in_place(base, e, a) for a in e.archives)
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
    entry: DataSetEntry,
    a: Archive,
    dest: Path,
    *,
    mirror: str | None,
    progress: bool,
    timeout: float,
    hosts: UnreachableHosts,
) -> None:
    placed = dest.is_file()
    if placed and _verifies(dest, a):
        return
    failures: list[str] = []
    urls = ((mirror + a.filename,) if mirror else ()) + a.urls
    if not offline():
        _, failures = download(
            urls,
            dest,
            size=a.size,
            checksum=a.checksum,
            label=a.filename,
            timeout=timeout,
            progress=progress,
            max_bytes=_MAX_ARCHIVE,
            hosts=hosts,
        )
        if not failures:
            return
    if failures:
        tried = f"addresses tried: {'; '.join(failures)}"
    else:
        tried = f"EDSR_OFFLINE is set, so none was tried of: {'; '.join(urls)}"
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


# What a damaged member raises while it is read (a bad CRC, a truncated stream).
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error)


def _remove_stale_staging(root: Path) -> None:
    """Staging folders a killed run left; a day old, so never one a running process uses."""
    for d in root.glob(f"{_STAGING}*"):
        with contextlib.suppress(OSError):
            if time.time() - d.stat().st_mtime > STALE_TEMP_AGE:
                shutil.rmtree(d)


def _extract(archive: Path, root: Path, a: Archive, *, progress: bool) -> dict[str, int]:
    """Extract ``a``'s members into a staging folder under ``root``, then move them into
    place: a member refused or damaged anywhere in the archive leaves none behind. Returns
    each file placed (its path under ``root``, "/"-separated) with its size."""
    from tqdm import tqdm

    _remove_stale_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING, dir=root))
    placed: list[tuple[Path, Path]] = []
    try:
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
                        f"refusing archive member {name!r} of {archive}: links and special "
                        "files are not extracted"
                    )
                staged = staging / out.relative_to(root)
                try:
                    src = opener()
                    if src is None:  # tarfile's way of saying "not a regular file"
                        raise EdsrError(f"cannot read archive member {name!r} of {archive}")
                    with contextlib.closing(src), atomic_open(staged, overwrite=True) as f:
                        shutil.copyfileobj(src, f, 1 << 20)
                except _DAMAGED as e:
                    raise EdsrError(
                        f"archive member {name!r} of {archive} is damaged ({e}); delete the "
                        "file and download it again"
                    ) from None
                placed.append((staged, out))
                bar.update(1)
        if not placed:
            wanted = ", ".join(src for src, _ in a.members)
            raise EdsrError(
                f"{archive} holds nothing under {wanted}; it is not the expected archive"
            )
        for staged, out in placed:
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged, out)
            except OSError as e:
                raise EdsrError(f"cannot put {out} in place: {one_line(e)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {out.relative_to(root).as_posix(): out.stat().st_size for _, out in placed}


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
    mirror: str | None = None,
    hosts: UnreachableHosts | None = None,
) -> Path:
    """Download, verify and extract data set ``name`` under ``root``; return its folder (what
    ``edsr train --train`` and ``edsr eval --data`` take).

    Archives already extracted, with every file still there, are skipped, as are images in
    place; an interrupted download resumes. Archives are removed once extracted unless
    ``keep_archives`` or another catalogued set still needs them (``benchmark.tar`` serves
    four). Offline (``$EDSR_OFFLINE``) or on a bad checksum, an :class:`EdsrError` names the
    file, its address and where to put a copy by hand. ``mirror`` (else ``$EDSR_DATA_MIRROR``)
    is an address tried first (see the module notes). ``hosts``, shared by the calls of one
    run, keeps a host that cannot be reached from being tried again (None: one per call).
    """
    e = get_dataset(name)
    if not (timeout > 0 and timeout < float("inf")):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout}")
    base = data_root(root)
    folder = base / e.folder
    if e.manual is not None:
        if status(e, base).state == "present":
            return folder
        raise EdsrError(e.manual.format(folder=folder))
    where = mirror_base(mirror)
    prepare_root(base)
    hosts = hosts if hosts is not None else UnreachableHosts()
    if e.images is not None:
        marker = _marker(base, e)
        if not marker.is_file() or status(e, base).state != "present":
            n = fetch_images(
                e,
                base,
                mirror=where,
                progress=progress,
                timeout=timeout,
                keep_files=keep_archives,
                hosts=hosts,
            )
            _mark(marker, {"images": n, "checked": "pixels", "source": e.images.source})
    for a in e.archives:
        if _archive_in_place(base, e, a):
            continue
        archive = base / "downloads" / a.filename
        _fetch_archive(e, a, archive, mirror=where, progress=progress, timeout=timeout, hosts=hosts)
        sizes = _extract(archive, base, a, progress=progress)
        source = a.urls[0] if a.urls else None
        record = {"archive": a.filename, "files": len(sizes), "sizes": sizes, "source": source}
        _mark(_marker(base, e, a), record)
        if not keep_archives and not _still_needed(base, a, e):
            archive.unlink(missing_ok=True)
    find_dataset(folder)  # the layout the readers take, with images in it
    return folder
