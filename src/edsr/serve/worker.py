"""What a worker does with one upload: check its header, decode, upscale, encode.

Runs in a worker thread of :class:`edsr.serve.jobs.JobQueue`; reports progress and stops
through the job's ``on_tile`` / ``should_stop``. Decoding and encoding are the house's own
(:mod:`edsr.io.image`: EXIF orientation, 16-bit, ICC profiles, the first frame of animations),
so the server and the command line treat an image the same way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

import numpy as np
import PIL.Image

from edsr.degrade import jpeg_quality
from edsr.errors import EdsrError, one_line
from edsr.inference import Model, upscale
from edsr.io.image import (
    IMAGE_EXTENSIONS,
    PILLOW_FORMATS,
    Image,
    frame_count,
    max_side,
    read_image,
    write_image,
)
from edsr.resize import imresize_np
from edsr.serve.jobs import Job


class OutputFormat(str, enum.Enum):
    """What a result can be encoded as ("jpg" and any case are taken for "jpeg")."""

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @classmethod
    def _missing_(cls, value: object) -> OutputFormat | None:
        text = str(value).strip().lower()
        return cls.jpeg if text == "jpg" else next((m for m in cls if m.value == text), None)

    @property
    def suffix(self) -> str:
        return ".jpg" if self is OutputFormat.jpeg else f".{self.value}"

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


_SPOOL_BYTES = 8 * 2**20  # results up to this size stay in memory; larger ones go to tmp_dir


class UnsupportedImage(EdsrError):
    """The upload is not an image, or not in a format the house reads."""


class ImageRejected(EdsrError):
    """The upload is an image this server will not take: corrupt, too many pixels, or a result
    its output format cannot hold."""


def _format_list() -> str:
    return "one of " + ", ".join(sorted(IMAGE_EXTENSIONS))


@dataclass(frozen=True)
class Header:
    """What an image's header says, read before any pixel is decoded."""

    format: str
    width: int
    height: int
    alpha: bool
    frames: int
    jpeg_quality: int | None = None  # a JPEG's, read from its tables: the default route's input


def inspect(upload: BinaryIO, max_pixels: int) -> Header:
    """Check the header: a small file claiming a huge image is refused before decoding."""
    try:
        with PIL.Image.open(upload) as im:
            fmt, (w, h), mode, info = im.format or "", im.size, im.mode, im.info
            quality = jpeg_quality(im)
            frames = frame_count(im)
    except PIL.UnidentifiedImageError:
        raise UnsupportedImage(
            f"not an image, or in a format that cannot be read; send {_format_list()}"
        ) from None
    except PIL.Image.DecompressionBombError:
        raise ImageRejected(_too_many_pixels(None, max_pixels)) from None
    except Exception as e:  # a damaged header; Pillow raises many types
        raise ImageRejected(f"the image is corrupt ({one_line(e)})") from None
    finally:
        upload.seek(0)
    if fmt not in PILLOW_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not supported; send {_format_list()}")
    if w * h > max_pixels:
        raise ImageRejected(_too_many_pixels((w, h), max_pixels))
    if w == 0 or h == 0:
        raise ImageRejected(f"the image has zero size ({w}x{h})")
    alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in info
    return Header(fmt, w, h, alpha, frames, quality)


def check_output(header: Header, scale: int, fmt: OutputFormat) -> None:
    """Refuse, before any work, a result the output format cannot hold."""
    w, h = header.width * scale, header.height * scale
    if max(w, h) > max_side(fmt.suffix):
        raise ImageRejected(
            f"the {w}x{h} result is too large for {fmt.value.upper()} "
            f"(at most {max_side(fmt.suffix)} pixels a side); ask for png"
        )
    if fmt is OutputFormat.jpeg and header.alpha:
        raise ImageRejected("JPEG cannot store transparency; ask for png or webp")


def _too_many_pixels(size: tuple[int, int] | None, limit: int) -> str:
    what = f"{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels" if size else "too many pixels"
    return (
        f"the image has {what}, above this server's limit of {limit:,} pixels (--max-pixels); "
        "send a smaller image"
    )


@dataclass
class Result:
    """An encoded image in a (possibly spooled) temporary file, at offset 0."""

    file: BinaryIO
    size: int
    width: int
    height: int

    def close(self) -> None:
        self.file.close()


def upscale_upload(
    job: Job,
    upload: BinaryIO,
    model: Model | None,
    scale: int,
    *,
    ensemble: bool,
    fmt: OutputFormat,
    max_memory: int,
    tmp_dir: str | None,
) -> Result:
    """Decode ``upload``, upscale it with ``model`` (None: bicubic) and encode it as ``fmt``."""
    try:
        img = read_image(upload)  # errors name it "the image", never a server path
        pixels = img.pixels
        if img.alpha is not None:
            pixels = np.concatenate([img.pixels, img.alpha[:, :, None]], axis=2)
        if model is None:
            job.on_tile(0, 1)
            out = _bicubic(pixels, scale)
            job.on_tile(1, 1)
        else:
            out = upscale(
                pixels, model, scale, max_memory=max_memory, ensemble=ensemble,
                on_tile=job.on_tile, should_stop=job.should_stop,
            )  # fmt: skip
        del pixels
        job.encoding()
        c = 1 if out.shape[2] in (1, 2) else 3
        rgb, alpha = out[:, :, :c], (out[:, :, c] if out.shape[2] in (2, 4) else None)
        result = Image(
            np.ascontiguousarray(rgb),
            None if alpha is None else np.ascontiguousarray(alpha),
            icc_profile=img.icc_profile,
        )
        del out, rgb, alpha, img
        # Closed by the caller once sent (or dropped): it outlives this function.
        f = cast(BinaryIO, tempfile.SpooledTemporaryFile(_SPOOL_BYTES, dir=tmp_dir))  # noqa: SIM115
        try:
            # JPEG and WebP hold 8 bits: 16-bit results are rounded to them
            write_image(f, result, format=fmt.value, reduce_to_8bit=True)
            size = f.tell()
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return Result(f, size, result.pixels.shape[1], result.pixels.shape[0])
    finally:
        _release_memory()


def _bicubic(pixels: np.ndarray, scale: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return imresize_np(pixels, scale)
    out = imresize_np(pixels.astype(np.float32), scale)
    return np.clip(np.round(out), 0, 65535).astype(np.uint16)


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only
        return trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_malloc_trim() if sys.platform.startswith("linux") else None


def _release_memory() -> None:
    """Hand the freed heap back to the system after each job.

    glibc keeps what a job freed in its arenas, and with images of ever new sizes the
    fragments pile up. Measured with benchmarks/load_serve.py (300 requests, 2 workers,
    edsr-baseline x2 on 48-72 pixel inputs): without this call the server's peak RSS grew from
    483 MB in the first half of the run to 616 MB in the second; with it, 374 MB then 375 MB.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
