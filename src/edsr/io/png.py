"""The PNG codec for what Pillow cannot do: 16-bit colour and 16-bit gray+alpha, both ways.

Pillow reduces 16-bit colour PNGs to 8 bits when reading and cannot write them at all. The
decoder reads non-interlaced 8- and 16-bit gray, gray+alpha, RGB and RGBA files; the encoder,
:class:`PngStripWriter`, takes the rows in bands, top to bottom, so an output too large for
memory never has to be held (:func:`encode_png` feeds it a whole image).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from edsr.errors import EdsrError

__all__ = [
    "PNG_MAX_SIDE",
    "PNG_SIGNATURE",
    "PngError",
    "PngFile",
    "PngHeader",
    "PngStripWriter",
    "encode_png",
    "as_libpng_reads_it",
    "parse_png",
    "peek_header",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MAX_SIDE = 2**31 - 1
_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
_COLOUR_TYPE = {c: t for t, c in _CHANNELS.items()}
_ICC_NAME = b"ICC Profile"  # the name Pillow gives the profiles it writes
_MAX_ICC_BYTES = 64 << 20  # bounds a hostile iCCP stream; real profiles are kilobytes


class PngError(Exception):
    """Malformed or unsupported PNG data; the caller turns it into a message naming the file."""


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PngHeader:
    width: int
    height: int
    depth: int
    colour_type: int
    interlaced: bool

    @property
    def channels(self) -> int:
        """Samples per pixel (1 to 4); KeyError for the palette type, which has none of its own."""
        return _CHANNELS[self.colour_type]


def peek_header(head: bytes) -> PngHeader | None:
    """The header of a PNG from its first 26 bytes or more; None if they are not a PNG's."""
    # IHDR is always the first chunk: width, height, depth, colour type, ..., interlace.
    if len(head) < 29 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", head[16:29])
    return PngHeader(width, height, depth, ctype, interlace != 0)


@dataclass(frozen=True)
class PngFile:
    """A PNG split into checked chunks; pixels are decoded only when :meth:`samples` is called."""

    header: PngHeader
    chunks: tuple[tuple[bytes, bytes], ...]

    def chunk(self, kind: bytes) -> bytes | None:
        """The body of the first chunk of this type, or None."""
        return next((body for k, body in self.chunks if k == kind), None)

    def icc_profile(self) -> bytes | None:
        """The ICC profile of the iCCP chunk, decompressed; None if absent or damaged."""
        body = self.chunk(b"iCCP")
        if body is None or b"\0" not in body[:80]:
            return None
        _, rest = body.split(b"\0", 1)
        if not rest or rest[0] != 0:  # compression method 0 (zlib) is the only one defined
            return None
        z = zlib.decompressobj()
        try:
            profile = z.decompress(rest[1:], _MAX_ICC_BYTES)
        except zlib.error:
            return None
        # A damaged profile is dropped, as libpng does, rather than failing the pixels.
        return profile if profile and z.eof and not z.unconsumed_tail else None

    def samples(self) -> np.ndarray:
        """Decode the pixels: (H, W, channels) uint8 or uint16 (alpha as the last channel)."""
        h = self.header
        if h.colour_type not in _CHANNELS or h.depth not in (8, 16):
            raise PngError(f"unsupported bit depth {h.depth} / colour type {h.colour_type}")
        if h.interlaced:
            raise PngError("interlaced PNGs are not supported")
        idat = b"".join(body for kind, body in self.chunks if kind == b"IDAT")
        if not idat:
            raise PngError("no image data (truncated)")
        bpp = h.channels * h.depth // 8  # bytes per pixel, the filters' left-neighbour distance
        expected = h.height * (1 + h.width * bpp)
        # max_length bounds memory even for a hostile stream; extra trailing data is ignored
        # as libpng does.
        try:
            raw = zlib.decompressobj().decompress(idat, expected)
        except zlib.error as e:
            raise PngError(f"corrupt image data: {e}") from None
        if len(raw) < expected:
            raise PngError("image data ends early (truncated)")
        rows = np.frombuffer(raw, np.uint8).reshape(h.height, 1 + h.width * bpp)
        flat = _unfilter(rows, h.width, bpp)
        if h.depth == 16:
            return flat.view(">u2").reshape(h.height, h.width, h.channels).astype(np.uint16)
        return flat.reshape(h.height, h.width, h.channels)


def chunk_bytes(ctype: bytes, body: bytes) -> bytes:
    """One chunk as stored: length, type, body, CRC."""
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def as_libpng_reads_it(data: bytes) -> bytes:
    """PNG bytes checked as libpng checks them, for a decoder that does not (Pillow checks no
    IDAT or IEND CRC, and refuses the whole file for an ancillary chunk's): :class:`PngError`
    for a bad critical chunk, the ancillary chunks with a bad CRC left out."""
    png = parse_png(data)
    if len(PNG_SIGNATURE) + sum(12 + len(body) for _, body in png.chunks) == len(data):
        return data  # nothing left out: the bytes as they are, no copy
    return PNG_SIGNATURE + b"".join(chunk_bytes(ctype, body) for ctype, body in png.chunks)


def parse_png(data: bytes) -> PngFile:
    """Split PNG bytes into chunks, checking lengths and CRCs, and read the header."""
    if not data.startswith(PNG_SIGNATURE):
        raise PngError("not a PNG signature")
    chunks = []
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise PngError("file ends inside a chunk header (truncated)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise PngError(f"file ends inside the {ctype.decode('latin-1')} chunk (truncated)")
        body = data[pos + 8 : end - 4]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        pos = end
        if zlib.crc32(ctype + body) != crc:
            if ctype[0] & 0x20:  # ancillary chunk: drop it, as libpng does by default
                continue
            raise PngError(f"CRC mismatch in the {ctype.decode('latin-1')} chunk")
        chunks.append((ctype, body))
        if ctype == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise PngError("missing IHDR chunk")
    width, height, depth, ctype_, compression, filter_method, interlace = struct.unpack(
        ">IIBBBBB", chunks[0][1]
    )
    if compression != 0 or filter_method != 0 or interlace not in (0, 1):
        raise PngError("invalid IHDR")
    return PngFile(PngHeader(width, height, depth, ctype_, interlace == 1), tuple(chunks))


def _unfilter(rows: np.ndarray, width: int, bpp: int) -> np.ndarray:
    """Undo the PNG row filters: ``rows`` is (H, 1 + stride) uint8 with the filter byte first."""
    height = rows.shape[0]
    types = rows[:, 0]
    if types.max() > 4:
        raise PngError(f"unknown filter type {int(types.max())}")
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


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------

# Cost of a filtered byte: its distance from 0 as a signed byte (libpng's heuristic).
_FILTER_COST = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)
_ROWS_PER_BLOCK = 256  # bounds the encoder's temporary arrays for large images
_IDAT_SIZE = 1 << 20


def _filter_rows(block: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    """Filter (n, stride) bytes, each row with None, Sub or Up, whichever costs least.

    ``above`` is the (1, stride) row before the block (zeros for the first row of an image).
    Returns (n, 1 + stride) bytes with the filter type first, as they go into IDAT.
    """
    sub = block.copy()
    sub[:, bpp:] -= block[:, :-bpp]
    up = block - np.concatenate([above, block[:-1]])
    candidates = np.stack([block, sub, up])  # filter types 0, 1, 2
    choice = _FILTER_COST[candidates].sum(axis=2, dtype=np.uint64).argmin(axis=0)
    filtered = np.empty((block.shape[0], 1 + block.shape[1]), np.uint8)
    filtered[:, 0] = choice
    filtered[:, 1:] = candidates[choice, np.arange(block.shape[0])]
    return filtered


class PngStripWriter:
    """Write a PNG from bands of rows, top to bottom, so the image never has to be in memory.

    Each row gets filter None, Sub or Up, whichever has the smallest sum of absolute signed
    bytes (libpng's heuristic); zlib level 6. 8- or 16-bit, 1 to 4 channels. An
    ``icc_profile`` is written as an iCCP chunk.
    """

    def __init__(
        self,
        f: BinaryIO,
        width: int,
        height: int,
        channels: int,
        dtype: np.dtype | type,
        *,
        icc_profile: bytes | None = None,
    ) -> None:
        if not (0 < width <= PNG_MAX_SIDE and 0 < height <= PNG_MAX_SIDE):
            raise EdsrError(
                f"a {width}x{height} image is too large for PNG (at most {PNG_MAX_SIDE} a side)"
            )
        if channels not in _COLOUR_TYPE:
            raise ValueError(f"a PNG has 1 to 4 channels, not {channels}")
        self.f = f
        self.width, self.height, self.channels = width, height, channels
        self.depth = 16 if np.dtype(dtype) == np.uint16 else 8
        self.bpp = channels * self.depth // 8
        self.rows_written = 0
        self._above = np.zeros((1, width * self.bpp), np.uint8)
        self._z = zlib.compressobj(6)
        self._pending: list[bytes] = []
        self._pending_size = 0
        ihdr = struct.pack(">IIBBBBB", width, height, self.depth, _COLOUR_TYPE[channels], 0, 0, 0)
        f.write(PNG_SIGNATURE)
        self._chunk(b"IHDR", ihdr)
        if icc_profile:
            self._chunk(b"iCCP", _ICC_NAME + b"\0\0" + zlib.compress(icc_profile))

    def _chunk(self, ctype: bytes, body: bytes) -> None:
        self.f.write(chunk_bytes(ctype, body))

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``rows`` of shape (h, width, channels)."""
        if rows.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"rows of shape {rows.shape} do not fit a {self.width}x{self.channels} image"
            )
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError("more rows than the image height")
        if rows.shape[0] == 0:
            return
        data = np.ascontiguousarray(rows, dtype=">u2" if self.depth == 16 else np.uint8)
        data = data.reshape(rows.shape[0], -1).view(np.uint8)  # (h, stride) big-endian bytes
        for start in range(0, data.shape[0], _ROWS_PER_BLOCK):
            block = data[start : start + _ROWS_PER_BLOCK]
            above = data[start - 1 : start] if start else self._above
            piece = self._z.compress(_filter_rows(block, above, self.bpp).tobytes())
            if piece:
                self._pending.append(piece)
                self._pending_size += len(piece)
            if self._pending_size >= _IDAT_SIZE:
                self._chunk(b"IDAT", b"".join(self._pending))
                self._pending, self._pending_size = [], 0
        self._above = data[-1:].copy()
        self.rows_written += rows.shape[0]

    def close(self) -> None:
        """Finish the file (last IDAT and IEND); every row must have been written."""
        if self.rows_written != self.height:
            raise ValueError(f"wrote {self.rows_written} of {self.height} rows")
        self._pending.append(self._z.flush())
        self._chunk(b"IDAT", b"".join(self._pending))
        self._chunk(b"IEND", b"")


def encode_png(f: BinaryIO, samples: np.ndarray, *, icc_profile: bytes | None = None) -> None:
    """Write ``samples`` (H, W, 1-4) uint8/uint16 as a gray/gray+alpha/RGB/RGBA PNG."""
    height, width, channels = samples.shape
    writer = PngStripWriter(f, width, height, channels, samples.dtype, icc_profile=icc_profile)
    writer.write_rows(samples)
    writer.close()
