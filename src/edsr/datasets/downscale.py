"""``edsr downscale``: a folder of HR images into the benchmark layout, LR by MATLAB bicubic.

``OUT/HR/{stem}.png`` is the HR image as given (a PNG's bytes copied, anything else written as
PNG with the same pixels): evaluation crops it per scale itself. ``OUT/LR_bicubic/X{s}/
{stem}x{s}.png`` is :func:`edsr.resize.bicubic_lr`, the function ``edsr eval`` and ``edsr
train`` call when a data set has no LR files, so a folder made here scores exactly what the
built-in LR making scores. ``OUT/.edsr-downscale.json`` records, per image, the SHA-256 of
the HR file and the size of each LR image written: a rerun skips an image whose record, HR
hash and output sizes all still hold, and redoes anything else.
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

from edsr.errors import EdsrError, ImageError
from edsr.io.atomic import atomic_open, atomic_write
from edsr.io.cache import sha256_file
from edsr.io.datasets import find_dataset
from edsr.io.image import read_image, to_8bit, write_png
from edsr.models import check_scales
from edsr.resize import bicubic_lr, mod_crop

__all__ = ["MANIFEST", "DownscaleReport", "downscale_folder"]

MANIFEST = ".edsr-downscale.json"
# Bump when the LR images made here change, so records of older ones are not trusted.
_VERSION = 1


@dataclass
class DownscaleReport:
    """What a run did: images written, images already done, and one line per failure."""

    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def _lr_path(out: Path, stem: str, scale: int) -> Path:
    return out / "LR_bicubic" / f"X{scale}" / f"{stem}x{scale}.png"


def _png_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError):
        return None


def _make_one(hr: str, out: str, scales: tuple[int, ...], digest: str) -> dict:
    """Write one image's HR copy and LR images; return its manifest record."""
    src, root = Path(hr), Path(out)
    img = read_image(src)
    pixels = to_8bit(img.pixels)  # what evaluation reads, so the LR is made from the same
    dst = root / "HR" / f"{src.stem}.png"
    if not (dst.exists() and dst.resolve() == src.resolve()):
        if src.suffix.lower() == ".png":
            with open(src, "rb") as f, atomic_open(dst, overwrite=True) as g:
                shutil.copyfileobj(f, g, 1 << 20)
        else:
            write_png(dst, img.pixels, img.alpha, overwrite=True, icc_profile=img.icc_profile)
    sizes = {}
    for s in scales:
        if min(mod_crop(pixels, s).shape[:2]) == 0:
            h, w = pixels.shape[:2]
            raise ImageError(f"{src} ({w}x{h}) is smaller than the scale x{s}")
        lr = bicubic_lr(pixels, s)
        write_png(_lr_path(root, src.stem, s), lr, overwrite=True)
        sizes[str(s)] = [lr.shape[1], lr.shape[0]]
    return {"sha256": digest, "lr_sizes": sizes}


def _is_done(record: object, digest: str, out: Path, stem: str, scales: Sequence[int]) -> bool:
    if not isinstance(record, dict) or record.get("sha256") != digest:
        return False
    sizes = record.get("lr_sizes", {})
    if not (out / "HR" / f"{stem}.png").is_file():
        return False
    for s in scales:
        want = sizes.get(str(s))
        if want is None or list(_png_size(_lr_path(out, stem, s)) or ()) != want:
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
) -> DownscaleReport:
    """Make the benchmark layout in ``out`` from the HR images of ``hr_dir``.

    ``hr_dir`` is a folder of images (searched recursively), a benchmark folder (its ``HR/``)
    or a DIV2K folder. ``jobs`` processes work in parallel (default: the core count). An
    unreadable image is reported, counted in ``failed`` and left out; everything written is
    written atomically.
    """
    from tqdm import tqdm

    scales = check_scales(scales)
    files = find_dataset(hr_dir, what="HR").hr_files
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise EdsrError(
                f"{f} and {stems[f.stem]} would both be written as HR/{f.stem}.png; "
                "rename one or downscale the folders separately"
            )
        stems[f.stem] = f
    root = Path(out)
    manifest_path = root / MANIFEST
    records = _read_manifest(manifest_path)
    report = DownscaleReport()
    todo: list[tuple[Path, str]] = []
    for f in files:
        digest = sha256_file(f)
        if _is_done(records.get(f.stem), digest, root, f.stem, scales):
            report.skipped += 1
        else:
            todo.append((f, digest))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
    bar = tqdm(total=len(todo), desc="downscale", unit="img", disable=not progress, file=sys.stderr)

    def done(f: Path, result: dict | BaseException) -> None:
        if isinstance(result, EdsrError):
            report.failed.append(str(result))
            tqdm.write(f"skipped: {result}", file=sys.stderr)
        elif isinstance(result, BaseException):
            raise result
        else:
            records[f.stem] = result
            report.written += 1
        bar.update(1)

    try:
        if jobs == 1:
            for f, digest in todo:
                try:
                    done(f, _make_one(str(f), str(root), scales, digest))
                except EdsrError as e:
                    done(f, e)
        else:
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded torch process
            with concurrent.futures.ProcessPoolExecutor(
                jobs, mp_context=ctx, initializer=_init_worker
            ) as pool:
                futures = {pool.submit(_make_one, str(f), str(root), scales, d): f for f, d in todo}
                for fut in concurrent.futures.as_completed(futures):
                    exc = fut.exception()
                    done(futures[fut], exc if exc is not None else fut.result())
    finally:
        bar.close()
        if todo:  # what finished is recorded even when the run stops part-way
            with atomic_write(manifest_path, overwrite=True) as tmp:
                payload = {"version": _VERSION, "images": records}
                tmp.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
    return report
