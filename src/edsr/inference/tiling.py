"""Tiling: windows with full context, tile sizes from a memory budget, and the tile loop."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from edsr.errors import Cancelled, EdsrError
from edsr.inference.descriptor import Model, describe, probe_model, resolve_scale, tile_memory
from edsr.inference.forward import ensemble_forward, sr_forward
from edsr.inference.memory import default_memory_budget, format_bytes, parse_memory

#: ``on_tile(done, total)``: told the tiles (forward passes) done so far, after each one.
OnTile = Callable[[int, int], None]
#: ``should_stop()``: asked before each tile; True stops the work with :class:`Cancelled`.
ShouldStop = Callable[[], bool]


def receptive_field(model: Model, scale: int | None = None) -> int:
    """LR pixels of context a tile needs on each side for exact output (see :func:`probe_model`)."""
    return describe(model).receptive_field(resolve_scale(model, scale))


@dataclass(frozen=True)
class Window:
    """One tile along one axis: the model sees ``[start, stop)``, its output is kept for
    ``[core_start, core_stop)`` (LR coordinates)."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def plan_axis(n: int, tile: int, overlap: int) -> list[Window]:
    """Cover ``[0, n)`` with equal windows of at most ``tile`` pixels whose kept cores partition
    it and lie at least ``overlap`` pixels inside every window edge that is not an image edge.

    The windows are shrunk to the smallest equal size that still covers ``n`` with as few
    windows as ``tile`` allows, so no work is wasted on a mostly-empty last tile and every
    window has the same shape (one cached convolution plan, one torch.compile graph).
    """
    if n <= tile:
        return [Window(0, n, 0, n)]
    core = tile - 2 * overlap
    if core < 1:
        raise ValueError(f"tile {tile} leaves no room inside an overlap of {overlap}")
    count = 1 + math.ceil((n - tile) / core)
    size = math.ceil((n + (count - 1) * 2 * overlap) / count)
    starts = [round(i * (n - size) / (count - 1)) for i in range(count)]
    bounds = [0] + [(starts[i] + starts[i + 1] + size) // 2 for i in range(count - 1)] + [n]
    return [Window(s, s + size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def min_tile(overlap: int) -> int:
    """Smallest tile accepted: its kept core is at least as wide as the overlap on each side.

    Smaller tiles are technically exact but spend over 9x the work on context.
    """
    return max(3 * overlap, 8)


@dataclass(frozen=True)
class TilePlan:
    rows: list[Window]
    cols: list[Window]
    batch: int  # images per forward pass
    tile: int
    overlap: int
    memory: int  # estimated peak bytes of one forward pass

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_tiles(
    model: Model,
    shape: Sequence[int],
    scale: int,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    device: torch.device | str | None = None,
) -> TilePlan:
    """Choose tiles for an (N, C, H, W) input: the largest that fit ``max_memory``, or ``tile``.

    A ``tile`` too small to hold the needed context is enlarged with a warning; a memory
    budget too small for even the smallest tile of one image is an error naming the minimum.
    """
    n, _, h, w = (int(v) for v in shape)
    probe = probe_model(model, scale)
    overlap = probe.overlap
    smallest = min_tile(overlap)
    device = torch.device(device) if device is not None else describe(model).device
    budget = parse_memory(max_memory) if max_memory is not None else None

    def need(t: int, b: int) -> int:
        return tile_memory(probe, min(t, h), min(t, w), b, ensemble)

    def largest_batch(t: int, limit: int) -> int:
        b = n
        while b > 1 and need(t, b) > limit:
            b = max(1, min(b - 1, b * limit // max(1, need(t, b))))
        return b

    if tile is not None:
        tile = int(tile)
        if tile < 1:
            raise EdsrError(f"the tile size must be positive, got {tile}")
        if tile < smallest and tile < max(h, w):
            warnings.warn(
                f"tile {tile} is too small for this model: each tile needs {overlap} pixels of "
                f"context on every side (its receptive field), so using tile {smallest}",
                UserWarning,
                stacklevel=2,
            )
            tile = smallest
        if budget is not None and need(tile, 1) > budget:
            raise EdsrError(
                f"tile {tile} needs about {format_bytes(need(tile, 1))}, more than the memory "
                f"budget of {format_bytes(budget)}; give a smaller tile or a larger budget"
            )
        batch = largest_batch(tile, budget if budget is not None else default_memory_budget(device))
    else:
        if budget is None:
            budget = default_memory_budget(device)
        full = max(h, w)
        if need(full, 1) <= budget:
            # Whole images, as many per pass as fit: no work is spent on overlaps.
            tile, batch = full, largest_batch(full, budget)
        else:
            # Tiling anyway: one image per pass leaves room for the largest tiles (least overlap).
            batch = 1
            if need(smallest, 1) > budget:
                t = min(smallest, full)
                raise EdsrError(
                    f"a memory budget of {format_bytes(budget)} is too small for this model: the "
                    f"smallest tile ({t}x{t} pixels, {overlap} of them context on each side) needs "
                    f"about {format_bytes(need(smallest, 1))}; allow at least that (--max-memory)"
                )
            lo, hi = smallest, full  # need(lo) fits, need(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if need(mid, 1) <= budget else (lo, mid)
            tile = lo
    rows, cols = plan_axis(h, tile, overlap), plan_axis(w, tile, overlap)
    memory = tile_memory(
        probe, rows[0].stop - rows[0].start, cols[0].stop - cols[0].start, batch, ensemble
    )
    return TilePlan(rows, cols, batch, tile, overlap, memory)


# --------------------------------------------------------------------------------------------
# Tiled execution
# --------------------------------------------------------------------------------------------

# (batch slice, HR row slice, HR column slice, output tile (b, C, h, w) float32 on the device)
TileResult = tuple[slice, slice, slice, torch.Tensor]


def tile_count(plan: TilePlan, n: int = 1) -> int:
    """Forward passes needed for ``n`` images under ``plan`` (what ``on_tile`` counts)."""
    return math.ceil(n / plan.batch) * plan.count


@torch.no_grad()
def iter_tiles(
    model: Model,
    x: torch.Tensor,
    scale: int,
    plan: TilePlan,
    *,
    ensemble: bool = False,
    on_tile: OnTile | None = None,
    should_stop: ShouldStop | None = None,
) -> Iterator[TileResult]:
    """Run ``model`` over ``x`` (N, C, H, W, float 0..255, any device) tile by tile, in row-major
    order, yielding each tile's kept output and where it goes in the HR image.

    Only one tile's input and output live on the model's device at a time. ``should_stop`` is
    asked before each tile (True raises :class:`~edsr.errors.Cancelled`), ``on_tile`` is told
    ``(0, total)`` before the first and ``(done, total)`` after each one. A tile with a
    non-finite output (an fp16 overflow, broken weights) is an error: a black or garbled image
    must not be written as if it were a result.
    """
    info = describe(model)
    forward = ensemble_forward if ensemble else sr_forward
    n = x.shape[0]
    total = tile_count(plan, n)
    done = 0
    if on_tile is not None:
        on_tile(0, total)
    for b0 in range(0, n, plan.batch):
        bs = slice(b0, min(n, b0 + plan.batch))
        for r in plan.rows:
            for c in plan.cols:
                if should_stop is not None and should_stop():
                    raise Cancelled(f"stopped after {done} of {total} tiles")
                xt = x[bs, :, r.start : r.stop, c.start : c.stop].to(info.device, torch.float32)
                yt = forward(model, xt, scale)
                if not bool(torch.isfinite(yt).all()):
                    raise EdsrError(_not_finite(info.precision))
                top, left = (r.core_start - r.start) * scale, (c.core_start - c.start) * scale
                hh = (r.core_stop - r.core_start) * scale
                ww = (c.core_stop - c.core_start) * scale
                yield (
                    bs,
                    slice(r.core_start * scale, r.core_stop * scale),
                    slice(c.core_start * scale, c.core_stop * scale),
                    yt[:, :, top : top + hh, left : left + ww],
                )
                done += 1
                if on_tile is not None:
                    on_tile(done, total)


def _not_finite(precision: str) -> str:
    if precision != "fp32":
        return (
            f"the model's output is not finite (inf/NaN) at {precision} precision, which "
            "overflowed; run with --precision fp32"
        )
    return (
        "the model's output is not finite (inf/NaN) even at fp32 precision: its weights are "
        "broken; re-download or retrain the model"
    )
