"""Sets published image by image (T91, BSD200): each file fetched, checked by the hash of its
decoded pixels, and stored as ``FOLDER/HR/NAME.png``, the benchmark layout ``edsr train``
reads (its LR images are made when training).

An image already in place is kept once its pixels verify, so a run broken off anywhere (a cut
connection, Ctrl-C, a corrupt file) is continued by the next one, which fetches only the rest;
within one file, :func:`edsr.io.download.download` resumes from its ``.part`` file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from edsr.datasets.catalogue import DataSetEntry, ImageFile, ImageFiles
from edsr.errors import EdsrError, ImageError, one_line
from edsr.io.atomic import atomic_write
from edsr.io.download import UnreachableHosts, download, offline
from edsr.io.image import Image, read_image, write_png

__all__ = ["fetch_images", "images_on_disk", "pixel_digest"]

# The largest of these images is well under 1 MiB; a server streaming without end stops here.
_MAX_IMAGE = 64 << 20


def pixel_digest(image: Image) -> str:
    """SHA-256 of decoded pixels: a line naming the shape and sample type, then the samples
    row by row (then alpha, if any). A BMP and the PNG made from it without loss agree."""
    px = image.pixels
    h, w, c = px.shape
    alpha = "" if image.alpha is None else "+alpha"
    d = hashlib.sha256(f"{w}x{h}x{c}{alpha} {px.dtype}\n".encode())
    d.update(np.ascontiguousarray(px).tobytes())
    if image.alpha is not None:
        d.update(np.ascontiguousarray(image.alpha).tobytes())
    return d.hexdigest()


def _hr(root: Path, entry: DataSetEntry) -> Path:
    return root / entry.folder / "HR"


def _spec(entry: DataSetEntry) -> ImageFiles:
    if entry.images is None:
        raise ValueError(f"{entry.name} is not published image by image")
    return entry.images


def images_on_disk(entry: DataSetEntry, root: Path) -> int:
    """How many of the set's images are in place (present, not checked)."""
    hr = _hr(root, entry)
    return sum((hr / f"{f.name}.png").is_file() for f in _spec(entry).files)


def _check(path: Path, f: ImageFile) -> tuple[Image | None, str]:
    """The decoded image when its pixels are ``f``'s, else None and why not."""
    try:
        image = read_image(path)
    except ImageError as e:
        return None, f"not a readable image: {one_line(e, limit=120)}"
    got = pixel_digest(image)
    if got == f.pixels:
        return image, ""
    h, w = image.pixels.shape[:2]
    if (w, h) != (f.width, f.height):
        return None, f"pixel hash mismatch: {w}x{h} pixels, expected {f.width}x{f.height}"
    return None, f"pixel hash mismatch: got {got[:16]}..., expected {f.pixels[:16]}..."


def _publish(raw: Path, image: Image, out: Path, *, keep: bool) -> None:
    """Put verified ``raw`` in place as ``out``: moved when it is a PNG already (its bytes
    kept), else encoded as PNG from the pixels just checked."""
    if raw.suffix.lower() == ".png":
        with atomic_write(out, overwrite=True) as tmp:
            (shutil.copyfile if keep else os.replace)(raw, tmp)
        return
    write_png(out, image.pixels, overwrite=True)
    if not keep:
        raw.unlink(missing_ok=True)


def _fetch_one(
    f: ImageFile,
    out: Path,
    raw: Path,
    urls: list[str],
    *,
    timeout: float,
    keep: bool,
    hosts: UnreachableHosts,
) -> str | None:
    """Fetch and check one image: None when it is in place, else why not in one line, or ""
    when nothing but the network stood in the way (offline, or every host given up): that is
    said once, for the whole set, not once per image."""
    reasons: list[str] = []
    if raw.is_file():  # placed by hand, or kept by --keep-archives
        image, why = _check(raw, f)
        if image is not None:
            _publish(raw, image, out, keep=keep)
            return None
        reasons.append(f"{raw} ({why})")
    for url in [] if offline() else urls:
        if hosts.why(url):
            continue
        _, failures = download(
            [url],
            raw,
            size=None,
            checksum=None,
            label=raw.name,
            timeout=timeout,
            progress=False,
            max_bytes=_MAX_IMAGE,
            hosts=hosts,
        )
        if failures:
            if not hosts.why(url):  # a host that cannot be reached is the set's failure
                reasons.extend(failures)
            continue
        image, why = _check(raw, f)
        if image is not None:
            _publish(raw, image, out, keep=keep)
            return None
        raw.unlink(missing_ok=True)  # wrong pixels: never kept, never continued
        reasons.append(f"{url} ({why})")
    return f"{f.name}: {'; '.join(reasons)}" if reasons else ""


def fetch_images(
    entry: DataSetEntry,
    root: Path,
    *,
    mirror: str | None,
    progress: bool,
    timeout: float,
    keep_files: bool,
    hosts: UnreachableHosts | None = None,
) -> int:
    """Put every image of ``entry`` in place under ``root``; return how many there are.

    Each image is taken from ``mirror`` (``MIRROR/FOLDER/FILE``) first, if given, then from
    the published addresses; a file already in ``root/downloads/FOLDER/`` is used when its
    pixels verify. A host that cannot be reached is tried once (``hosts``, shared by a run's
    downloads, remembers it), so a set whose host is down fails in about the time of one
    address. Images that fail are reported together, after all others were tried, in one
    :class:`~edsr.errors.EdsrError`; the verified ones stay for the next run.
    """
    from tqdm import tqdm

    spec = _spec(entry)
    hosts = hosts if hosts is not None else UnreachableHosts()
    hr = _hr(root, entry)
    downloads = root / "downloads" / entry.folder
    failed: list[str] = []  # images that failed for a reason of their own
    missing = 0  # images not in place, for whatever reason
    with tqdm(
        spec.files,
        desc=entry.name,
        unit=" images",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    ) as bar:
        for f in bar:
            out = hr / f"{f.name}.png"
            if out.is_file() and _check(out, f)[0] is not None:
                continue
            file = PurePosixPath(f.path).name
            urls = [f"{mirror}{entry.folder}/{file}"] if mirror else []
            urls += [base + f.path for base in spec.base_urls]
            why = _fetch_one(
                f, out, downloads / file, urls, timeout=timeout, keep=keep_files, hosts=hosts
            )
            if why is None:
                continue
            missing += 1
            if why:
                failed.append(why)
                if progress:
                    bar.write(f"{entry.name}: {why}", file=sys.stderr)
    if not keep_files or missing:
        with contextlib.suppress(OSError):
            downloads.rmdir()  # only when empty: a .part file of another run stays
    if missing:
        sources = ([mirror] if mirror else []) + list(spec.base_urls)
        raise EdsrError(_not_fetched(entry, root, missing, failed, hosts.describe(sources)))
    return len(spec.files)


def _not_fetched(
    entry: DataSetEntry, root: Path, missing: int, failed: list[str], dead: str
) -> str:
    """The one line for a set with ``missing`` images not in place: why (the network once,
    else the first image's own reason), what is kept (only what is), and what to do."""
    n = len(_spec(entry).files)
    why = []
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        why.append(f"{failed[0]}{more}")
    if offline():
        why.append("EDSR_OFFLINE is set, so no address was tried")
    elif dead:
        why.append(f"cannot reach {dead}")
    have = n - missing
    kept = f" The {have} verified ones are in {_hr(root, entry)}." if have else ""
    they = "one of them" if ";" in dead else "it"
    when = f" once {they} can be reached" if dead and not offline() else ""
    return (
        f"could not get {missing} of {n} images of {entry.name}: {'; '.join(why)}.{kept} "
        f"Run `edsr data download {entry.name}` again{when}, or with a mirror that holds "
        f"them (--mirror URL), or place the files by hand in "
        f"{root / 'downloads' / entry.folder} (they are checked by their decoded pixels)"
    )
