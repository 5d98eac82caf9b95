"""MATLAB-compatible bicubic resizing (``imresize(img, scale, 'bicubic')``).

Per axis, output pixel ``x`` (1-based) maps to input position
``u = x / s + 0.5 * (1 - 1 / s)``; the Keys cubic kernel (a = -0.5) is stretched to
``s * h(s * d)`` when downscaling with antialiasing; taps outside the image are mirrored
symmetrically; weights are normalised to sum 1. Each axis is applied as a dense
``(out, in)`` weight matrix built in float64, the axis with the smaller scale first, as
MATLAB does. Intermediate results stay in floating point (MATLAB's uint8 path rounds after
each axis; see :func:`imresize`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

__all__ = [
    "bicubic_lr",
    "imresize",
    "imresize_np",
    "imresize_pil",
    "mod_crop",
    "output_size",
    "resize_weights",
]


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = x.abs()
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@lru_cache(maxsize=128)
def _weights_cpu64(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width = kernel_width / scale

        def h(d: torch.Tensor) -> torch.Tensor:
            return scale * _cubic(scale * d)

    else:
        h = _cubic  # type: ignore[assignment]  # same signature, other parameter name

    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]  # 1-based
    w = h(u[:, None] - idx)
    w = w / w.sum(dim=1, keepdim=True)

    # Symmetric mirroring, periodic with period 2n so it also holds when the kernel is
    # wider than the image (MATLAB: aux = [1:n, n:-1:1]; aux(mod(idx - 1, 2n) + 1)).
    idx0 = idx.long() - 1
    aux = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    src = aux[torch.remainder(idx0, 2 * in_len)]

    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    # Mirrored taps hitting the same pixel add up; the all-zero tap columns MATLAB drops
    # contribute nothing to a dense matrix.
    mat.scatter_add_(1, src, w)
    return mat


@lru_cache(maxsize=128)
def _weights(
    in_len: int,
    out_len: int,
    scale: float,
    antialias: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    return _weights_cpu64(in_len, out_len, scale, antialias).to(device=device, dtype=dtype)


def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """The ``(out_len, in_len)`` float64 weight matrix MATLAB's imresize uses along one axis."""
    if in_len < 1 or out_len < 1:
        raise ValueError(f"lengths must be positive, got in_len={in_len}, out_len={out_len}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return _weights_cpu64(int(in_len), int(out_len), float(scale), bool(antialias)).clone()


def _check_scale(scale: object) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    s = float(scale)
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return s


def output_size(
    in_size: tuple[int, int],
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Resolve ``(out_h, out_w)`` and the per-axis scales the way MATLAB's imresize does.

    With ``scale``: ``out = ceil(scale * in)`` per axis (plain ceil in float64, as MATLAB).
    With ``size`` (height, width): the per-axis scale is ``out / in``.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    h, w = in_size
    if h < 1 or w < 1:
        raise ValueError(f"cannot resize an empty image of size {h}x{w}")
    if scale is not None:
        s = _check_scale(scale)
        return (math.ceil(s * h), math.ceil(s * w)), (s, s)
    try:
        oh, ow = size  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (height, width) pair, got {size!r}") from None
    for v in (oh, ow):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"size must be two positive integers, got {size!r}")
    oh, ow = int(oh), int(ow)
    return (oh, ow), (oh / h, ow / w)


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float32 accumulation reaches ~8e-5 gray levels of error on 0..255 data, too close to
    # the 1e-4 target and enough to flip uint8 rounding; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    *,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize like MATLAB ``imresize(x, scale, 'bicubic')`` (or with an output ``size``).

    ``x`` is ``(N, C, H, W)``, ``(C, H, W)`` or ``(H, W)``, float or uint8, on any device;
    the last two dimensions are resized. Computation is in float64 (float32 on MPS). Float
    input returns the same dtype, unclipped; uint8 input is rounded half away from zero and
    clipped to 0..255, as MATLAB rounds its result. Unlike MATLAB's own uint8 path, the
    intermediate after the first axis is kept in float, not rounded to uint8.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"x must be (N,C,H,W), (C,H,W) or (H,W); got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise ValueError(f"x must be uint8 or floating point, got {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"cannot resize an empty tensor of shape {tuple(x.shape)}")
    in_h, in_w = x.shape[-2], x.shape[-1]
    (out_h, out_w), (s_h, s_w) = output_size((in_h, in_w), scale, size=size)

    cdtype = _compute_dtype(x.device)
    lead = x.shape[:-2]
    y = x.reshape(-1, in_h, in_w).to(cdtype)
    wh = _weights(in_h, out_h, s_h, bool(antialias), y.device, cdtype)
    ww = _weights(in_w, out_w, s_w, bool(antialias), y.device, cdtype)

    # MATLAB resizes along the axis with the smaller scale first (rows first on a tie).
    if s_h <= s_w:
        y = torch.matmul(wh, y)
        y = torch.matmul(y, ww.T)
    else:
        y = torch.matmul(y, ww.T)
        y = torch.matmul(wh, y)
    y = y.reshape(*lead, out_h, out_w)

    if x.dtype == torch.uint8:
        # round half away from zero == floor(v + 0.5) once v >= 0
        return torch.floor(y.clamp(0, 255) + 0.5).to(torch.uint8)
    return y.to(x.dtype)


def imresize_np(
    img: np.ndarray, scale: float | None = None, *, size: tuple[int, int] | None = None
) -> np.ndarray:
    """:func:`imresize` for an ``(H, W)`` or ``(H, W, C)`` numpy array (uint8 or float)."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"img must be a numpy array, got {type(img).__name__}")
    if img.ndim not in (2, 3):
        raise ValueError(f"img must be (H, W) or (H, W, C); got shape {img.shape}")
    if img.dtype != np.uint8 and not np.issubdtype(img.dtype, np.floating):
        raise ValueError(f"img must be uint8 or floating point, got {img.dtype}")
    arr = np.ascontiguousarray(img)
    if not arr.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on those
        arr = arr.copy()
    t = torch.from_numpy(arr)
    if img.ndim == 3:
        t = t.permute(2, 0, 1)
    out = imresize(t, scale, size=size)
    if img.ndim == 3:
        out = out.permute(1, 2, 0)
    return np.ascontiguousarray(out.numpy())


def imresize_pil(
    img: Image.Image, scale: float | None = None, *, size: tuple[int, int] | None = None
) -> Image.Image:
    """:func:`imresize` for a PIL image in mode L or RGB; ``size`` is (height, width)."""
    if not isinstance(img, Image.Image):
        raise ValueError(f"img must be a PIL image, got {type(img).__name__}")
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"only L and RGB images are supported, got mode {img.mode}")
    out = imresize_np(np.asarray(img), scale, size=size)
    return Image.fromarray(out)


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """``img`` (H, W, ...) cut at the bottom and right to a multiple of ``scale`` per side: the
    HR image the papers' evaluation compares against (a view, not a copy)."""
    h, w = img.shape[0] - img.shape[0] % scale, img.shape[1] - img.shape[1] % scale
    return img[:h, :w]


def bicubic_lr(hr: np.ndarray, scale: int) -> np.ndarray:
    """The papers' LR image of an (H, W, C) uint8 HR image: :func:`mod_crop`, then MATLAB
    bicubic by ``1 / scale``, rounded to uint8, (H // scale, W // scale, C).

    The one way LR images are made: ``edsr eval`` and ``edsr train`` (for data sets without
    LR files) and ``edsr downscale`` (which writes them) all call it, so a folder it wrote
    scores exactly what the built-in LR making scores.
    """
    return imresize_np(mod_crop(hr, scale), 1.0 / scale)
