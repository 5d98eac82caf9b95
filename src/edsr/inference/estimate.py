"""How long and how large a job will be, said before it starts: tiles, working memory, seconds.

The multiply-adds per LR pixel are counted from the model's own layers (the probe); the speed
is measured once per model, scale, device and dtype by timing the model's own forward pass on
a small image. Time = multiply-adds of every tile (overlaps included, x8 for the ensemble) /
that speed. A small image runs less efficiently than a large tile, so the estimate errs long.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from edsr.inference.descriptor import Model, describe, probe_model
from edsr.inference.memory import format_bytes
from edsr.inference.tiling import TilePlan, min_tile, plan_tiles, tile_count

#: A job the estimate says takes longer than this is announced before it starts.
LONG_JOB_SECONDS = 60.0

# Below this many multiply-adds no device this runs on takes a minute (1 GMAC/s would be a
# very slow CPU), so small jobs skip the timing run.
_NEVER_LONG_MACS = 5e10
# Work of one timing pass: about 1/80 s on a 2-core CPU.
_TIMING_MACS = 5e8


@dataclass(frozen=True)
class JobEstimate:
    """What one image will cost: ``tiles`` forward passes, ``memory`` peak working bytes of
    one pass, ``seconds`` of compute (an estimate, within a factor of about two)."""

    plan: TilePlan
    tiles: int
    memory: int
    seconds: float

    @property
    def long(self) -> bool:
        """True when the job is worth announcing (over :data:`LONG_JOB_SECONDS`)."""
        return self.seconds > LONG_JOB_SECONDS

    def __str__(self) -> str:
        tiles = f"{self.tiles} tile{'s' if self.tiles != 1 else ''}"
        return (
            f"about {format_duration(self.seconds)}: {tiles}, "
            f"{format_bytes(self.memory)} working memory"
        )


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


_RATES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, str, torch.dtype], float]] = (
    weakref.WeakKeyDictionary()
)
_RATE_LOCK = threading.Lock()


@torch.no_grad()
def model_rate(model: Model, scale: int) -> float:
    """Multiply-adds per second the model reaches at ``scale`` on its device, from a timed
    forward pass on a small image (best of two after a warm-up), measured once and cached."""
    info = describe(model)
    module = info.module  # eager, even under torch.compile: a new shape would recompile
    key = (scale, str(info.device), info.dtype)
    with _RATE_LOCK:
        cached = _RATES.get(module, {}).get(key)
        if cached is not None:
            return cached
        macs_per_pixel = probe_model(model, scale).macs_per_pixel
        side = max(16, math.isqrt(int(_TIMING_MACS / max(1, macs_per_pixel))))
        x = torch.rand(1, info.n_colors, side, side, device=info.device) * 255
        if info.module is not model:  # prepared: the layout its convolutions were laid out for
            x = x.contiguous(memory_format=torch.channels_last)
        best = math.inf
        for i in range(3):
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            t0 = time.perf_counter()
            module(x, scale)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            if i:  # the first pass pays for kernel selection and allocation
                best = min(best, time.perf_counter() - t0)
        rate = side * side * macs_per_pixel / max(best, 1e-9)
        _RATES.setdefault(module, {})[key] = rate
        return rate


def plan_job(
    model: Model,
    shape: Sequence[int],
    scale: int,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    max_tile_seconds: float | None = None,
) -> JobEstimate:
    """Plan the tiles of an (N, C, H, W) input (see :func:`plan_tiles`) and estimate the job.

    ``max_tile_seconds``: when no ``tile`` is given and the whole image would run as one long
    pass, split it into tiles of about that many seconds, so progress shows within the image
    (the overlaps cost a few percent more work).
    """
    n, c, h, w = (int(v) for v in shape)
    colour_shape = (n, c - 1 if c in (2, 4) else c, h, w)
    opts: dict[str, Any] = {"max_memory": max_memory, "ensemble": ensemble}
    plan = plan_tiles(model, colour_shape, scale, tile=tile, **opts)
    estimate = _estimate(model, n, scale, plan, ensemble)
    if (
        tile is None
        and max_tile_seconds is not None
        and plan.count == 1
        and estimate.seconds > 2 * max_tile_seconds
    ):
        pieces = min(64, math.ceil(estimate.seconds / max_tile_seconds))
        side = math.ceil(max(h, w) / math.sqrt(pieces)) + 2 * plan.overlap
        side = max(side, min_tile(plan.overlap))
        if side < max(h, w):
            plan = plan_tiles(model, colour_shape, scale, tile=side, **opts)
            estimate = _estimate(model, n, scale, plan, ensemble)
    return estimate


def _estimate(model: Model, n: int, scale: int, plan: TilePlan, ensemble: bool) -> JobEstimate:
    window = (plan.rows[0].stop - plan.rows[0].start) * (plan.cols[0].stop - plan.cols[0].start)
    lr_pixels = n * plan.count * window
    macs = probe_model(model, scale).macs_per_pixel * lr_pixels * (8 if ensemble else 1)
    # a job too small to be long on any device is not worth a timing run: 1 GMAC/s assumed
    rate = model_rate(model, scale) if macs > _NEVER_LONG_MACS else 1e9
    return JobEstimate(
        plan=plan, tiles=tile_count(plan, n), memory=plan.memory, seconds=macs / rate
    )
