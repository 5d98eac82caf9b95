"""Reading and writing images; the formats this package takes are tabled in :mod:`edsr.io.formats`.

Everything is turned into an :class:`Image`: ``pixels`` of shape (H, W, C) with C = 1 (gray) or 3
(RGB), dtype uint8 or uint16, an optional (H, W) ``alpha`` of the same dtype, and the ICC colour
profile the file carried, written back when the image is saved.

16-bit colour PNGs go through this package's own codec (:mod:`edsr.io.png`), as Pillow reduces
them to 8 bits; everything else through Pillow. Files are written by the one atomic writer
(:mod:`edsr.io.atomic`). Every failure a user can cause raises :class:`~edsr.errors.ImageError`
with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast, overload

import numpy as np
import PIL.Image
from PIL import ImageOps, UnidentifiedImageError

from edsr.errors import EdsrError, ImageError, one_line
from edsr.io.atomic import atomic_write_stream
from edsr.io.formats import (
    IMAGE_EXTENSIONS,
    KEEPS_ICC,
    MAX_PIXELS_ENV,
    OUTPUT_EXTENSIONS,
    PIL_WRITERS,
    PILLOW_FORMATS,
    first_frame_note,
    frame_count,
    max_side,
    normal_suffix,
)
from edsr.io.png import (
    PNG_MAX_SIDE,
    PNG_SIGNATURE,
    PngError,
    as_libpng_reads_it,
    encode_png,
    parse_png,
    peek_header,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "OUTPUT_EXTENSIONS",
    "PILLOW_FORMATS",
    "Image",
    "first_frame_note",
    "frame_count",
    "max_side",
    "read_image",
    "to_8bit",
    "write_image",
    "write_png",
]


def to_8bit(samples: np.ndarray) -> np.ndarray:
    """8-bit samples for 8- or 16-bit ones: 0..65535 rounded to the nearest of 0..255."""
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype != np.uint16:
        raise ValueError(f"expected uint8 or uint16 samples, got {samples.dtype}")
    return ((samples.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


_EXIF_ORIENTATION = 0x0112


@dataclass(eq=False)  # eq on arrays would be ambiguous; compare .pixels explicitly instead
class Image:
    """Decoded pixels: ``pixels`` (H, W, C) with C in {1, 3}, ``alpha`` (H, W) or None.

    Both arrays share one dtype, uint8 or uint16. ``icc_profile`` is the colour profile the
    file carried (the ICC bytes), None for none; :func:`write_image` writes it back.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None
    icc_profile: bytes | None = None

    def __post_init__(self) -> None:
        # Invalid arrays here are programming errors, not user errors, hence ValueError.
        p = self.pixels
        if not isinstance(p, np.ndarray) or p.ndim != 3 or p.shape[2] not in (1, 3):
            raise ValueError(
                f"pixels must be an (H, W, 1) or (H, W, 3) array, got {getattr(p, 'shape', p)!r}"
            )
        if p.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {p.dtype}")
        a = self.alpha
        if a is not None and (
            not isinstance(a, np.ndarray) or a.shape != p.shape[:2] or a.dtype != p.dtype
        ):
            raise ValueError(
                f"alpha must be an {p.shape[:2]} {p.dtype} array, got "
                f"{getattr(a, 'shape', a)!r} {getattr(a, 'dtype', '')}"
            )
        if self.icc_profile is not None and not isinstance(self.icc_profile, bytes):
            raise ValueError(f"icc_profile must be bytes, got {type(self.icc_profile).__name__}")

    @property
    def max_value(self) -> int:
        """The largest representable sample: 255 for uint8, 65535 for uint16."""
        return 255 if self.pixels.dtype == np.uint8 else 65535

    @property
    def gray(self) -> bool:
        """True for single-channel images."""
        return self.pixels.shape[2] == 1


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_UNNAMED = "the image"


def read_image(
    source: str | os.PathLike[str] | bytes | BinaryIO, *, name: str | None = None
) -> Image:
    """Read an image from a file, its bytes or a binary stream, applying its EXIF orientation.

    8-bit images come back as uint8, 16-bit PNGs (gray and colour) and 16-bit TIFFs as uint16.
    Palette, bilevel, CMYK, YCbCr and other modes are converted to gray or RGB; transparency
    (alpha channel, PNG tRNS) becomes ``alpha``; the ICC profile becomes ``icc_profile``. Of an
    animated GIF or a multi-page TIFF the first frame is read, with one ``UserWarning``.
    ``name`` is what error messages call the image (default: the path, else "the image").
    """
    _apply_pixel_limit_from_env()
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _read_bytes(bytes(source), name or _UNNAMED)
    if not isinstance(source, (str, os.PathLike)):
        return _read_bytes(source.read(), name or _UNNAMED)
    p = Path(source)
    label = name or str(p)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(f"{label}: file does not exist; check the path") from None
    except PermissionError:
        raise ImageError(f"{label}: permission denied; check the file's permissions") from None
    except OSError as e:
        raise ImageError(f"{label}: cannot access the file ({one_line(e.strerror)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{label}: is a directory, not an image; pass an image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end; this tool only reads regular files.
        raise ImageError(f"{label}: is not a regular file; pass an image file")
    if st.st_size == 0:
        raise ImageError(f"{label}: is an empty file (0 bytes); re-export or re-download it")
    try:
        with open(p, "rb") as f:
            head = f.read(33)
            if head.startswith(PNG_SIGNATURE):
                return _read_bytes(head + f.read(), label)
            f.seek(0)
            return _read_with_pillow(f, label)
    except PermissionError:
        raise ImageError(f"{label}: permission denied; check the file's permissions") from None
    except OSError as e:
        # Only the file system gets here: Pillow's OSErrors are turned into ImageError below.
        raise ImageError(f"{label}: cannot read the file ({one_line(e.strerror or e)})") from None


def _read_bytes(data: bytes, label: str) -> Image:
    if not data:
        raise ImageError(f"{label}: is an empty file (0 bytes); re-export or re-download it")
    if _png_needs_own_decoder(data[:33]):
        return _decode_png(data, label)
    try:
        if data.startswith(PNG_SIGNATURE):  # CRCs as libpng and edsr.io.png check them
            data = as_libpng_reads_it(data)
    except PngError as e:
        raise ImageError(
            f"{label}: PNG file is truncated or corrupt ({e}); re-export or re-download it"
        ) from None
    return _read_with_pillow(io.BytesIO(data), label)


_PILLOW_DEFAULT_MAX_PIXELS = PIL.Image.MAX_IMAGE_PIXELS


def _apply_pixel_limit_from_env() -> None:
    """Apply ``EDSR_MAX_IMAGE_PIXELS`` to Pillow's decompression-bomb limit, if it is set."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        # Restore Pillow's own limit, so unsetting the variable takes effect in this process.
        PIL.Image.MAX_IMAGE_PIXELS = _PILLOW_DEFAULT_MAX_PIXELS
        return
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise ImageError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a positive whole number of pixels; fix or unset it"
        )
    PIL.Image.MAX_IMAGE_PIXELS = value


def _bomb_error(p: str, pixels: int | None) -> ImageError:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    what = f"has {pixels} pixels" if pixels is not None else "has too many pixels"
    hint = f"{MAX_PIXELS_ENV}={pixels}" if pixels is not None else MAX_PIXELS_ENV
    return ImageError(
        f"{p}: {what}, above the limit of {limit} (a guard against decompression bombs); "
        f"if you trust the file, raise the limit by setting the environment variable {hint}"
    )


# Pillow plugins report malformed data with a variety of exception types.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)


def _read_with_pillow(f: BinaryIO, p: str) -> Image:
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x the limit; treat that as the limit too.
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            im = PIL.Image.open(f)
            if im.width == 0 or im.height == 0:
                raise ImageError(f"{p}: image has zero size ({im.width}x{im.height} pixels)")
            frames = frame_count(im)  # before load(): counting seeks, which drops the pixels
            im.load()  # force a full decode here so truncation is reported at read time
        except UnidentifiedImageError:
            raise ImageError(
                f"{p}: not an image, or in a format that cannot be read; "
                "pass a PNG, JPEG, BMP, TIFF, WebP or GIF file"
            ) from None
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _bomb_error(p, int(m.group(1)) if m else None) from None
        except _DECODE_ERRORS as e:
            raise ImageError(
                f"{p}: file is truncated or corrupt ({one_line(e)}); re-export or re-download it"
            ) from None
    if frames > 1:
        warnings.warn(f"{p}: {first_frame_note(im.format or '', frames)}", UserWarning, 2)
    icc = im.info.get("icc_profile")
    # Broken EXIF metadata should not make intact pixels unreadable: keep them as stored.
    with contextlib.suppress(*_DECODE_ERRORS, TypeError):
        ImageOps.exif_transpose(im, in_place=True)
    image = _from_pillow(im, p)
    if isinstance(icc, bytes):
        image.icc_profile = _matching_profile(icc, gray=image.gray)
    return image


def _from_pillow(im: PIL.Image.Image, p: str) -> Image:
    """Convert a loaded Pillow image to an :class:`Image` (gray or RGB, optional alpha)."""
    mode = im.mode
    # PNG/GIF tRNS: a transparent colour key (L, RGB) or per-entry palette alpha (P).
    has_trns = "transparency" in im.info
    if mode == "1":
        im, mode = im.convert("L"), "L"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        gray = np.array(im).astype(np.uint16)  # astype: big-endian I;16B -> native order
        return _gray16_with_key(gray, im.info.get("transparency") if has_trns else None)
    if mode == "I":
        arr = np.array(im)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ImageError(
                f"{p}: 32-bit integer image with values outside 0..65535 is not supported "
                "(it is not converted); save it as an 8- or 16-bit image first"
            )
        return _gray16_with_key(
            arr.astype(np.uint16), im.info.get("transparency") if has_trns else None
        )
    if mode == "F":
        raise ImageError(
            f"{p}: 32-bit floating-point image is not supported (it is not converted, as its "
            "value range is unknown); save it as an 8- or 16-bit image first"
        )
    if mode == "L" and has_trns:
        im, mode = im.convert("LA"), "LA"
    elif mode == "RGB" and has_trns:
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode == "P":
        transparent = has_trns or (im.palette is not None and im.palette.mode == "RGBA")
        mode = "RGBA" if transparent else "RGB"
        im = im.convert(mode)
    elif mode in ("PA", "La", "RGBa"):
        mode = "LA" if mode == "La" else "RGBA"
        im = im.convert(mode)
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        mode = "RGB"  # CMYK, YCbCr, LAB, HSV, RGBX, ...
        try:
            im = im.convert(mode)
        except ValueError:
            raise ImageError(
                f"{p}: pixel mode {im.mode} is not supported; save it as an 8-bit RGB image first"
            ) from None
    arr = np.array(im)
    if mode == "L":
        return Image(arr[:, :, None])
    if mode == "RGB":
        return Image(arr)
    # LA / RGBA: split off the alpha channel into its own contiguous array.
    return Image(np.ascontiguousarray(arr[:, :, :-1]), np.ascontiguousarray(arr[:, :, -1]))


def _gray16_with_key(gray: np.ndarray, key: object) -> Image:
    pixels = gray[:, :, None]
    if not isinstance(key, int):
        return Image(pixels)
    return Image(pixels, np.where(gray == key, 0, 65535).astype(np.uint16))


# --------------------------------------------------------------------------------------------
# 16-bit colour PNGs, through edsr.io.png
# --------------------------------------------------------------------------------------------


def _png_needs_own_decoder(head: bytes) -> bool:
    """True for PNGs Pillow would mangle: 16-bit colour (types 2/4/6) or a zero-size IHDR."""
    # Pillow handles 16-bit gray (type 0) itself; types 2/4/6 it would reduce to 8 bits, and a
    # zero width/height it reports as "not an image" rather than as what it is.
    h = peek_header(head)
    if h is None:
        return False
    return h.width == 0 or h.height == 0 or (h.depth == 16 and h.colour_type in (2, 4, 6))


def _decode_png(data: bytes, p: str) -> Image:
    """Decode a non-interlaced 8- or 16-bit gray/gray+alpha/RGB/RGBA PNG with edsr.io.png.

    Only 16-bit colour PNGs are routed here by :func:`read_image`.
    """
    try:
        png = parse_png(data)
        h = png.header
        if h.width == 0 or h.height == 0:
            raise ImageError(f"{p}: image has zero size ({h.width}x{h.height} pixels)")
        if h.interlaced:
            raise ImageError(
                f"{p}: interlaced {h.depth}-bit colour PNGs are not supported; "
                "re-save it without interlacing"
            )
        limit = PIL.Image.MAX_IMAGE_PIXELS
        if limit is not None and h.width * h.height > limit:
            raise _bomb_error(p, h.width * h.height)  # before inflating anything
        arr = png.samples()
    except PngError as e:
        raise ImageError(
            f"{p}: PNG file is truncated or corrupt ({e}); re-export or re-download it"
        ) from None

    channels = h.channels
    key = png.chunk(b"tRNS")
    if channels in (2, 4):
        pixels, alpha = arr[:, :, :-1].copy(), arr[:, :, -1].copy()
    else:
        pixels, alpha = arr, None
        if key is not None and len(key) == 2 * channels:
            # tRNS on gray/RGB: one colour is fully transparent, everything else opaque.
            key_values = np.array(struct.unpack(f">{channels}H", key))
            opaque = np.any(pixels != key_values, axis=2)
            alpha = np.where(opaque, (1 << h.depth) - 1, 0).astype(pixels.dtype)
    orientation = _exif_orientation(png.chunk(b"eXIf"))
    return Image(
        _orient(pixels, orientation),
        None if alpha is None else _orient(alpha, orientation),
        _matching_profile(png.icc_profile(), gray=pixels.shape[2] == 1),
    )


def _matching_profile(icc: bytes | None, *, gray: bool) -> bytes | None:
    """``icc`` if it describes the pixels as they are now (RGB or gray), else None.

    A CMYK or Lab image is converted to RGB without its profile, which describes the old data.
    """
    if not icc or len(icc) < 20:
        return None
    space = icc[16:20]  # the header's data colour space
    return icc if space == (b"GRAY" if gray else b"RGB ") else None


def _exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1
    try:
        info = PIL.Image.Exif()
        info.load(exif)
        value = info.get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken eXIf chunk should not make the pixels unreadable
        return 1
    return value if isinstance(value, int) else 1


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an (H, W[, C]) array as ImageOps.exif_transpose does."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    overwrite: bool = False,
    icc_profile: bytes | None = None,
) -> Path:
    """Write an 8- or 16-bit PNG (gray, gray+alpha, RGB or RGBA) atomically; return its path.

    ``pixels`` is (H, W), (H, W, 1) or (H, W, 3), uint8 or uint16; ``alpha`` is (H, W) of the
    same dtype. Raises ImageError if ``path`` exists and ``overwrite`` is False.
    """
    encode = _png_encoder(_samples(pixels, alpha), icc_profile)
    return _write_file(Path(path), encode, overwrite)


def _png_encoder(samples: np.ndarray, icc: bytes | None) -> Callable[[BinaryIO], None]:
    def encode(f: BinaryIO) -> None:
        if samples.dtype == np.uint16:
            encode_png(f, samples, icc_profile=icc)  # Pillow cannot write 16-bit colour PNGs
        else:
            options = {"icc_profile": icc} if icc else {}
            _pil_from_samples(samples).save(f, format="PNG", compress_level=6, **options)

    return encode


@overload
def write_image(
    target: str | os.PathLike[str],
    image: Image,
    *,
    format: str | None = None,
    overwrite: bool = False,
    reduce_to_8bit: bool = False,
    name: str | None = None,
) -> Path: ...


@overload
def write_image(
    target: BinaryIO,
    image: Image,
    *,
    format: str | None = None,
    overwrite: bool = False,
    reduce_to_8bit: bool = False,
    name: str | None = None,
) -> None: ...


def write_image(
    target: str | os.PathLike[str] | BinaryIO,
    image: Image,
    *,
    format: str | None = None,
    overwrite: bool = False,
    reduce_to_8bit: bool = False,
    name: str | None = None,
) -> Path | None:
    """Write ``image`` as PNG, JPEG, WebP, BMP or TIFF, with its ICC profile if it has one.

    ``target`` is a path (written atomically; an existing file is replaced only with
    ``overwrite``; returns the path) or a binary stream (returns None). The format is
    ``format`` ("png", "jpeg", ".webp", ...), else the path's suffix. Only PNG stores 16-bit
    samples: for the others 16-bit images are refused, or rounded to 8 bits (:func:`to_8bit`)
    with ``reduce_to_8bit``. Only PNG, WebP and TIFF store alpha. ``name`` is what error
    messages call the output (default: the path, else "the image").
    """
    dest = Path(target) if isinstance(target, (str, os.PathLike)) else None
    label = name or (str(dest) if dest is not None else _UNNAMED)
    if format is not None:
        suffix = normal_suffix(format)
    elif dest is not None:
        suffix = dest.suffix.lower()
    else:
        raise ValueError("write_image to a stream needs format=")
    if suffix not in OUTPUT_EXTENSIONS:
        allowed = ", ".join(sorted(OUTPUT_EXTENSIONS))
        raise ImageError(
            f"{label}: cannot write '{suffix or '(no suffix)'}' files; "
            f"use one of these suffixes: {allowed}"
        )
    pixels, alpha, icc = image.pixels, image.alpha, image.icc_profile
    if suffix == ".png":
        encode = _png_encoder(_samples(pixels, alpha), icc)
    else:
        fmt, options, keeps_alpha, largest = PIL_WRITERS[suffix]
        if pixels.dtype != np.uint8:
            if not reduce_to_8bit:
                raise ImageError(
                    f"{label}: {fmt} cannot store 16-bit images; "
                    "write a .png file instead to keep 16 bits"
                )
            pixels, alpha = to_8bit(pixels), None if alpha is None else to_8bit(alpha)
        if alpha is not None and not keeps_alpha:
            raise ImageError(
                f"{label}: {fmt} cannot store transparency; "
                "write a .png, .webp or .tiff file instead"
            )
        height, width = pixels.shape[:2]
        if max(height, width) > largest:
            raise ImageError(
                f"{label}: {width}x{height} is too large for {fmt} "
                f"(at most {largest} pixels a side); write a .png file instead"
            )
        pil = _pil_from_samples(_samples(pixels, alpha))
        if icc and fmt in KEEPS_ICC:
            options = {**options, "icc_profile": icc}

        def encode(f: BinaryIO) -> None:
            pil.save(f, format=fmt, **options)

    if dest is None:
        encode(cast(BinaryIO, target))
        return None
    return _write_file(dest, encode, overwrite)


def _write_file(dest: Path, encode: Callable[[BinaryIO], None], overwrite: bool) -> Path:
    """Write through the one atomic writer, its messages raised as ImageError."""
    try:
        return atomic_write_stream(dest, encode, overwrite=overwrite)
    except ImageError:
        raise
    except EdsrError as e:
        raise ImageError(str(e)) from None


def _samples(pixels: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """Validate and stack pixels (+ alpha) into one (H, W, 1..4) array."""
    if not isinstance(pixels, np.ndarray):
        raise TypeError(f"pixels must be a numpy array, got {type(pixels).__name__}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W), (H, W, 1) or (H, W, 3), got {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be uint8 or uint16, got {pixels.dtype}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"cannot write an empty image of shape {pixels.shape}")
    if pixels.shape[0] > PNG_MAX_SIDE or pixels.shape[1] > PNG_MAX_SIDE:
        raise ValueError(f"image of shape {pixels.shape} is too large for PNG")
    if alpha is None:
        return pixels
    if not isinstance(alpha, np.ndarray) or alpha.shape != pixels.shape[:2]:
        raise ValueError(f"alpha must have shape {pixels.shape[:2]}")
    if alpha.dtype != pixels.dtype:
        raise ValueError(f"alpha dtype {alpha.dtype} differs from pixels dtype {pixels.dtype}")
    return np.concatenate([pixels, alpha[:, :, None]], axis=2)


def _pil_from_samples(samples: np.ndarray) -> PIL.Image.Image:
    # fromarray picks L / LA / RGB / RGBA from the channel count of a uint8 array.
    s = samples[:, :, 0] if samples.shape[2] == 1 else samples
    return PIL.Image.fromarray(np.ascontiguousarray(s))
