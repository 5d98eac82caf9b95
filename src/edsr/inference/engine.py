"""The one pipeline from an input image to its upscaled pixels: split off alpha, plan tiles, run
them, resize alpha bands, and hand everything to a sink (a tensor, an array, a PNG strip
writer). The array API, files and videos all run through :func:`run_tiled`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from edsr.errors import EdsrError
from edsr.inference.descriptor import Model
from edsr.inference.tiling import OnTile, ShouldStop, TilePlan, iter_tiles, plan_tiles
from edsr.io.png import PngStripWriter
from edsr.resize import imresize


class Sink(Protocol):
    """Where :func:`run_tiled` puts the output (values 0..255, float32)."""

    def put(self, bs: slice, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        """Store ``y`` (b, c, h, w) at images ``bs``, HR rows ``ys``, columns ``xs``."""

    def rows_done(self, bs: slice, start: int, stop: int) -> None:
        """HR rows ``[start, stop)`` of images ``bs`` are complete, alpha included."""


def alpha_rows(alpha: torch.Tensor, scale: int, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0*scale, r1*scale)`` of ``imresize(alpha, scale)``, computed from a band of LR rows.

    Alpha is not image content the model was trained on: bicubic is the honest choice. Bicubic
    taps reach 2 pixels; a margin of 4 keeps the band's own mirrored edges out of the kept
    rows, so the band equals the same rows of the whole resized image.
    """
    margin = 4
    a0, a1 = max(0, r0 - margin), min(alpha.shape[-2], r1 + margin)
    band = imresize(alpha[..., a0:a1, :].double(), scale).to(alpha.dtype)
    return band[..., (r0 - a0) * scale : (r1 - a0) * scale, :]


def run_tiled(
    model: Model,
    x: torch.Tensor,
    scale: int,
    sink: Sink,
    *,
    plan: TilePlan | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    on_tile: OnTile | None = None,
    should_stop: ShouldStop | None = None,
) -> TilePlan:
    """Upscale ``x`` (N, C, H, W float 0..255; C = 2 or 4 carries alpha last) into ``sink``.

    The colour channels go through the model in tiles (``plan``, or one chosen from ``tile`` /
    ``max_memory``, see :func:`~edsr.inference.tiling.plan_tiles`); alpha is resized by
    bicubic one band of rows at a time, so a streaming sink never needs the whole image.
    Returns the plan used.
    """
    if x.ndim != 4:
        raise EdsrError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise EdsrError(f"cannot upscale an empty image of size {x.shape[-1]}x{x.shape[-2]}")
    alpha = None
    if x.shape[1] in (2, 4):
        x, alpha = x[:, :-1], x[:, -1:].float()
    c = x.shape[1]
    if plan is None:
        plan = plan_tiles(
            model, x.shape, scale, tile=tile, max_memory=max_memory, ensemble=ensemble
        )
    ncols = len(plan.cols)
    tiles = iter_tiles(
        model, x, scale, plan, ensemble=ensemble, on_tile=on_tile, should_stop=should_stop
    )
    for i, (bs, ys, xs, y) in enumerate(tiles):
        sink.put(bs, ys, xs, slice(0, c), y)
        if (i + 1) % ncols:
            continue
        r = plan.rows[(i // ncols) % len(plan.rows)]
        hr = slice(r.core_start * scale, r.core_stop * scale)
        if alpha is not None:
            band = alpha_rows(alpha[bs], scale, r.core_start, r.core_stop)
            sink.put(bs, hr, slice(None), slice(c, c + 1), band)
        sink.rows_done(bs, hr.start, hr.stop)
    return plan


class TensorSink:
    """Keeps the float output in one preallocated (N, C, H, W) tensor (not rounded)."""

    def __init__(self, out: torch.Tensor) -> None:
        self.out = out

    def put(self, bs: slice, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        self.out[bs, channels, ys, xs] = y.to(self.out.device)

    def rows_done(self, bs: slice, start: int, stop: int) -> None:
        pass


class ArraySink:
    """Stores one image's tiles, scaled to ``value_range`` and quantized, in an (H, W, C) array."""

    def __init__(self, out: np.ndarray, value_range: float, is_int: bool) -> None:
        self.out = out
        self.factor = value_range / 255.0
        self.vr = value_range
        self.is_int = is_int

    def convert(self, y: torch.Tensor) -> np.ndarray:
        """(C, h, w) tensor in 0..255 -> (h, w, C) array of the output dtype."""
        y = y.float().permute(1, 2, 0).mul(self.factor).clamp_(0, self.vr)
        if self.is_int:
            y = y.round_()
        return y.cpu().numpy().astype(self.out.dtype)

    def put(self, bs: slice, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        self.out[ys, xs, channels] = self.convert(y[0])

    def rows_done(self, bs: slice, start: int, stop: int) -> None:
        pass


class StripSink(ArraySink):
    """Holds one band of HR rows; each complete band goes to a :class:`PngStripWriter`, so an
    output too large for memory is never held whole."""

    def __init__(self, writer: PngStripWriter, dtype: np.dtype, value_range: float) -> None:
        super().__init__(np.empty((0, writer.width, writer.channels), dtype), value_range, True)
        self.writer = writer
        self.top = 0

    def put(self, bs: slice, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        if ys.start == self.top and self.out.shape[0] != ys.stop - ys.start:
            self.out = np.empty((ys.stop - ys.start, *self.out.shape[1:]), self.out.dtype)
        self.out[:, xs, channels] = self.convert(y[0])

    def rows_done(self, bs: slice, start: int, stop: int) -> None:
        assert start == self.top and stop - start == self.out.shape[0]
        self.writer.write_rows(self.out)
        self.top = stop


def array_input(a: np.ndarray, value_range: float) -> torch.Tensor:
    """An (H, W, C) array as the (1, C, H, W) float32 0..255 input of :func:`run_tiled` (a copy
    1/scale^2 the size of the output, from which the tiles are cut)."""
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    if value_range != 255.0:
        x.mul_(255.0 / value_range)
    return x


def chain(*callbacks: OnTile | None) -> OnTile | None:
    """One ``on_tile`` calling each given one in turn (None when none is given)."""
    given = [cb for cb in callbacks if cb is not None]
    if not given:
        return None

    def on_tile(done: int, total: int) -> None:
        for cb in given:
            cb(done, total)

    return on_tile


class TileBar:
    """A progress bar of the tiles of one image, fed by ``on_tile``; shown only from two tiles."""

    def __init__(self, enabled: bool, desc: str = "tiles") -> None:
        self.enabled = enabled
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < 2:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="tile", leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
