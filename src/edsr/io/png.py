"""PNG streaming writer: rows in bands, so an output too large for memory never has to be held."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

from edsr.errors import EdsrError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FILTER_COST = np.minimum(np.arange(256), 256 - np.arange(256)).astype(np.uint8)
_PNG_MAX_SIDE = 2**31 - 1




class PngStripWriter:
    """Write a PNG from bands of rows, top to bottom, so the image never has to be in memory.

    Each row gets filter None, Sub or Up, whichever has the smallest sum of absolute signed
    bytes (libpng's heuristic); zlib level 6. 8- or 16-bit, 1 to 4 channels.
    """

    def __init__(
        self, f: BinaryIO, width: int, height: int, channels: int, dtype: np.dtype
    ) -> None:
        if not (0 < width <= _PNG_MAX_SIDE and 0 < height <= _PNG_MAX_SIDE):
            raise EdsrError(
                f"a {width}x{height} image is too large for PNG (at most {_PNG_MAX_SIDE} a side)"
            )
        self.f = f
        self.width, self.height, self.channels = width, height, channels
        self.depth = 16 if np.dtype(dtype) == np.uint16 else 8
        self.bpp = channels * self.depth // 8
        self.rows_written = 0
        self._above = np.zeros((1, width * self.bpp), np.uint8)
        self._z = zlib.compressobj(6)
        self._pending: list[bytes] = []
        self._pending_size = 0
        ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
        f.write(_PNG_SIGNATURE)
        self._chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, self.depth, ctype, 0, 0, 0))

    def _chunk(self, ctype: bytes, body: bytes) -> None:
        self.f.write(struct.pack(">I", len(body)) + ctype + body)
        self.f.write(struct.pack(">I", zlib.crc32(ctype + body)))

    def write_rows(self, rows: np.ndarray) -> None:
        """Append ``rows`` of shape (h, width, channels)."""
        if rows.shape[1:] != (self.width, self.channels):
            raise ValueError(
                f"rows of shape {rows.shape} do not fit a {self.width}x{self.channels} image"
            )
        if self.rows_written + rows.shape[0] > self.height:
            raise ValueError("more rows than the image height")
        data = np.ascontiguousarray(rows, dtype=">u2" if self.depth == 16 else np.uint8)
        data = data.reshape(rows.shape[0], -1).view(np.uint8)
        for start in range(0, data.shape[0], 256):  # bounds the temporary arrays
            block = data[start : start + 256]
            above = data[start - 1 : start] if start else self._above
            sub = block.copy()
            sub[:, self.bpp :] -= block[:, : -self.bpp]
            up = block - np.concatenate([above, block[:-1]])
            candidates = np.stack([block, sub, up])
            choice = _FILTER_COST[candidates].sum(axis=2, dtype=np.uint64).argmin(axis=0)
            filtered = np.empty((block.shape[0], 1 + block.shape[1]), np.uint8)
            filtered[:, 0] = choice
            filtered[:, 1:] = candidates[choice, np.arange(block.shape[0])]
            piece = self._z.compress(filtered.tobytes())
            if piece:
                self._pending.append(piece)
                self._pending_size += len(piece)
            if self._pending_size >= 1 << 20:
                self._chunk(b"IDAT", b"".join(self._pending))
                self._pending, self._pending_size = [], 0
        self._above = data[-1:].copy()
        self.rows_written += rows.shape[0]

    def close(self) -> None:
        if self.rows_written != self.height:
            raise ValueError(f"wrote {self.rows_written} of {self.height} rows")
        self._pending.append(self._z.flush())
        self._chunk(b"IDAT", b"".join(self._pending))
        self._chunk(b"IEND", b"")


