"""The one description of a loaded model, plain or prepared: what every caller asks of it.

Tiling, the array API, files, serve, eval and export ask :func:`describe` for the scales,
channels, device, compute dtype and receptive field, instead of each probing
``next(model.parameters())`` or ``getattr(model, "base", model)`` on its own.

What tiling needs beyond that is measured from the layers that actually run
(:func:`probe_model`): the exact receptive field, the working memory and the arithmetic per
LR pixel. Tiling is exact, not approximate: each tile is given as much context on every side
as the receptive field reaches, so the stitched output equals whole-image inference up to
float rounding. The public code's "chop" overlapped 10 pixels where the field reaches ~36,
which is why its outputs had seams.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import torch
from torch import nn

from edsr import defaults
from edsr.errors import EdsrError
from edsr.inference.precision import InferenceModel, precision_name, unwrap
from edsr.models import SRModel, count_parameters
from edsr.runtimes import ExportedModel, ExportInfo

Model = SRModel | InferenceModel | ExportedModel


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and where it runs (see :func:`describe`)."""

    arch: str  # "edsr" or "mdsr"
    scales: tuple[int, ...]
    n_colors: int
    rgb_range: float
    device: torch.device
    dtype: torch.dtype  # the compute dtype of the body (bf16/fp16 for a prepared model)
    precision: str  # "fp32", "bf16" or "fp16"
    module: nn.Module  # the plain EDSR/MDSR (under an InferenceModel's wrapper)
    parameters: int  # edsr.models.count_parameters: learned weights, mean shifts left out

    @property
    def default_scale(self) -> int:
        """The scale without one asked for: :func:`edsr.defaults.default_scale`."""
        return defaults.default_scale(self.scales)

    def receptive_field(self, scale: int) -> int:
        """LR pixels of context a tile needs on each side for exact output at ``scale``."""
        return probe_model(self.module, scale).overlap


def describe(model: nn.Module) -> ModelInfo:
    """The :class:`ModelInfo` of an EDSR/MDSR model, plain or prepared (``prepare_model``), or
    of an exported file loaded back (:class:`~edsr.runtimes.ExportedModel`: what its export
    stored)."""
    if isinstance(unwrap(model), ExportedModel):
        return _describe_exported(model)
    module = cast(SRModel, unwrap(model))
    dtype = model.dtype if isinstance(model, InferenceModel) else None
    params = list(module.parameters())
    if not params or not hasattr(module, "scales") or not hasattr(module, "config"):
        raise EdsrError(f"expected an EDSR or MDSR model, got {type(model).__name__}")
    if dtype is None:
        dtype = params[0].dtype
    config = module.config()
    return ModelInfo(
        arch=str(config["arch"]),
        scales=tuple(int(s) for s in module.scales),
        n_colors=int(module.n_colors),
        rgb_range=float(config.get("rgb_range", 255.0)),
        device=params[0].device,
        dtype=dtype,
        precision=precision_name(dtype),
        module=module,
        parameters=count_parameters(module),
    )


def _describe_exported(model: nn.Module) -> ModelInfo:
    exported = cast(ExportedModel, unwrap(model))
    info = exported.info
    dtype = torch.qint8 if info.precision == "int8" else torch.float32
    return ModelInfo(
        arch=info.arch,
        scales=exported.scales,
        n_colors=info.n_colors,
        rgb_range=info.rgb_range,
        device=exported.device,
        dtype=dtype,
        precision=info.precision,
        module=exported,
        parameters=info.parameters,
    )


def resolve_scale(model: nn.Module, scale: int | None) -> int:
    """``scale`` checked against the model's scales; None means :attr:`ModelInfo.default_scale`."""
    info = describe(model)
    if scale is None:
        return info.default_scale
    scale = int(scale)
    if scale not in info.scales:
        have = ", ".join(f"x{s}" for s in info.scales)
        raise EdsrError(f"this model upscales {have}, not x{scale}")
    return scale


@dataclass(frozen=True)
class ModelProbe:
    """What tiling needs to know about a model at one scale.

    ``reach`` is the exact receptive radius in LR pixels: the sum over convolutions of their
    one-sided reach divided by the resolution they run at (1 on the LR path, 2 after a x2 pixel
    shuffle, ...). ``overlap`` is its ceiling: a tile with that many LR pixels of context on
    every side reproduces whole-image inference. ``bytes_per_pixel`` estimates the peak working
    memory per LR pixel of a tile (batch 1, no ensemble); ``macs_per_pixel`` counts the
    multiply-adds of all convolutions per LR pixel (for time estimates).
    """

    scale: int
    reach: Fraction
    overlap: int
    bytes_per_pixel: int
    out_bytes_per_pixel: int
    macs_per_pixel: int


_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[int, ModelProbe]] = weakref.WeakKeyDictionary()
_PROBE_LOCK = threading.Lock()

# The estimate below counts the tensors a layer reads and writes plus two feature maps held by
# skip connections; allocator slack, oneDNN reorders and PixelShuffle's copies come on top.
# 1.2 was calibrated by measuring peak RSS against the estimate (benchmarks/bench_large_image.py).
_MEMORY_SAFETY = 1.2
_MEMORY_FIXED = 64 * 1024**2  # weights, oneDNN primitives, Python objects


@torch.no_grad()
def probe_model(model: nn.Module, scale: int) -> ModelProbe:
    """Run the model once on a 1x1 image, recording every leaf layer it calls.

    On a 1x1 input a layer's input height *is* its resolution relative to LR, so the reach of
    each convolution can be scaled exactly, whatever the architecture (EDSR's head, 2 convs per
    residual block, body conv, upsampler; MDSR's 5x5 pre-processing blocks; the tail at HR).
    """
    base = describe(model).module
    if isinstance(base, ExportedModel):
        return stored_probe(base.info, scale)
    cached = _PROBES.get(base, {}).get(scale)
    if cached is not None:
        return cached
    with _PROBE_LOCK:
        cached = _PROBES.get(base, {}).get(scale)
        if cached is not None:
            return cached
        probe = _probe(base, scale)
        _PROBES.setdefault(base, {})[scale] = probe
        return probe


def stored_probe(info: ExportInfo, scale: int) -> ModelProbe:
    """The probe an export stored (:func:`probe_fields` of the source model at its scale)."""
    if scale != info.scale:
        raise EdsrError(f"this exported graph upscales x{info.scale}, not x{scale}")
    p = info.probe
    return ModelProbe(
        scale=info.scale,
        reach=Fraction(p["reach"]),
        overlap=int(p["overlap"]),
        bytes_per_pixel=int(p["bytes_per_pixel"]),
        out_bytes_per_pixel=int(p["out_bytes_per_pixel"]),
        macs_per_pixel=int(p["macs_per_pixel"]),
    )


def probe_fields(probe: ModelProbe) -> dict[str, int | str]:
    """``probe`` as an export stores it in :attr:`ExportInfo.probe` (JSON values)."""
    return {
        "reach": str(probe.reach),
        "overlap": probe.overlap,
        "bytes_per_pixel": probe.bytes_per_pixel,
        "out_bytes_per_pixel": probe.out_bytes_per_pixel,
        "macs_per_pixel": probe.macs_per_pixel,
    }


def _probe(base: nn.Module, scale: int) -> ModelProbe:
    records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    me = threading.get_ident()

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        # Another thread may be running the same model on a real image meanwhile (a server):
        # only the probe's own 1x1 pass counts.
        if threading.get_ident() == me:
            records.append((mod, args[0], out))

    leaves = [m for m in base.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        info = describe(base)
        base(torch.zeros(1, info.n_colors, 1, 1, device=info.device), scale)
    finally:
        for h in handles:
            h.remove()
    reach = Fraction(0)
    layer_peak = 0
    lr_feature = 0
    macs = 0
    for mod, inp, out in records:
        if isinstance(mod, nn.Conv2d):
            if tuple(mod.stride) != (1, 1) or mod.padding_mode != "zeros":
                raise EdsrError(
                    f"cannot tile a model with a strided or non-zero-padded conv ({mod})"
                )
            pads = mod.padding if isinstance(mod.padding, tuple) else (mod.kernel_size[0] // 2,) * 2
            one_side = max(
                max(p, d * (k - 1) - p)
                for k, d, p in zip(mod.kernel_size, mod.dilation, pads, strict=True)
            )
            reach += Fraction(one_side, inp.shape[-2])
            # on a 1x1 input, the output holds every pixel this layer computes per LR pixel
            macs += out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)
        elif not isinstance(mod, (nn.PixelShuffle, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity)):
            raise EdsrError(f"cannot derive the receptive field of {type(mod).__name__} layers")
        nbytes = inp.numel() * inp.element_size() + out.numel() * out.element_size()
        layer_peak = max(layer_peak, nbytes)
        if inp.shape[-2] == 1:
            lr_feature = max(lr_feature, inp.numel() * inp.element_size())
    n_colors = describe(base).n_colors
    out_bytes = n_colors * scale * scale * 4
    per_pixel = layer_peak + 2 * lr_feature + out_bytes + n_colors * 4
    return ModelProbe(
        scale=scale,
        reach=reach,
        overlap=math.ceil(reach),
        bytes_per_pixel=int(per_pixel * _MEMORY_SAFETY),
        out_bytes_per_pixel=out_bytes,
        macs_per_pixel=macs,
    )


def tile_memory(
    probe: ModelProbe, height: int, width: int, batch: int = 1, ensemble: bool = False
) -> int:
    """Estimated peak bytes to run one ``height`` x ``width`` LR tile of ``batch`` images."""
    per_pixel = probe.bytes_per_pixel
    if ensemble:
        # a float32 accumulator and one mapped-back output beside the forward pass
        per_pixel += 2 * probe.out_bytes_per_pixel
    return batch * height * width * per_pixel + _MEMORY_FIXED
