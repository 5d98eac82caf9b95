"""``edsr downscale``: a folder of HR images into the benchmark layout, LR by MATLAB bicubic.

``OUT/HR/{stem}.png`` is the HR image as given (a PNG's bytes copied, anything else written as
PNG with the same pixels): evaluation crops it per scale itself. ``OUT/LR_bicubic/X{s}/
{stem}x{s}.png`` is :func:`edsr.resize.bicubic_lr`, the function ``edsr eval`` and ``edsr
train`` call when a data set has no LR files, so a folder made here scores exactly what the
built-in LR making scores. ``OUT/.edsr-downscale.json`` records, per image, the SHA-256 of
the HR file and the size of each LR image written: a rerun skips an image whose record, HR
hash and output sizes all still hold, and redoes anything else.

``jpeg=Q`` (``edsr downscale --jpeg Q``) writes each LR image as ``{stem}x{s}.jpg`` instead,
saved by Pillow at quality ``Q`` with its default 4:2:0 chroma: the bytes :mod:`edsr.degrade`
makes for ``jpeg:Q``, so ``edsr eval`` on that folder scores what ``edsr eval --degrade
jpeg:Q`` scores on the HR images, and other tools can score the same files. A JPEG has no
alpha, so none is kept; the LR file of the other kind is removed, so one folder never holds both.

``OUT`` may be the input folder or lie inside it: the ``HR/`` and ``LR_bicubic/`` written there
(all of ``OUT``, when inside) are never read back as input images. An image with alpha keeps
it in its LR images (bicubic of the alpha, beside the colour LR that evaluation reads).
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edsr.degrade import jpeg_image
from edsr.errors import EdsrError, ImageError
from edsr.io.atomic import atomic_open, atomic_write
from edsr.io.cache import sha256_file
from edsr.io.datasets import DataSet, find_dataset, own_outputs, within
from edsr.io.image import read_image, to_8bit, write_png
from edsr.models import check_scales
from edsr.resize import bicubic_lr, mod_crop
from edsr.validators import int_in_range

__all__ = ["MANIFEST", "DownscaleReport", "WriteFailed", "downscale_folder"]

MANIFEST = ".edsr-downscale.json"
# Bump when the LR images made here change, so records of older ones are not trusted.
_VERSION = 1


@dataclass
class DownscaleReport:
    """What a run did: images written, images already done, and one line per failure."""

    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def _lr_path(out: Path, stem: str, scale: int, jpeg: int | None = None) -> Path:
    return out / "LR_bicubic" / f"X{scale}" / f"{stem}x{scale}.{'png' if jpeg is None else 'jpg'}"


def _image_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


class WriteFailed(EdsrError):
    """Writing into the output folder failed (disk full, permissions): the run stops, since
    the next image would fail the same way; unlike an unreadable input, which is skipped."""


def _make_one(
    hr: str, out: str, scales: tuple[int, ...], digest: str, jpeg: int | None = None
) -> dict:
    """Write one image's HR copy and LR images; return its manifest record.

    An image refused (unreadable, smaller than a scale) is refused before anything of it is
    written; a failed write raises :class:`WriteFailed`."""
    src, root = Path(hr), Path(out)
    img = read_image(src)
    pixels = to_8bit(img.pixels)  # what evaluation reads, so the LR is made from the same
    too_small = [s for s in scales if min(mod_crop(pixels, s).shape[:2]) == 0]
    if too_small:
        h, w = pixels.shape[:2]
        raise ImageError(f"{src} ({w}x{h}) is smaller than the scale x{too_small[0]}")
    alpha = None if img.alpha is None else to_8bit(img.alpha)[:, :, None]
    dst = root / "HR" / f"{src.stem}.png"
    sizes = {}
    try:
        if not (dst.exists() and dst.resolve() == src.resolve()):
            if src.suffix.lower() == ".png":
                with open(src, "rb") as f, atomic_open(dst, overwrite=True) as g:
                    shutil.copyfileobj(f, g, 1 << 20)
            else:
                write_png(dst, img.pixels, img.alpha, overwrite=True, icc_profile=img.icc_profile)
        for s in scales:
            lr = bicubic_lr(pixels, s)
            if jpeg is None:
                lr_alpha = None if alpha is None else bicubic_lr(alpha, s)[:, :, 0]
                write_png(_lr_path(root, src.stem, s), lr, lr_alpha, overwrite=True)
            else:
                with atomic_open(_lr_path(root, src.stem, s, jpeg), overwrite=True) as f:
                    jpeg_image(lr).save(f, format="JPEG", quality=jpeg)
            written = _lr_path(root, src.stem, s, jpeg)
            written.with_suffix(".png" if jpeg else ".jpg").unlink(missing_ok=True)
            sizes[str(s)] = [lr.shape[1], lr.shape[0]]
    except (EdsrError, OSError) as e:
        raise WriteFailed(str(e)) from None
    return {"sha256": digest, "lr_sizes": sizes, "jpeg": jpeg}


def _hr_images(hr_dir: Path, out: Path) -> DataSet:
    """The input images: never the ``HR/`` and ``LR_bicubic/`` written into ``out`` (all of
    ``out`` when it lies inside ``hr_dir``), so ``downscale X -o X`` reads the user's images on
    every run, not its own copies."""
    mine = [os.path.realpath(out / "HR"), os.path.realpath(out / "LR_bicubic")]

    def written(p: Path) -> bool:
        return any(within(os.path.realpath(p), m) for m in mine)

    try:
        return find_dataset(hr_dir, what="HR", skip=own_outputs(out, written))
    except ImageError:
        if not (hr_dir / "HR").is_dir():
            raise
        # a benchmark folder downscaled into itself: its HR/ is the input and the output
        return find_dataset(hr_dir, what="HR")


def _is_done(
    record: object, digest: str, out: Path, stem: str, scales: Sequence[int], jpeg: int | None
) -> bool:
    if not isinstance(record, dict) or record.get("sha256") != digest:
        return False
    if record.get("jpeg") != jpeg:
        return False
    sizes = record.get("lr_sizes", {})
    if not (out / "HR" / f"{stem}.png").is_file():
        return False
    for s in scales:
        want = sizes.get(str(s))
        if want is None or list(_image_size(_lr_path(out, stem, s, jpeg)) or ()) != want:
            return False
    return True


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one image per process; more threads would only contend


def _read_manifest(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        if data.get("version") == _VERSION and isinstance(data.get("images"), dict):
            return data["images"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def downscale_folder(
    hr_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    scales: Sequence[int],
    *,
    jobs: int | None = None,
    progress: bool = True,
    jpeg: int | None = None,
) -> DownscaleReport:
    """Make the benchmark layout in ``out`` from the HR images of ``hr_dir``.

    ``hr_dir`` is a folder of images (searched recursively), a benchmark folder (its ``HR/``)
    or a DIV2K folder. ``jobs`` processes work in parallel (default: the core count). An
    unreadable image is reported, counted in ``failed`` and left out; a failed write (a full
    disk) stops the run with :class:`WriteFailed`; everything written is written atomically,
    and the record of the images finished is kept either way.
    """
    from tqdm import tqdm

    scales = check_scales(scales)
    if jpeg is not None:
        int_in_range(jpeg, "JPEG quality", minimum=1, maximum=100)
    root = Path(out)
    files = _hr_images(Path(hr_dir), root).hr_files
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise EdsrError(
                f"{f} and {stems[f.stem]} would both be written as HR/{f.stem}.png; "
                "rename one or downscale the folders separately"
            )
        stems[f.stem] = f
    manifest_path = root / MANIFEST
    records = _read_manifest(manifest_path)
    report = DownscaleReport()
    todo: list[tuple[Path, str]] = []
    for f in files:
        digest = sha256_file(f)
        if _is_done(records.get(f.stem), digest, root, f.stem, scales, jpeg):
            report.skipped += 1
        else:
            todo.append((f, digest))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=len(todo), desc="downscale", unit="img", disable=not progress, file=sys.stderr)

    def done(f: Path, result: dict | BaseException) -> None:
        if isinstance(result, WriteFailed):
            kept = f"{report.written} image{'s' if report.written != 1 else ''}"
            raise WriteFailed(f"{result}; stopped, the {kept} finished are kept") from None
        if isinstance(result, EdsrError):
            report.failed.append(str(result))
            tqdm.write(f"skipped: {result}", file=sys.stderr)
        elif isinstance(result, BaseException):
            raise result
        else:
            records[f.stem] = result
            report.written += 1
        bar.update(1)

    finished = False
    try:
        if jobs == 1:
            for f, digest in todo:
                try:
                    done(f, _make_one(str(f), str(root), scales, digest, jpeg))
                except EdsrError as e:
                    done(f, e)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
            with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=ctx, initializer=_init_worker
            ) as pool:
                futures = {
                    pool.submit(_make_one, str(f), str(root), scales, d, jpeg): f for f, d in todo
                }
                try:
                    for fut in concurrent.futures.as_completed(futures):
                        exc = fut.exception()
                        done(futures[fut], exc if exc is not None else fut.result())
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # a full disk: the rest would fail too
                    raise
        finished = True
    finally:
        bar.close()
        if report.written:  # what finished is recorded even when the run stops part-way
            try:
                with atomic_write(manifest_path, overwrite=True) as tmp:
                    payload = {"version": _VERSION, "images": records}
                    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
            except EdsrError:
                if finished:
                    raise
                # else the error that stopped the run (a full disk) is the one to tell
    return report
