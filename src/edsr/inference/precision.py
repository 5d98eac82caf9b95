"""Inference precision and speed: folded residual scaling, channels-last, bf16/fp16, torch.compile.

:func:`prepare_model` turns a loaded model into an :class:`InferenceModel` that takes and returns
float32 images in 0..255 like the model itself, but runs faster where the hardware allows.

Why ``auto`` is not simply "bf16 on CPU": without native bf16 instructions (AMX or AVX-512 BF16)
oneDNN emulates bf16 and is several times *slower* than fp32. Measured on this project's 2-core
AVX-512 machine (no BF16 flags) for edsr-baseline x4 on a 256x256 input
(benchmarks/bench_inference.py): fp32 NCHW unfolded 4.96 s, fp32 channels-last folded 3.14 s,
bf16 channels-last 9.99 s; a large 3x3 conv peaks at 143 GFLOP/s in fp32 but 30 in bf16. So
``auto`` only picks bf16 when the CPU reports the instructions.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from edsr.errors import EdsrError
from edsr.models import SRModel

Precision = Literal["fp32", "bf16", "fp16", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "auto")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_NAMES = {v: k for k, v in _DTYPES.items()}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo does not exist)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AMX tiles or AVX-512 BF16 dot products)."""
    flags = cpu_flags()
    if flags & {"amx_bf16", "avx512_bf16"}:
        return True
    # Where /proc/cpuinfo is missing, trust PyTorch's own dispatch level if it names AMX.
    return not flags and "AMX" in torch.backends.cpu.get_cpu_capability().upper()


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``, the one place ``auto`` is decided.

    ``auto`` is bf16 on a CUDA GPU that supports it (else fp16), bf16 on a CPU with native bf16
    instructions (:func:`cpu_has_native_bf16`), and fp32 everywhere else; an explicit name is
    that dtype, checked against the device. Inference and training both call this.
    """
    if precision not in PRECISIONS:
        raise EdsrError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision != "auto":
        dtype = _DTYPES[precision]
        if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise EdsrError("this GPU does not support bf16; use --precision fp16 or fp32")
        return dtype
    if device.type == "cuda":
        # Both halve the memory traffic on tensor cores; bf16 cannot overflow, so prefer it.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def precision_name(dtype: torch.dtype) -> str:
    """The precision name ("fp32", "bf16", "fp16") of a compute dtype."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise EdsrError(f"unsupported model dtype {dtype}; use fp32, bf16 or fp16") from None


def _cast_input(dtype: torch.dtype) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args
        )

    return hook


class InferenceModel(nn.Module):
    """A model prepared for inference; ``forward(x, scale)`` takes and returns float32 0..255.

    In bf16/fp16 the cheap layers that touch image values (mean shift, the 3-channel head and
    tail convolutions) stay in float32: in bf16 a value near 255 has a step of 1.0, so a bf16
    output layer alone would cost up to half a gray level. The body and upsampler, where nearly
    all the arithmetic is, run in the low precision.
    """

    base: SRModel
    _compiled: Callable[..., torch.Tensor] | None

    def __init__(
        self, base: nn.Module, dtype: torch.dtype, channels_last: bool, compiled: bool = False
    ) -> None:
        super().__init__()
        self.base = cast(SRModel, base)
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compiled
        # Not an attribute nn.Module would register: the compiled wrapper shares base's weights.
        object.__setattr__(self, "_compiled", torch.compile(base) if compiled else None)

    @property
    def scales(self) -> tuple[int, ...]:
        return tuple(self.base.scales)

    @property
    def n_colors(self) -> int:
        return int(self.base.n_colors)

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    def config(self) -> dict:
        return self.base.config()

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        if scale is None:
            scale = self.scales[0]
        x = x.float()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled is not None:
            try:
                return self._compiled(x, scale).float()
            except Exception as e:  # noqa: BLE001 - any compiler failure: eager gives the same result
                first = str(e).splitlines()[0] if str(e) else ""
                warnings.warn(
                    f"torch.compile failed ({type(e).__name__}: {first}); running without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                object.__setattr__(self, "_compiled", None)
        return self.base(x, scale).float()


def _fp32_modules(model: SRModel) -> list[nn.Module]:
    """The layers kept in float32: mean shifts, the head conv and the last conv of the tail."""
    keep: list[nn.Module] = [model.sub_mean, model.add_mean, model.head]
    last_conv = [m for m in model.tail.modules() if isinstance(m, nn.Conv2d)][-1]
    keep.append(last_conv)
    return keep


def prepare_model(
    model: nn.Module,
    *,
    precision: str = "auto",
    channels_last: bool = True,
    compile: bool = False,
    device: torch.device | str | None = None,
) -> InferenceModel:
    """Return a faster copy of ``model`` for inference; the original is left untouched.

    - residual scaling folded into the convolutions (EDSR's 0.1: one multiply per block saved);
    - channels-last memory layout, which oneDNN and cuDNN convolve fastest;
    - ``precision``: fp32, bf16, fp16, or auto (see :func:`resolve_precision`);
    - ``compile``: wrap the model in ``torch.compile`` (falls back to eager with a warning if
      the compiler is not usable here).
    """
    if isinstance(model, InferenceModel):
        model = model.base
    if device is None:
        # a plain module here (describe() builds on this file, so it cannot be used)
        device = next(model.parameters()).device
    dtype = resolve_precision(precision, device)
    base = cast(SRModel, model).fold_res_scale().to(device).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    if dtype != torch.float32:
        keep = _fp32_modules(base)
        keep_params = {id(p) for m in keep for p in m.parameters()}
        for p in base.parameters():
            if id(p) not in keep_params:
                p.data = p.data.to(dtype)
        # Each half of the network casts its input on entry, so the float32 and low-precision
        # layers can be mixed without touching the model's forward.
        for m in keep:
            m.register_forward_pre_hook(_cast_input(torch.float32))
        for name in ("body", "pre_process", "upsample"):
            if hasattr(base, name):
                base.get_submodule(name).register_forward_pre_hook(_cast_input(dtype))
                if isinstance(getattr(base, name), nn.ModuleList):
                    for sub in getattr(base, name):
                        sub.register_forward_pre_hook(_cast_input(dtype))
        for m in base.tail:
            if not isinstance(m, nn.Conv2d):  # the EDSR upsampler inside the tail
                m.register_forward_pre_hook(_cast_input(dtype))
    if channels_last:
        base = base.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lag
    return InferenceModel(base, dtype, channels_last, compiled=compile)


def unwrap(model: nn.Module) -> nn.Module:
    """The eager model behind an :class:`InferenceModel` (or the model itself)."""
    return model.base if isinstance(model, InferenceModel) else model


__all__ = [
    "PRECISIONS",
    "InferenceModel",
    "Precision",
    "cpu_has_native_bf16",
    "precision_name",
    "prepare_model",
    "resolve_precision",
    "unwrap",
]
