"""What a request means when an option is left out, decided once for every door.

The command line (``edsr upscale``, ``eval``, ``demo``, ``serve``), the Python API
(``edsr.load_model``, ``edsr.upscale``) and the HTTP API (``POST /v1/upscale``) read these
values when an option is not given; a door may override one for a reason it states, never
keep its own. They are read at call time (``defaults.SCALE``, not ``from ... import SCALE``),
so changing one here changes every door.

Option names are the same everywhere too: ``ensemble`` (``--ensemble``, ``ensemble=True``,
the form field ``ensemble``; off unless asked, as it costs 8 passes) is the paper's
self-ensemble; ``scale``, ``precision``, ``device`` and ``model`` likewise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The scale of a multi-scale model given none: the paper's headline results and the README's
#: examples are x4. A model without it runs at its largest; a single-scale model at its own.
SCALE = 4

#: The compute path: ``auto`` is the fastest that keeps the quality on the device it runs on
#: (:func:`edsr.inference.precision.resolve_precision` decides what that is).
PRECISION = "auto"

#: What ``edsr eval`` scores when not told: the published protocol is fp32, so that a table
#: compares with the papers' (``--precision auto`` scores what ``upscale`` runs).
SCORING_PRECISION = "fp32"

#: Where a model runs: ``auto`` is a CUDA GPU when one is present, else the CPU.
DEVICE = "auto"


def default_scale(scales: Sequence[int]) -> int:
    """The scale a model with ``scales`` runs at when none is asked for (see :data:`SCALE`)."""
    if not scales:
        raise ValueError("a model has at least one scale")
    if len(scales) == 1:
        return int(scales[0])
    return SCALE if SCALE in scales else int(max(scales))


def resolve_device(device: str | None = None) -> str:
    """A device asked for (None: :data:`DEVICE`), with ``auto`` made concrete: ``cuda`` where
    a CUDA GPU is present, else ``cpu``; any other name is returned as given."""
    device = DEVICE if device is None else device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


__all__ = [
    "DEVICE",
    "PRECISION",
    "SCALE",
    "SCORING_PRECISION",
    "default_scale",
    "resolve_device",
]
