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
import itertools
import threading
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Literal, cast

import torch
from torch import nn

from edsr import defaults
from edsr.errors import EdsrError, one_line
from edsr.inference.calibration import int8_meets_bar
from edsr.inference.fused import fused_forward, fused_kernels_available
from edsr.inference.quantize import Int8Engine, int8_engine
from edsr.models import SRModel, model_from_config
from edsr.runtimes import ExportedModel

Precision = Literal["fp32", "bf16", "fp16", "int8", "auto"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "int8", "auto")
#: What training can run in: int8 is a post-training, inference-only path.
TRAINING_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "auto")
# int8 is onnxruntime's static quantization (edsr.inference.quantize); torch.qint8 names it.
_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.qint8,
}
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


def cpu_has_int8_dot() -> bool:
    """True when the CPU has int8 dot-product instructions (VNNI, or AMX int8 tiles)."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def resolve_precision(
    precision: str, device: torch.device | str, *, int8: bool | None = None
) -> torch.dtype:
    """The compute dtype for ``precision`` on ``device``, the one place ``auto`` is decided.

    The rule: ``auto`` is the fastest path that meets the quality bar: on a CUDA GPU bf16
    (fp16 where bf16 is missing); on a CPU bf16 where the CPU computes bf16 natively (AMX or
    AVX-512 BF16), else int8 where it has int8 dot products (VNNI) and the model's int8 was
    measured to meet the bar (``int8=True``), else fp32.

    Measured with ``benchmarks/bench_inference.py`` on a quiet 2-core EPYC with AVX-512 BF16
    and VNNI (EDSR-baseline x4, 128x128, min of 15): fused bf16 758 GFLOP/s, onnxruntime int8
    556 GOP/s, fused fp32 414: where bf16 is native it beats onnxruntime's int8, which
    reaches under half of the int8 convolution's ceiling; where it is not, int8 beats fp32.
    Without VNNI, int8 products go through 16-bit sums that can saturate, which the quality
    measurement did not cover: never int8 there.

    ``int8``: None where the caller cannot run int8 at all (training), False where it can but
    the model's quality was not shown (an explicit ``int8`` is still honoured). An explicit
    name is that dtype (``torch.qint8`` for int8), checked against the device.
    """
    if precision not in PRECISIONS:
        raise EdsrError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if precision == "int8":
        if int8 is None:
            raise EdsrError("int8 is for inference (upscale, eval, serve, export); train in bf16")
        if device.type != "cpu":
            raise EdsrError("int8 runs on the CPU; use --device cpu, or bf16/fp16 on a GPU")
        return torch.qint8
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
    if device.type == "cpu" and int8 and cpu_has_int8_dot():
        return torch.qint8
    return torch.float32


def chosen_precision(
    model: nn.Module, precision: str = "auto", device: torch.device | str | None = None
) -> str:
    """The precision name :func:`prepare_model` runs ``model`` in for ``precision``."""
    if isinstance(model, ExportedModel):
        return exported_precision(model, precision)
    if isinstance(model, InferenceModel):
        return model.precision if precision == "auto" else precision
    if device is None:
        device = next(model.parameters()).device
    if precision == "auto" and resolve_precision("auto", device, int8=True) == torch.qint8:
        # Only where the CPU would run int8 is the model's quality record looked up.
        return precision_name(resolve_precision("auto", device, int8=int8_meets_bar(model)))
    return precision_name(resolve_precision(precision, device, int8=False))


def explain_precision(model: nn.Module, precision: str | None, device: torch.device | str) -> str:
    """One line for ``-v``: the path chosen (``precision`` None: the default), and the CPU
    flags and quality record behind it."""
    precision = defaults.PRECISION if precision is None else precision
    name = chosen_precision(model, precision, device)
    if isinstance(unwrap(model), ExportedModel):
        return f"precision: {name} (an exported graph runs as it was exported)"
    why = "as asked" if precision != "auto" else "auto"
    if torch.device(device).type == "cpu":
        flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16"})
        flags += sorted(f for f in cpu_flags() if f.startswith("amx"))
        why += f"; CPU: {' '.join(flags) or 'flags unknown'}"
        if precision == "auto" and cpu_has_native_bf16():
            why += "; native bf16 outruns onnxruntime's int8"
        elif precision == "auto" and cpu_has_int8_dot():
            ok = int8_meets_bar(model)
            why += "; int8 " + ("measured within" if ok else "not shown within") + " the bar"
    return f"precision: {name} ({why})"


def exported_precision(model: ExportedModel, precision: str | None) -> str:
    """The precision an exported graph runs in: its own; asking for another is an error."""
    if precision not in (None, "auto", model.precision):
        raise EdsrError(
            f"{model.path.name} is an exported {model.precision} graph and runs in "
            f"{model.precision} only; leave --precision at auto, or export again"
        )
    return model.precision


def precision_name(dtype: torch.dtype) -> str:
    """The precision name ("fp32", "bf16", "fp16", "int8") of a compute dtype."""
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

    ``fused``: run :func:`edsr.inference.fused.fused_forward` (oneDNN conv+ReLU and conv+add,
    cheap pixel shuffles) instead of ``base``'s eager forward; same weights, same result within
    float rounding, built at once (no compile step). Inference only: a forward that needs
    gradients runs ``base``.
    """

    base: SRModel
    _compiled: Callable[..., torch.Tensor] | None
    _fused: Callable[[torch.Tensor, int], torch.Tensor] | None

    def __init__(
        self,
        base: nn.Module,
        dtype: torch.dtype,
        channels_last: bool,
        compiled: bool = False,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.base = cast(SRModel, base)
        self.dtype = dtype
        self.channels_last = channels_last
        self.compiled = compiled
        self.fused = fused
        # Not attributes nn.Module would register: both wrappers share base's weights.
        object.__setattr__(self, "_compiled", torch.compile(base) if compiled else None)
        object.__setattr__(self, "_fused", fused_forward(self.base) if fused else None)

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
        fused_ok = not (torch.is_grad_enabled() and x.requires_grad) and scale in self.scales
        if self._fused is not None and fused_ok:
            with torch.no_grad():
                return self._fused(x, scale).float()
        if self._compiled is not None:
            try:
                return self._compiled(x, scale).float()
            except Exception as e:  # noqa: BLE001 - any compiler failure: eager gives the same result
                warnings.warn(
                    f"torch.compile failed ({type(e).__name__}: {one_line(e)}); running without it",
                    RuntimeWarning,
                    stacklevel=2,
                )
                object.__setattr__(self, "_compiled", None)
        return self.base(x, scale).float()


class Int8Model(InferenceModel):
    """An :class:`InferenceModel` whose forward is onnxruntime's int8 engine; ``base`` is the
    float model it was quantized from (what :func:`describe` reports on)."""

    def __init__(self, base: nn.Module, engine: Int8Engine) -> None:
        super().__init__(base, torch.qint8, channels_last=False)
        self.engine = engine

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        return self.engine(x.float(), self.scales[0] if scale is None else scale)


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
    - on a CPU in fp32/bf16 without ``compile``: the fused forward (:mod:`edsr.inference.fused`),
      measured faster than ``torch.compile`` with freezing (edsr-baseline x4, 128x128, one
      thread: fused fp32 193 GFLOP/s, bf16 359; compiled 136 / 220 after 12-34 s of compiling;
      eager 156 / 265), so ``compile`` is only worth it on GPUs.
    """
    if isinstance(model, InferenceModel):
        model = model.base
    if isinstance(model, ExportedModel):
        # Already a graph for its runtime: nothing to fold, cast or fuse.
        if compile:
            raise EdsrError("--compile is for checkpoints; an exported graph runs as exported")
        name = exported_precision(model, precision)
        return InferenceModel(model, _DTYPES[name], channels_last=False)
    if device is None:
        # a plain module here (describe() builds on this file, so it cannot be used)
        device = next(model.parameters()).device
    if chosen_precision(model, precision, device) == "int8":
        # int8 is onnxruntime's engine, not a dtype of this model: handed over whole.
        plain = cast(SRModel, model)
        return Int8Model(plain.fold_res_scale().eval(), int8_engine(plain))
    dtype = resolve_precision(precision, device, int8=False)
    # float32 first: a model the user cast (``.half()``, ``.to(torch.bfloat16)``) is prepared
    # from its weights as they are, each layer then in the precision it runs in
    base = cast(SRModel, model).fold_res_scale().to(device=device, dtype=torch.float32).eval()
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
    # The fused kernels are oneDNN's fp32/bf16 ones, and need the channels-last layout.
    fused = (
        not compile
        and channels_last
        and torch.device(device).type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and fused_kernels_available()
    )
    return InferenceModel(base, dtype, channels_last, compiled=compile, fused=fused)


_PREPARED: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, InferenceModel]] = (
    weakref.WeakKeyDictionary()
)
_PREPARED_LOCK = threading.Lock()


def _fingerprint(t: torch.Tensor) -> tuple:
    """What a tensor holds, cheaply: where it is, its version, its norm and samples of its
    values. ``_version`` misses edits through ``.data`` and numpy views, which the norm and the
    samples see (measured: about 1 ms for the bundled MDSR's 3.2M parameters)."""
    flat = t.detach().reshape(-1)
    sample = (
        torch.cat([flat[:256], flat[1 :: max(1, flat.numel() // 251)]]) if flat.numel() else flat
    )
    norm = float(torch.linalg.vector_norm(flat.float())) if t.is_floating_point() else 0.0
    return (
        t.data_ptr(),
        t._version,
        t.dtype,
        t.device,
        tuple(t.shape),
        norm,
        sample.cpu().float().numpy().tobytes(),
    )


def _hooks(m: nn.Module | None) -> tuple:
    """The forward hooks on ``m`` (None: the global ones every module runs)."""
    if m is None:
        g = torch.nn.modules.module
        return tuple(g._global_forward_hooks), tuple(g._global_forward_pre_hooks)
    return tuple(m._forward_hooks), tuple(m._forward_pre_hooks)


def _structure(model: nn.Module) -> tuple:
    """Each submodule's name, type and plain attributes (``res_scale``, ``training``): a
    swapped module or a changed attribute changes it."""
    out: list[tuple] = []
    for name, m in model.named_modules():
        attrs = sorted(
            (k, v)
            for k, v in vars(m).items()
            if not k.startswith("_") and isinstance(v, (bool, int, float, str))
        )
        out.append((name, type(m), tuple(attrs), _hooks(m)))
    out.append(("", None, (), _hooks(None)))
    return tuple(out)


def copy_key(model: nn.Module, precision: str) -> tuple:
    """What a prepared copy of ``model`` depends on: every parameter's and buffer's
    :func:`_fingerprint` (an optimizer step, ``load_state_dict``, ``.data`` edits, an EMA's
    ``copy_``, a numpy view's writes), its modules and their attributes, so a model changed
    after an upscale is never run from a stale copy."""
    tensors = tuple(_fingerprint(t) for t in itertools.chain(model.parameters(), model.buffers()))
    config = getattr(model, "config", None)
    shape = repr(config()) if callable(config) else None
    return precision, model.training, tensors, _structure(model), shape


_CANONICAL: dict[str, tuple] = {}


def _hooked(model: nn.Module) -> bool:
    return any(any(_hooks(m)) for m in (None, *model.modules()))


def fast_copy_matches(model: nn.Module) -> bool:
    """Whether the prepared copy computes what ``model(x)`` computes: an edsr model with the
    modules its config builds, of the types it builds, and no forward hooks. A model changed
    otherwise (a module swapped, a hook added, a class of its own) runs as it is."""
    config = getattr(model, "config", None)
    if not isinstance(model, SRModel) or not callable(config) or _hooked(model):
        return False
    key = repr(config())
    if key not in _CANONICAL:
        try:
            fresh = model_from_config(config())
        except (ValueError, TypeError, KeyError, EdsrError):
            return False
        _CANONICAL[key] = tuple((n, type(m)) for n, m in fresh.named_modules())
    return tuple((n, type(m)) for n, m in model.named_modules()) == _CANONICAL[key]


class PlainModel(InferenceModel):
    """``model`` run as it is (its own forward, hooks and modules, in its own dtype), for a
    model whose fast copy could not be proved to match: slower, never different."""

    def __init__(self, base: nn.Module) -> None:
        dtype = next(base.parameters()).dtype
        super().__init__(base, dtype, channels_last=False)

    def forward(self, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
        dtype = next(self.base.parameters()).dtype
        return self.base(x.to(dtype), self.scales[0] if scale is None else scale).float()


def compute_model(model: nn.Module, precision: str | None = None) -> InferenceModel:
    """``model`` on the compute path every door runs: ``precision`` (None:
    :data:`edsr.defaults.PRECISION`, ``auto``) prepared by :func:`prepare_model` on the
    model's device, as ``edsr upscale`` does.

    A plain model is prepared on first use and the copy kept for as long as the model lives;
    it is prepared again when its weights (however changed: ``.data`` and numpy views too),
    device, dtype, mode, modules or their attributes change, so the model itself stays
    trainable and exportable and ``edsr.upscale(x, model)`` follows ``model(x)``. A model the
    fast copy cannot be proved to match (forward hooks, a module swapped for another type) runs
    as it is (:class:`PlainModel`). A model already prepared runs as it is (asking it for
    another precision is a ``ValueError``: prepare the plain model for that).
    """
    if isinstance(model, InferenceModel):
        if precision not in (None, "auto", model.precision):
            raise ValueError(
                f"this model is prepared for {model.precision}; prepare the plain model "
                f"for {precision} instead"
            )
        return model
    precision = defaults.PRECISION if precision is None else precision
    key = copy_key(model, precision)
    with _PREPARED_LOCK:
        hit = _PREPARED.get(model)
        if hit is not None and hit[0] == key:
            return hit[1]
        if isinstance(model, ExportedModel) or fast_copy_matches(model):
            prepared = prepare_model(model, precision=precision)
        else:
            prepared = PlainModel(model)
        _PREPARED[model] = (key, prepared)
        return prepared


def unwrap(model: nn.Module) -> nn.Module:
    """The eager model behind an :class:`InferenceModel` (or the model itself)."""
    return model.base if isinstance(model, InferenceModel) else model


__all__ = [
    "PRECISIONS",
    "TRAINING_PRECISIONS",
    "InferenceModel",
    "Int8Model",
    "PlainModel",
    "Precision",
    "cpu_has_int8_dot",
    "cpu_has_native_bf16",
    "chosen_precision",
    "exported_precision",
    "compute_model",
    "copy_key",
    "fast_copy_matches",
    "explain_precision",
    "precision_name",
    "prepare_model",
    "resolve_precision",
    "unwrap",
]
