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

#: The models a JPEG input gets when no model is named, by its quality (read from its
#: quantization tables): ``(bound, name)`` in rising order, a JPEG below ``bound`` taking
#: ``name``. Both are the bundled MDSR fine-tuned on LR saved as JPEG (recipes of the same
#: names): the first on q55-85 (from :data:`JPEG_MODEL`), the second on q80-96 only, where the
#: artefacts are faint and a model shown lower qualities smooths away detail the clean one
#: keeps. The bounds are where the models cross (PSNR over bicubic, mean of Set5 + Set14 + B100
#: x2/x3/x4, 4:2:0; docs/jpeg/table.md): the first model is ahead of the second by 0.03 dB at
#: q80 and behind by 0.03 at q82; the second is ahead of the clean model by 0.26 at q92, level
#: at q95 (0.000), behind by 0.32 at q98. Below q55 the first is still ahead of
#: :data:`JPEG_MODEL` (by 0.03 at q50, Set5 + Set14 + B100 + Urban100).
JPEG_ROUTE: tuple[tuple[int, str], ...] = (
    (81, "mdsr-baseline-291-jpeg-mq"),
    (95, "mdsr-baseline-291-jpeg-hq"),
)

#: The model for a JPEG of unknown quality (``degradation="jpeg"``, ``--degradation jpeg``):
#: the one trained on every quality.
JPEG_MODEL = "mdsr-baseline-291-jpeg"

#: A JPEG saved at this quality or above goes to the clean default, as a lossless input.
JPEG_CLEAN_QUALITY = JPEG_ROUTE[-1][0]


def route_models() -> tuple[str, ...]:
    """The registry names the route may pick besides the clean default: the bands' models in
    route order, then :data:`JPEG_MODEL` where no band has it."""
    return tuple(dict.fromkeys([*(name for _, name in JPEG_ROUTE), JPEG_MODEL]))


def route_band(name: str) -> str:
    """The JPEG qualities the route gives the model ``name``, in words: "below 80", "80-94"."""
    low = 0
    for bound, band_model in JPEG_ROUTE:
        if band_model == name:
            return f"below {bound}" if low == 0 else f"{low}-{bound - 1}"
        low = bound
    raise ValueError(f"{name!r} has no band in the route")


def route(jpeg_quality: int | None, degradation: str | None = None) -> tuple[str | None, str]:
    """Which model an input gets when the user names none: ``(name, why)``, ``name`` None for
    the clean default (:func:`edsr.weights.registry.default_model`), ``why`` the reason in a
    few words, said by ``-v``, the summary and the server's headers.

    ``degradation`` is what the caller says of the input (Python arrays have no file type):
    ``"jpeg"`` (or any JPEG spec, ``jpeg:75``) takes :data:`JPEG_MODEL`, ``"clean"`` the
    default. Otherwise the file decides: a JPEG (``jpeg_quality`` read from its tables) takes
    the first model of :data:`JPEG_ROUTE` whose bound it is below; at
    :data:`JPEG_CLEAN_QUALITY` or above, or not a JPEG, the default. A PNG that holds a
    JPEG's pixels (a screenshot, a converted file) is not told apart: it is clean unless the
    caller says ``degradation="jpeg"`` (``--degradation jpeg``).
    """
    if degradation is not None:
        kind = degradation.split(":", 1)[0].strip().lower()
        if kind.startswith("jpeg"):
            return JPEG_MODEL, "the input was said to be a JPEG"
        if kind == "clean":
            return None, "the input was said to be lossless"
        raise ValueError(f"degradation must be 'jpeg' or 'clean', got {degradation!r}")
    if jpeg_quality is None:
        return None, "not a JPEG"
    for bound, name in JPEG_ROUTE:
        if jpeg_quality < bound:
            return name, f"a JPEG at quality {jpeg_quality} ({route_band(name)})"
    return None, f"a JPEG at quality {jpeg_quality}, nearly lossless (>= {JPEG_CLEAN_QUALITY})"


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
    "JPEG_CLEAN_QUALITY",
    "JPEG_MODEL",
    "JPEG_ROUTE",
    "PRECISION",
    "SCALE",
    "SCORING_PRECISION",
    "default_scale",
    "resolve_device",
    "route",
    "route_band",
    "route_models",
]
