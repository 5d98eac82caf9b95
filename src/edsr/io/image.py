"""Reading and writing images for the super-resolution tool.

Everything is turned into an :class:`Image`: ``pixels`` of shape (H, W, C) with C = 1 (gray) or 3
(RGB), dtype uint8 or uint16, and an optional (H, W) ``alpha`` of the same dtype.

Pillow silently reduces 16-bit colour PNGs to 8 bits and cannot write them at all, so this module
carries a small PNG decoder/encoder for 16-bit colour (and 16-bit gray+alpha) PNGs. Every failure
a user can cause raises :class:`~edsr.errors.ImageError` with a one-line message naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import PIL.Image
from PIL import ImageOps, UnidentifiedImageError

from edsr.errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS_ENV",
    "Image",
    "find_images",
    "max_side",
    "to_8bit",
    "read_image",
    "write_image",
    "write_png",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

#: Environment variable that, when set, replaces ``PIL.Image.MAX_IMAGE_PIXELS`` at read time.
MAX_PIXELS_ENV = "EDSR_MAX_IMAGE_PIXELS"

# Output formats other than PNG, written by Pillow (8-bit only). The save options favour quality:
# an upscaled image is the product, so Pillow's default JPEG quality (75, 4:2:0 chroma) is too lossy.
_PIL_WRITERS: dict[str, tuple[str, dict[str, object], bool, int]] = {
    # suffix: (Pillow format, save options, can store alpha, largest width/height)
    ".jpg": ("JPEG", {"quality": 95, "subsampling": 0}, False, 65535),
    ".jpeg": ("JPEG", {"quality": 95, "subsampling": 0}, False, 65535),
    ".webp": ("WEBP", {"quality": 95}, True, 16383),
    ".bmp": ("BMP", {}, False, 2**31 - 1),  # Pillow reads 32-bit BMPs back without their alpha
    ".tif": ("TIFF", {}, True, 2**31 - 1),
    ".tiff": ("TIFF", {}, True, 2**31 - 1),
}

_PNG_MAX_SIDE = 2**31 - 1


def max_side(suffix: str) -> int:
    """Largest width or height a file with this suffix can hold (PNG for unknown suffixes)."""
    entry = _PIL_WRITERS.get(suffix.lower())
    return entry[3] if entry is not None else _PNG_MAX_SIDE


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

    Both arrays share one dtype, uint8 or uint16.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None = None

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


def read_image(path: str | os.PathLike[str]) -> Image:
    """Read an image file, applying its EXIF orientation.

    8-bit images come back as uint8, 16-bit PNGs (gray and colour) and 16-bit TIFFs as uint16.
    Palette, bilevel, CMYK, YCbCr and other modes are converted to gray or RGB; transparency
    (alpha channel, PNG tRNS) becomes ``alpha``.
    """
    p = Path(path)
    _apply_pixel_limit_from_env()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(f"{p}: file does not exist; check the path") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied; check the file's permissions") from None
    except OSError as e:
        raise ImageError(f"{p}: cannot access the file ({_oneline(e.strerror)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{p}: is a directory, not an image; pass an image file")
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or device would block or never end; this tool only reads regular files.
        raise ImageError(f"{p}: is not a regular file; pass an image file")
    if st.st_size == 0:
        raise ImageError(f"{p}: is an empty file (0 bytes); re-export or re-download it")
    try:
        with open(p, "rb") as f:
            head = f.read(33)
            if _png_needs_own_decoder(head):
                return _decode_png(head + f.read(), p)
            f.seek(0)
            return _read_with_pillow(f, p)
    except PermissionError:
        raise ImageError(f"{p}: permission denied; check the file's permissions") from None
    except OSError as e:
        # Only the file system gets here: Pillow's OSErrors are turned into ImageError below.
        raise ImageError(f"{p}: cannot read the file ({_oneline(e.strerror or e)})") from None


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


def _bomb_error(p: Path, pixels: int | None) -> ImageError:
    limit = PIL.Image.MAX_IMAGE_PIXELS
    what = f"has {pixels} pixels" if pixels is not None else "has too many pixels"
    hint = f"{MAX_PIXELS_ENV}={pixels}" if pixels is not None else MAX_PIXELS_ENV
    return ImageError(
        f"{p}: {what}, above the limit of {limit} (a guard against decompression bombs); "
        f"if you trust the file, raise the limit by setting the environment variable {hint}"
    )


# Pillow plugins report malformed data with a variety of exception types.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)


def _read_with_pillow(f: BinaryIO, p: Path) -> Image:
    with warnings.catch_warnings():
        # Pillow only warns between 1x and 2x the limit; treat that as the limit too.
        warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
        try:
            im = PIL.Image.open(f)
            if im.width == 0 or im.height == 0:
                raise ImageError(f"{p}: image has zero size ({im.width}x{im.height} pixels)")
            im.load()  # force a full decode here so truncation is reported at read time
        except UnidentifiedImageError:
            raise ImageError(
                f"{p}: not an image, or in a format that cannot be read; "
                "pass a PNG, JPEG, BMP, TIFF or WebP file"
            ) from None
        except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
            m = re.search(r"\((\d+) pixels\)", str(e))
            raise _bomb_error(p, int(m.group(1)) if m else None) from None
        except _DECODE_ERRORS as e:
            raise ImageError(
                f"{p}: file is truncated or corrupt ({_oneline(e)}); re-export or re-download it"
            ) from None
    # Broken EXIF metadata should not make intact pixels unreadable: keep them as stored.
    with contextlib.suppress(*_DECODE_ERRORS, TypeError):
        ImageOps.exif_transpose(im, in_place=True)
    return _from_pillow(im, p)


def _from_pillow(im: PIL.Image.Image, p: Path) -> Image:
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


def _oneline(text: object) -> str:
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Minimal PNG codec (for what Pillow cannot do: 16-bit colour and 16-bit gray+alpha)
# --------------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel


class _PngError(Exception):
    """Malformed PNG data; turned into ImageError by :func:`_decode_png`."""


def _png_needs_own_decoder(head: bytes) -> bool:
    """True for PNGs Pillow would mangle: 16-bit colour (types 2/4/6) or a zero-size IHDR."""
    # IHDR is always the first chunk: width, height, bit depth, colour type at bytes 16..25.
    # Pillow handles 16-bit gray (type 0) itself; types 2/4/6 it would reduce to 8 bits, and a
    # zero width/height it reports as "not an image" rather than as what it is.
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return False
    width, height, depth, ctype = struct.unpack(">IIBB", head[16:26])
    return width == 0 or height == 0 or (depth == 16 and ctype in (2, 4, 6))


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG byte string into (type, body) chunks, checking lengths and CRCs."""
    if not data.startswith(_PNG_SIGNATURE):
        raise _PngError("not a PNG signature")
    chunks = []
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise _PngError("file ends inside a chunk header (truncated)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise _PngError(f"file ends inside the {ctype.decode('latin-1')} chunk (truncated)")
        body = data[pos + 8 : end - 4]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        pos = end
        if zlib.crc32(ctype + body) != crc:
            if ctype[0] & 0x20:  # ancillary chunk: drop it, as libpng does by default
                continue
            raise _PngError(f"CRC mismatch in the {ctype.decode('latin-1')} chunk")
        chunks.append((ctype, body))
        if ctype == b"IEND":
            break
    return chunks


def _decode_png(data: bytes, p: Path) -> Image:
    """Decode a non-interlaced 8- or 16-bit gray/gray+alpha/RGB/RGBA PNG.

    Only 16-bit colour PNGs are routed here by :func:`read_image`; 8-bit support exists so the
    filter code can be checked against Pillow on real files.
    """
    try:
        chunks = _png_chunks(data)
        if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
            raise _PngError("missing IHDR chunk")
        width, height, depth, ctype, compression, filter_method, interlace = struct.unpack(
            ">IIBBBBB", chunks[0][1]
        )
        if width == 0 or height == 0:
            raise ImageError(f"{p}: image has zero size ({width}x{height} pixels)")
        if ctype not in _PNG_CHANNELS or depth not in (8, 16):
            raise _PngError(f"unsupported bit depth {depth} / colour type {ctype}")
        if compression != 0 or filter_method != 0 or interlace not in (0, 1):
            raise _PngError("invalid IHDR")
        if interlace:
            raise ImageError(
                f"{p}: interlaced {depth}-bit colour PNGs are not supported; "
                "re-save it without interlacing"
            )
        limit = PIL.Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            raise _bomb_error(p, width * height)  # before inflating anything

        idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
        if not idat:
            raise _PngError("no image data (truncated)")
        channels = _PNG_CHANNELS[ctype]
        bpp = channels * depth // 8  # bytes per pixel, the filters' left-neighbour distance
        expected = height * (1 + width * bpp)
        # max_length bounds memory even for a hostile stream; extra trailing data is ignored
        # as libpng does.
        raw = zlib.decompressobj().decompress(idat, expected)
        if len(raw) < expected:
            raise _PngError("image data ends early (truncated)")
        rows = np.frombuffer(raw, np.uint8).reshape(height, 1 + width * bpp)
        flat = _unfilter(rows, width, bpp)
        if depth == 16:
            arr = flat.view(">u2").reshape(height, width, channels).astype(np.uint16)
        else:
            arr = flat.reshape(height, width, channels)

        key = next((body for kind, body in chunks if kind == b"tRNS"), None)
        exif = next((body for kind, body in chunks if kind == b"eXIf"), None)
    except _PngError as e:
        raise ImageError(
            f"{p}: PNG file is truncated or corrupt ({e}); re-export or re-download it"
        ) from None
    except zlib.error as e:
        raise ImageError(
            f"{p}: PNG file is corrupt ({_oneline(e)}); re-export or re-download it"
        ) from None

    if channels in (2, 4):
        pixels, alpha = arr[:, :, :-1].copy(), arr[:, :, -1].copy()
    else:
        pixels, alpha = arr, None
        if key is not None and len(key) == 2 * channels:
            # tRNS on gray/RGB: one colour is fully transparent, everything else opaque.
            key_values = np.array(struct.unpack(f">{channels}H", key))
            opaque = np.any(pixels != key_values, axis=2)
            alpha = np.where(opaque, (1 << depth) - 1, 0).astype(pixels.dtype)
    orientation = _exif_orientation(exif)
    return Image(
        _orient(pixels, orientation), None if alpha is None else _orient(alpha, orientation)
    )


def _unfilter(rows: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo the PNG row filters: ``rows`` is (H, 1 + stride) uint8 with the filter byte first."""
    height = rows.shape[0]
    types = rows[:, 0]
    if types.max() > 4:
        raise _PngError(f"unknown filter type {int(types.max())}")
    data = rows[:, 1:]
    out = np.empty_like(data)
    # Average and Paeth (3, 4) depend on the reconstructed left neighbour, so they cannot be
    # vectorised along a row; the span from the first to the last such row is decoded by
    # anti-diagonals (all five types), the rows around it run by run.
    slow = np.flatnonzero(types >= 3)
    first, last = (slow[0], slow[-1] + 1) if slow.size else (height, height)
    _unfilter_fast(data, types, out, 0, first, width, bpp)
    if first < last:
        prior = out[first - 1] if first else np.zeros(data.shape[1], np.uint8)
        out[first:last] = _unfilter_diagonal(data[first:last], types[first:last], prior, bpp)
    _unfilter_fast(data, types, out, last, height, width, bpp)
    return out


def _unfilter_fast(
    data: np.ndarray,
    types: np.ndarray,
    out: np.ndarray,
    start: int,
    stop: int,
    width: int,
    bpp: int,
) -> None:
    """Undo None/Sub/Up filters on rows start..stop, a run of equal types at a time."""
    if start >= stop:
        return
    bounds = [start, *(start + 1 + np.flatnonzero(np.diff(types[start:stop]))), stop]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        block = data[a:b]
        if types[a] == 0:
            out[a:b] = block
        elif types[a] == 1:  # Sub: running sum along each byte lane of the row (mod 256)
            n = b - a
            out[a:b] = np.cumsum(block.reshape(n, width, bpp), axis=1, dtype=np.uint8).reshape(
                n, -1
            )
        else:  # Up: running sum down the columns, starting from the row above (mod 256)
            prior = out[a - 1] if a else np.zeros(data.shape[1], np.uint8)
            out[a:b] = np.cumsum(block, axis=0, dtype=np.uint8) + prior


def _unfilter_diagonal(
    block: np.ndarray, types: np.ndarray, prior: np.ndarray, bpp: int
) -> np.ndarray:
    """Undo any mix of the five filters, one anti-diagonal of pixels at a time.

    Pixel (r, c) depends on its left, upper and upper-left neighbours, all on earlier
    anti-diagonals (smaller r + c), so each diagonal is one vectorised step: H + W - 1 numpy
    steps instead of H * W Python ones.
    """
    n = block.shape[0]
    width = block.shape[1] // bpp
    raw = block.reshape(n, width, bpp).astype(np.int16)
    # recon[r + 1, c + 1] is pixel (r, c); row 0 holds the prior row, column 0 is zero padding.
    recon = np.zeros((n + 1, width + 1, bpp), np.int16)
    recon[0, 1:] = prior.reshape(width, bpp)
    kind = types.astype(np.int16)[:, None]
    for d in range(n + width - 1):
        r = np.arange(max(0, d - width + 1), min(n - 1, d) + 1)
        c = d - r
        left = recon[r + 1, c]
        up = recon[r, c + 1]
        upleft = recon[r, c]
        t = kind[r]
        pa = np.abs(up - upleft)  # = |p - left| with p = left + up - upleft
        pb = np.abs(left - upleft)  # = |p - up|
        pc = np.abs(left + up - 2 * upleft)  # = |p - upleft|
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        pred = np.where(
            t == 4,
            paeth,
            np.where(t == 3, (left + up) >> 1, np.where(t == 2, up, np.where(t == 1, left, 0))),
        )
        recon[r + 1, c + 1] = (raw[r, c] + pred) & 0xFF
    return recon[1:, 1:].reshape(n, width * bpp).astype(np.uint8)


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


def _write_chunk(f: BinaryIO, ctype: bytes, body: bytes) -> None:
    f.write(struct.pack(">I", len(body)) + ctype + body)
    f.write(struct.pack(">I", zlib.crc32(ctype + body)))


_FILTER_COST = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)
_ROWS_PER_BLOCK = 256  # bounds the encoder's temporary arrays for large images
_IDAT_SIZE = 1 << 20


def _encode_png(f: BinaryIO, samples: np.ndarray) -> None:
    """Write ``samples`` (H, W, 1-4) uint8/uint16 as a gray/gray+alpha/RGB/RGBA PNG.

    Each row gets filter None, Sub or Up, whichever has the smallest sum of absolute signed
    bytes (libpng's heuristic); zlib level 6.
    """
    height, width, channels = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * depth // 8
    data = np.ascontiguousarray(samples, dtype=">u2" if depth == 16 else np.uint8)
    data = data.reshape(height, width * channels).view(np.uint8)  # (H, stride) big-endian bytes

    f.write(_PNG_SIGNATURE)
    _write_chunk(f, b"IHDR", struct.pack(">IIBBBBB", width, height, depth, ctype, 0, 0, 0))
    compressor = zlib.compressobj(6)
    pending: list[bytes] = []
    pending_size = 0
    for start in range(0, height, _ROWS_PER_BLOCK):
        block = data[start : start + _ROWS_PER_BLOCK]
        above = data[start - 1 : start] if start else np.zeros((1, data.shape[1]), np.uint8)
        sub = block.copy()
        sub[:, bpp:] -= block[:, :-bpp]
        up = block - np.concatenate([above, block[:-1]])
        candidates = np.stack([block, sub, up])  # filter types 0, 1, 2
        choice = _FILTER_COST[candidates].sum(axis=2, dtype=np.uint64).argmin(axis=0)
        filtered = np.empty((block.shape[0], 1 + block.shape[1]), np.uint8)
        filtered[:, 0] = choice
        filtered[:, 1:] = candidates[choice, np.arange(block.shape[0])]
        piece = compressor.compress(filtered.tobytes())
        pending.append(piece)
        pending_size += len(piece)
        if pending_size >= _IDAT_SIZE:
            _write_chunk(f, b"IDAT", b"".join(pending))
            pending, pending_size = [], 0
    pending.append(compressor.flush())
    _write_chunk(f, b"IDAT", b"".join(pending))
    _write_chunk(f, b"IEND", b"")


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_png(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Write an 8- or 16-bit PNG (gray, gray+alpha, RGB or RGBA) atomically; return its path.

    ``pixels`` is (H, W), (H, W, 1) or (H, W, 3), uint8 or uint16; ``alpha`` is (H, W) of the
    same dtype. Raises ImageError if ``path`` exists and ``overwrite`` is False.
    """
    samples = _samples(pixels, alpha)
    dest = Path(path)

    def encode(f: BinaryIO) -> None:
        if samples.dtype == np.uint16:
            _encode_png(f, samples)  # Pillow cannot write 16-bit colour or gray+alpha PNGs
        else:
            _pil_from_samples(samples).save(f, format="PNG", compress_level=6)

    return _atomic_write(dest, encode, overwrite=overwrite)


def write_image(path: str | os.PathLike[str], image: Image, *, overwrite: bool = False) -> Path:
    """Write ``image`` in the format its suffix names (.png, .jpg/.jpeg, .webp, .bmp, .tif/.tiff).

    Only PNG stores 16-bit samples; only PNG, WebP and TIFF store alpha. Atomic, and refuses to
    replace an existing file unless ``overwrite`` is True. Returns the written path.
    """
    dest = Path(path)
    suffix = dest.suffix.lower()
    if suffix == ".png":
        return write_png(dest, image.pixels, image.alpha, overwrite=overwrite)
    if suffix not in _PIL_WRITERS:
        allowed = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageError(
            f"{dest}: cannot write '{dest.suffix or '(no suffix)'}' files; "
            f"use one of these suffixes: {allowed}"
        )
    fmt, options, keeps_alpha, max_side = _PIL_WRITERS[suffix]
    if image.pixels.dtype != np.uint8:
        raise ImageError(
            f"{dest}: {fmt} cannot store 16-bit images; write a .png file instead to keep 16 bits"
        )
    if image.alpha is not None and not keeps_alpha:
        raise ImageError(
            f"{dest}: {fmt} cannot store transparency; write a .png, .webp or .tiff file instead"
        )
    height, width = image.pixels.shape[:2]
    if max(height, width) > max_side:
        raise ImageError(
            f"{dest}: {width}x{height} is too large for {fmt} (at most {max_side} pixels a side); "
            "write a .png file instead"
        )
    pil = _pil_from_samples(_samples(image.pixels, image.alpha))
    return _atomic_write(dest, lambda f: pil.save(f, format=fmt, **options), overwrite=overwrite)


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
    if pixels.shape[0] >= 2**31 or pixels.shape[1] >= 2**31:
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


def _exists_error(dest: Path) -> ImageError:
    return ImageError(f"{dest}: file exists; pass --overwrite to replace it")


def _write_error(dest: Path, e: OSError) -> ImageError:
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ImageError(
            f"{dest}: disk full while writing; free some space or write somewhere else"
        )
    if isinstance(e, PermissionError):
        return ImageError(
            f"{dest}: permission denied while writing; choose a directory you can write to"
        )
    if e.errno == errno.EROFS:
        return ImageError(f"{dest}: file system is read-only; write somewhere else")
    return ImageError(f"{dest}: cannot write the file ({_oneline(e.strerror or e)})")


def _atomic_write(dest: Path, encode: Callable[[BinaryIO], None], *, overwrite: bool) -> Path:
    """Write via a hidden temporary file in the destination directory, then move it in place.

    Readers never see a partial file, and on any failure (including KeyboardInterrupt) the
    temporary file is removed and the destination is left as it was.
    """
    if dest.is_dir():
        raise ImageError(f"{dest}: is a directory; give an output file name")
    if not overwrite and os.path.lexists(dest):
        raise _exists_error(dest)
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ImageError(f"{parent}: exists and is not a directory; choose another path") from None
    except OSError as e:
        raise _write_error(dest, e) from None

    tmp, fd = _create_temp(parent, dest)
    try:
        with os.fdopen(fd, "wb") as f:
            encode(f)
            f.flush()
            os.fsync(f.fileno())  # the data must be on disk before the rename makes it visible
        if overwrite:
            os.replace(tmp, dest)
        else:
            _publish_no_overwrite(tmp, dest)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(dest, e) from None
        raise
    _fsync_dir(parent)
    return dest


def _create_temp(parent: Path, dest: Path) -> tuple[Path, int]:
    # os.open with mode 0o666 lets the umask decide permissions, as for any new file
    # (tempfile.mkstemp would leave the result readable only by its owner).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = parent / f".{dest.name}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        except OSError as e:
            raise _write_error(dest, e) from None
    raise ImageError(f"{dest}: could not create a temporary file next to it; clean up {parent}")


def _publish_no_overwrite(tmp: Path, dest: Path) -> None:
    """Move ``tmp`` to ``dest`` unless ``dest`` appeared meanwhile."""
    try:
        # link() fails if dest exists, so a file created since the first check is never lost.
        os.link(tmp, dest)
    except FileExistsError:
        raise _exists_error(dest) from None
    except (OSError, NotImplementedError, AttributeError):
        # No hard links here (FAT, some network file systems): re-check right before replace.
        if os.path.lexists(dest):
            raise _exists_error(dest) from None
        os.replace(tmp, dest)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself; best effort (not possible on every OS / file system)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Finding inputs
# --------------------------------------------------------------------------------------------


def find_images(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and directories into a list of image files.

    Directories are scanned recursively for files whose suffix (any case) is in
    IMAGE_EXTENSIONS, skipping hidden files and directories; each directory's result is sorted.
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
            raise ImageError(f"{p}: cannot access it ({_oneline(e.strerror or e)})") from None
        if not stat.S_ISDIR(st.st_mode):
            found.append(p)
            continue
        images = _scan_dir(p)
        if not images:
            raise ImageError(
                f"{p}: directory contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                "check the path"
            )
        found.extend(images)
    seen: set[str] = set()
    unique = []
    for p in found:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _scan_dir(root: Path) -> list[Path]:
    def fail(e: OSError) -> None:
        where = e.filename or root
        raise ImageError(f"{where}: cannot read directory ({_oneline(e.strerror or e)})")

    images = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden dirs
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                images.append(Path(dirpath, name))
    # Sort on path components so the order is the same whatever os.walk returned.
    return sorted(images, key=lambda q: q.relative_to(root).parts)
