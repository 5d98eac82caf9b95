"""EDSR and MDSR models and the paper's four presets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from edsr.errors import EdsrError
from edsr.models.common import (
    DIV2K_RGB_MEAN,
    SUPPORTED_SCALES_TEXT,
    MeanShift,
    supported_scale,
)
from edsr.models.edsr import EDSR
from edsr.models.mdsr import MDSR
from edsr.validators import MAX_RES_SCALE, finite_float

SRModel = EDSR | MDSR


@dataclass(frozen=True)
class Preset:
    name: str
    arch: str  # "edsr" or "mdsr"
    n_resblocks: int
    n_feats: int
    res_scale: float
    description: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("edsr-baseline", "edsr", 16, 64, 1.0, "EDSR baseline, 16 blocks x 64 features"),
        Preset("edsr", "edsr", 32, 256, 0.1, "EDSR, 32 blocks x 256 features, res_scale 0.1"),
        Preset("mdsr-baseline", "mdsr", 16, 64, 1.0, "MDSR baseline, x2/x3/x4 in one, 16 blocks"),
        Preset("mdsr", "mdsr", 80, 64, 1.0, "MDSR, x2/x3/x4 in one, 80 blocks"),
    )
}


def check_scales(scales: int | Sequence[int]) -> tuple[int, ...]:
    """Scales a user asked for, validated: whole numbers the upsampler can build, no repeats.

    The one check of what a user typed (CLI flags, config files, API arguments); the model
    constructors raise ``ValueError`` for the same conditions, as programmer errors.
    """
    items = [scales] if isinstance(scales, int) else list(scales)
    out: list[int] = []
    for s in items:
        if isinstance(s, bool) or int(s) != s:
            raise EdsrError(f"scale {s!r} is not a whole number")
        if not supported_scale(int(s)):
            raise EdsrError(f"scale {s} is not supported; use {SUPPORTED_SCALES_TEXT}")
        if int(s) in out:
            raise EdsrError(f"scale x{s} is given twice")
        out.append(int(s))
    if not out:
        raise EdsrError("no scale given")
    return tuple(out)


def build_model(
    preset: str, *, scale: int | None = None, scales: tuple[int, ...] = (2, 3, 4)
) -> SRModel:
    """Build a freshly initialised model from a preset name.

    EDSR presets need ``scale``; MDSR presets take ``scales`` (default x2, x3, x4).
    """
    try:
        p = PRESETS[preset]
    except KeyError:
        raise EdsrError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}") from None
    if p.arch == "edsr":
        if scale is None:
            raise EdsrError(f"preset {preset!r} needs a scale (2, 3 or 4)")
        (scale,) = check_scales(scale)
        return EDSR(
            scale=scale, n_resblocks=p.n_resblocks, n_feats=p.n_feats, res_scale=p.res_scale
        )
    return MDSR(scales=check_scales(scales), n_resblocks=p.n_resblocks, n_feats=p.n_feats)


def model_from_config(config: dict) -> SRModel:
    """Rebuild a model from the dict returned by ``model.config()``."""
    cfg = dict(config)
    arch = cfg.pop("arch", None)
    # From a file or a user: nan or inf here makes every output nan.
    finite_float(cfg.get("res_scale", 1.0), "res_scale", maximum=MAX_RES_SCALE)
    try:
        if arch == "edsr":
            return EDSR(
                scale=int(cfg["scale"]),
                n_resblocks=int(cfg["n_resblocks"]),
                n_feats=int(cfg["n_feats"]),
                res_scale=float(cfg["res_scale"]),
                n_colors=int(cfg.get("n_colors", 3)),
                rgb_range=float(cfg.get("rgb_range", 255.0)),
                rgb_mean=tuple(cfg.get("rgb_mean", DIV2K_RGB_MEAN)),
            )
        if arch == "mdsr":
            return MDSR(
                scales=tuple(int(s) for s in cfg["scales"]),
                n_resblocks=int(cfg["n_resblocks"]),
                n_feats=int(cfg["n_feats"]),
                n_colors=int(cfg.get("n_colors", 3)),
                rgb_range=float(cfg.get("rgb_range", 255.0)),
                res_scale=float(cfg.get("res_scale", 1.0)),
                pre_kernel=int(cfg.get("pre_kernel", 5)),
                rgb_mean=tuple(cfg.get("rgb_mean", DIV2K_RGB_MEAN)),
            )
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise EdsrError(f"model config is incomplete or invalid ({e!r}): {config}") from None
    raise EdsrError(f"unknown architecture {arch!r} in model config; expected 'edsr' or 'mdsr'")


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """The parameters of ``model``: its learned weights, the one count the registry, ``edsr
    weights``, ``describe`` and ``GET /v1/models`` give (3,227,203 for the MDSR baseline).

    The mean shifts (:class:`~edsr.models.common.MeanShift`: the DIV2K mean, 24 fixed numbers
    for RGB) are constants, not learned, and are left out, as in the paper's tables. That is a
    property of the layer, not of ``requires_grad``, so a model frozen for inference counts
    the same. ``trainable_only=False`` counts every tensor ``parameters()`` holds.
    """
    fixed = {id(p) for m in model.modules() if isinstance(m, MeanShift) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if not trainable_only or id(p) not in fixed)


__all__ = [
    "EDSR",
    "MDSR",
    "PRESETS",
    "Preset",
    "SRModel",
    "build_model",
    "check_scales",
    "count_parameters",
    "model_from_config",
]
