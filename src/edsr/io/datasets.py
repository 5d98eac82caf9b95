"""Folders of images: the one place that knows the layouts evaluation and training read, and
how any folder is scanned for images (``find_images``, for upscaling too).

- benchmark: ``Set5/HR/*.png`` with optional ``Set5/LR_bicubic/X{s}/{stem}x{s}.png``;
- DIV2K: ``DIV2K_{split}_HR/`` beside ``DIV2K_{split}_LR_bicubic/X{s}/``;
- flat: any folder of images, searched recursively, with no LR images.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edsr.errors import EdsrError, ImageError, one_line
from edsr.io.image import IMAGE_EXTENSIONS

Layout = Literal["benchmark", "div2k", "folder"]

#: ``skip(root, path)``: True for a file or folder found under the scanned folder ``root`` that
#: a scan must not read (see :func:`own_outputs`).
Skip = Callable[[Path, Path], bool]


def within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies under it (both real paths, as strings)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def own_outputs(
    folder: str | os.PathLike[str], written: Callable[[Path], bool], *, tree: bool = True
) -> Skip:
    """What a command writing into ``folder`` must not read back: outputs are never inputs.

    With ``tree``, the whole of ``folder`` when it lies strictly inside the scanned folder
    (``upscale d -o d/out``: a rerun must not upscale ``d/out``, whatever scale wrote it).
    Anywhere under ``folder`` (``-o d`` itself, or ``folder`` above the scanned one), the files
    for which ``written(path)`` is true: the names the command gives its results.
    """
    out = os.path.realpath(folder)

    def skip(root: Path, path: Path) -> bool:
        # where the entry lives, not where a symlink points
        p = os.path.join(os.path.realpath(path.parent), path.name)
        if not within(p, out):
            return False
        r = os.path.realpath(root)
        return (tree and out != r and within(out, r)) or written(path)

    return skip


@dataclass(frozen=True)
class DataSet:
    """Ground-truth (HR) images and, when the data set ships them, its bicubic LR images."""

    name: str
    kind: Layout
    hr_files: tuple[Path, ...]
    lr_root: Path | None  # holds X2/, X3/, ... with <stem>x<s>.<ext>

    def lr_path(self, hr: Path, scale: int) -> Path | None:
        """The data set's own LR image of ``hr`` at ``scale``, or None (make it by bicubic)."""
        if self.lr_root is None:
            return None
        folder = self.lr_root / f"X{scale}"
        for ext in (hr.suffix, ".png", ".jpg"):  # .jpg: `edsr downscale --jpeg`
            cand = folder / f"{hr.stem}x{scale}{ext}"
            if cand.is_file():
                return cand
        return None

    def check_lr(self, scale: int) -> None:
        """Refuse a data set that ships LR images at ``scale`` for some HR images but not for
        all: scoring the missing ones on computed LR images would mix two protocols."""
        if self.lr_root is None:
            return
        missing = [hr for hr in self.hr_files if self.lr_path(hr, scale) is None]
        if not missing or len(missing) == len(self.hr_files):
            return
        folder = self.lr_root / f"X{scale}"
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EdsrError(
            f"{folder / f'{missing[0].stem}x{scale}.png'} is missing{more}, but the other LR "
            f"images at x{scale} are given; restore it, or remove {folder} to make every LR "
            "image by bicubic"
        )


def _images_in(folder: Path, skip: Skip | None = None) -> tuple[Path, ...]:
    """The images directly in ``folder`` (an HR folder is flat), sorted by name."""
    return tuple(
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not (skip is not None and skip(folder, p))
    )


def find_dataset(
    path: str | os.PathLike[str],
    *,
    split: str = "valid",
    what: str = "data",
    skip: Skip | None = None,
) -> DataSet:
    """Recognise the layout of the data set folder ``path``.

    ``split`` chooses among several ``DIV2K_*_HR`` folders (``valid`` for evaluation, ``train``
    for training). ``what`` names the folder in messages ("training", "validation", "data").
    A folder that is missing is an :class:`EdsrError`; one that holds no image, an
    :class:`~edsr.errors.ImageError` (an EdsrError) from :func:`edsr.io.image.no_images_error`.
    ``skip`` (see :func:`own_outputs`) leaves out what the caller itself writes there, an
    ``HR/`` folder included (then the folder is read as a flat one).
    """
    root = Path(path)
    if not root.exists():
        raise EdsrError(f"{what} directory {root} does not exist")
    if not root.is_dir():
        raise EdsrError(f"{what} directory {root} is not a directory; give a folder of images")
    if root.name == "HR" and not (root / "HR").is_dir():
        root = root.parent  # the user pointed at Set5/HR rather than Set5
    div2k_hr = sorted(p for p in root.glob("DIV2K_*_HR") if p.is_dir())
    if root.name.startswith("DIV2K_") and root.name.endswith("_HR"):
        div2k_hr, root = [root], root.parent
    kind: Layout
    lr: Path | None
    if div2k_hr:
        hr_dir = next((d for d in div2k_hr if f"_{split}_" in d.name), div2k_hr[0])
        files = _images_in(hr_dir, skip)
        lr = root / hr_dir.name.replace("_HR", "_LR_bicubic")
        kind, name = "div2k", "DIV2K"
    elif (root / "HR").is_dir() and not (skip is not None and skip(root, root / "HR")):
        files = _images_in(root / "HR", skip)
        lr = root / "LR_bicubic"
        kind, name = "benchmark", root.name
    else:
        try:
            files = tuple(find_images([root], skip=skip))
        except ImageError:
            files = ()
        lr = None
        kind, name = "folder", root.name
    if not files:
        layouts = [
            f"DIV2K_{split}_HR/ (DIV2K layout)",
            "HR/ (benchmark layout)",
            f"{FLAT_LAYOUT} (a flat folder)",
        ]
        raise no_images_error(root, what, layouts)
    return DataSet(name, kind, files, lr if lr is not None and lr.is_dir() else None)


#: How :func:`find_images` reads a folder, in the words of :func:`no_images_error`.
FLAT_LAYOUT = "image files in it or its subfolders"


def no_images_error(
    folder: str | os.PathLike[str], what: str, layouts: Sequence[str]
) -> ImageError:
    """The one error for a folder in which no image was found, wherever a folder is read
    (train, validation, eval, upscale): it names the folder and every layout tried."""
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    tried = "; ".join(layouts)
    return ImageError(
        f"no images in {what} directory {folder}: tried {tried} (suffixes: {exts}); check the path"
    )


def find_images(paths: Sequence[str | os.PathLike[str]], *, skip: Skip | None = None) -> list[Path]:
    """Expand files and directories into a list of image files.

    Directories are scanned recursively for files whose suffix (any case) is in
    IMAGE_EXTENSIONS, skipping hidden files and directories, and what ``skip(folder, path)``
    refuses (a command's own outputs, :func:`own_outputs`); each directory's result is sorted.
    Files named explicitly are kept whatever their suffix. Duplicates are dropped, keeping the
    first occurrence.
    """
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise ImageError(f"{p}: no such file or directory; check the path") from None
        except OSError as e:
            raise ImageError(f"{p}: cannot access it ({one_line(e.strerror or e)})") from None
        if not stat.S_ISDIR(st.st_mode):
            found.append(p)
            continue
        images = _scan_dir(p, skip)
        if not images:
            raise no_images_error(p, "input", [FLAT_LAYOUT])
        found.extend(images)
    seen: set[str] = set()
    unique = []
    for p in found:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _scan_dir(root: Path, skip: Skip | None = None) -> list[Path]:
    def fail(e: OSError) -> None:
        where = e.filename or root
        raise ImageError(f"{where}: cannot read directory ({one_line(e.strerror or e)})")

    def keep(path: Path) -> bool:
        return skip is None or not skip(root, path)

    images = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        # hidden folders and skipped ones (an output tree) are pruned, not walked
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and keep(Path(dirpath, d))]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                if keep(Path(dirpath, name)):
                    images.append(Path(dirpath, name))
    # Sort on path components so the order is the same whatever os.walk returned.
    return sorted(images, key=lambda q: q.relative_to(root).parts)
