"""How long and how large a job will be, and saying so: tiles, working memory, seconds.

The multiply-adds per LR pixel are counted from the model's own layers (the probe). The speed
is always that of the pass the job runs: the model as given (prepared: its precision, fused or
int8 engine), the self-ensemble's 8 forwards when the job has them, never the plain layers.

- :func:`plan_job` times it before the job: a small warm pass, then, for a job that looks long,
  passes growing toward the job's tile (within a few seconds): that is what is said first.
  Time = multiply-adds of every tile (overlaps included) / that speed; it errs long, since a
  pass smaller than the tile runs less efficiently. It plans the tiles and says a one-tile job.
- :class:`Announcer` says it, then checks a job of several tiles on its own first tiles (what
  they cost, on this machine's load of the moment, at no extra cost) and says a revised line
  when they disagree by over half.

Why not one small fixed pass, as before: a 20x20 image is mostly per-layer overhead (0.6 s a
forward on a loaded 2-core CPU, whatever the size; far more than the arithmetic on a GPU), and
it ran the eager layers rather than the fused or int8 path: a job of 1.5 minutes showed as
"about 3.3 h".
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edsr.inference.descriptor import Model, describe, probe_model
from edsr.inference.forward import ensemble_forward, sr_forward
from edsr.inference.memory import format_bytes
from edsr.inference.precision import InferenceModel
from edsr.inference.tiling import TilePlan, min_tile, plan_tiles, tile_count

#: A job the estimate says takes longer than this is announced before it starts.
LONG_JOB_SECONDS = 60.0

# The most work a split for progress may cost, against the image as one tile.
_SPLIT_WORK = 1.5

# Below this many multiply-adds no device this runs on takes a minute (1 GMAC/s would be a
# very slow CPU), so small jobs skip the timing run.
_NEVER_LONG_MACS = 5e10
# Work of the first timing pass, a small one: about 1/80 s on a quiet 2-core CPU.
_TIMING_MACS = 5e8
# A one-pass job whose first estimate is longer than this is timed again by passes growing
# toward its tile (tile_rate), none sized over _REFINE_SHARE of that first estimate (within
# _REFINE_SECONDS): small passes are mostly per-layer overhead, all the more on a loaded
# machine, where a 16x16 pass ran at 1/20 of the speed of a 256x256 one.
_REFINE_AFTER = LONG_JOB_SECONDS / 4
_REFINE_SHARE = 0.03
_REFINE_SECONDS = (1.0, 15.0)


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
    if seconds < 10 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class Announcer:
    """An ``on_tile`` that says a long job's estimate (``say("<name>: about ...")``).

    A long job is said at its start, from :func:`plan_job`. A job of several tiles is then
    timed on its own tiles (the compute path, the tile size and the machine's load of this
    very job, at no extra cost): when its first tile, or its second (the first also pays for
    kernel choice, allocation, a compiler's work), says otherwise by over half, a ``revised``
    line follows.
    """

    def __init__(self, estimate: JobEstimate, say: Callable[[str], None], name: str) -> None:
        self.estimate = estimate
        self.say = say
        self.name = name
        self.start = self.first = 0.0
        self.said: JobEstimate | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done == 0:
            # A long job is said before it starts, from plan_job's timing passes; the tiles
            # then check it.
            self.start = now
            if self.estimate.long:
                self._say(self.estimate)
        elif done == 1 and total > 1:
            self.first = now - self.start
            self._revise(self.first * total)
        elif done == 2 and total > 2:
            self._revise(self.first + (now - self.start - self.first) * (total - 1))

    def _revise(self, seconds: float) -> None:
        """Say the tiles' measure when it differs from what was said by over half."""
        said = self.said.seconds if self.said is not None else 0.0
        if not said / 1.5 <= seconds <= said * 1.5:
            note = "revised, " if self.said is not None else ""
            self._say(dataclasses.replace(self.estimate, seconds=seconds), note)

    def _say(self, estimate: JobEstimate, note: str = "") -> None:
        if estimate.long:
            self.said = estimate
            self.say(f"{self.name}: {note}{estimate}")


# seconds of one timed pass, per model: (scale, ensemble, h, w) -> seconds
_PASSES: weakref.WeakKeyDictionary[Model, dict[tuple[int, bool, int, int], float]] = (
    weakref.WeakKeyDictionary()
)
_RATE_LOCK = threading.RLock()


def _seconds(run: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _runner(model: Model) -> Model:
    """What runs the job's tiles, as timed: the model itself, except under torch.compile,
    where a new input size would compile again (a minute) and the prepared eager layers of
    the same precision and layout stand in (slower than compiled: the estimate errs long)."""
    if isinstance(model, InferenceModel) and model.compiled:
        return InferenceModel(model.base, model.dtype, model.channels_last)
    return model


@torch.no_grad()
def _timed_pass(model: Model, scale: int, h: int, w: int, *, ensemble: bool, warm: bool) -> float:
    """Seconds of the job's tile pass (``ensemble``: all 8 forwards) on an h x w input, measured
    once per model. ``warm``: the faster of two passes, the first paying for kernel selection
    and allocation; else one pass (a large one, where those costs are small)."""
    with _RATE_LOCK:
        passes = _PASSES.setdefault(model, {})
        key = (scale, ensemble, h, w)
        if key not in passes:
            info = describe(model)
            runner = _runner(model)
            forward = ensemble_forward if ensemble else sr_forward
            x = torch.rand(1, info.n_colors, h, w, device=info.device) * 255
            passes[key] = min(
                _seconds(lambda: forward(runner, x, scale), info.device)
                for _ in range(2 if warm else 1)
            )
        return passes[key]


def _side(model: Model, scale: int) -> int:
    """The side of the first, small timing input."""
    return max(16, math.isqrt(int(_TIMING_MACS / max(1, probe_model(model, scale).macs_per_pixel))))


def model_rate(model: Model, scale: int) -> float:
    """Multiply-adds per second of one forward pass of ``model`` as given (prepared: its
    precision, fused or int8 path) on a small input: a first, slow figure (small passes are
    mostly per-layer overhead), which makes a first estimate err long."""
    side = _side(model, scale)
    seconds = _timed_pass(model, scale, side, side, ensemble=False, warm=True)
    return probe_model(model, scale).macs_per_pixel * side * side / max(seconds, 1e-9)


def tile_rate(
    model: Model, scale: int, window: tuple[int, int], *, ensemble: bool, budget: float
) -> float:
    """Multiply-adds per second of the pass the job runs on an LR tile of ``window`` (height,
    width): ``model`` as given, 8 forwards with ``ensemble``.

    A pass costs a fixed time per layer plus its arithmetic; on a loaded 2-core CPU the fixed
    part was 0.6 s a forward, whatever its size (a 16x16 pass ran at 1/20 of a 256x256 one's
    speed), and a short pass there is as likely to be slowed by other work as not, so the
    timed pass grows, its side doubling, until it is as large as the tile or the next one
    would take over ``budget`` seconds; the fastest pass gives the speed.
    """
    per_pixel = probe_model(model, scale).macs_per_pixel * (8 if ensemble else 1)
    side = _side(model, scale)
    top_h, top_w = window
    h, w = min(side, top_h), min(side, top_w)
    if (h, w) == window:  # a tile no larger than the small pass: time the job's own
        return per_pixel * h * w / _timed_pass(model, scale, h, w, ensemble=ensemble, warm=True)
    rate = model_rate(model, scale)  # one small forward, timed warm
    last = per_pixel * h * w / rate  # what the job's pass of that size would take by it
    while (h, w) != (top_h, top_w) and 4 * last <= budget:
        h2, w2 = min(top_h, 2 * h), min(top_w, 2 * w)
        t = _timed_pass(model, scale, h2, w2, ensemble=ensemble, warm=False)
        h, w, last = h2, w2, t
        # the fastest pass: a larger one runs more efficiently, and other work only slows one
        rate = max(rate, per_pixel * h * w / max(t, 1e-9))
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
    (and :class:`Announcer` can time the first), but none so small that the overlaps would cost
    over half the work again (MDSR x4: tiles of 480 pixels at least).
    """
    n, c, h, w = (int(v) for v in shape)
    colour_shape = (n, c - 1 if c in (2, 4) else c, h, w)
    opts: dict[str, Any] = {"max_memory": max_memory, "ensemble": ensemble}
    plan = plan_tiles(model, colour_shape, scale, tile=tile, **opts)
    estimate = _estimate(model, n, scale, plan, ensemble, refine=False)
    if (
        tile is None
        and max_tile_seconds is not None
        and plan.count == 1
        and estimate.seconds > 2 * max_tile_seconds
    ):
        pieces = min(64, math.ceil(estimate.seconds / max_tile_seconds))
        side = math.ceil(max(h, w) / math.sqrt(pieces)) + 2 * plan.overlap
        # no tiles so small beside their context that the split costs over _SPLIT_WORK the work
        least = math.ceil(2 * plan.overlap / (1 - _SPLIT_WORK**-0.5))
        side = max(side, min_tile(plan.overlap), least)
        if side < max(h, w):
            plan = plan_tiles(model, colour_shape, scale, tile=side, **opts)
    # said before the job starts, so timed on passes near its tile size whatever their number
    # (Announcer then checks it on the job's own tiles)
    return _estimate(model, n, scale, plan, ensemble, refine=True)


def _estimate(
    model: Model, n: int, scale: int, plan: TilePlan, ensemble: bool, *, refine: bool
) -> JobEstimate:
    window = (plan.rows[0].stop - plan.rows[0].start, plan.cols[0].stop - plan.cols[0].start)
    tiles = tile_count(plan, n)
    macs = probe_model(model, scale).macs_per_pixel * n * plan.count * window[0] * window[1]
    macs *= 8 if ensemble else 1
    # a job too small to be long on any device is not worth a timing run: 1 GMAC/s assumed
    seconds = macs / 1e9
    if macs > _NEVER_LONG_MACS:
        seconds = macs / model_rate(model, scale)
        if refine and seconds > _REFINE_AFTER:
            budget = min(max(seconds * _REFINE_SHARE, _REFINE_SECONDS[0]), _REFINE_SECONDS[1])
            batch_window = (window[0], window[1] * plan.batch)  # the work of a batch's pass
            seconds = macs / tile_rate(model, scale, batch_window, ensemble=ensemble, budget=budget)
    return JobEstimate(plan=plan, tiles=tiles, memory=plan.memory, seconds=seconds)
