"""PSNR and SSIM as the super-resolution benchmark tables measure them.

Protocol (EDSR spec, section 3): shave ``crop_border`` pixels from every side; measure
3-channel images on the luma of MATLAB's ``rgb2ycbcr`` (BT.601, Y in 16..235) and
1-channel images on their gray values; everything in float64. SSIM follows Wang et al.'s
``ssim_index.m``: 11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, 'valid' filtering.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr", "rgb_to_y", "ssim"]

_Y_COEFFS = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

ArrayLike = torch.Tensor | np.ndarray


def rgb_to_y(x: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Luma of MATLAB's ``rgb2ycbcr``: ``(N, 3, H, W) -> (N, 1, H, W)``.

    The formula ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` is for data in 0..255;
    other ranges are mapped to 0..255 and back, so Y is returned in the input's own scale
    (16..235 for ``data_range=255``, 16/255..235/255 for ``data_range=1``), as MATLAB does
    for uint8 and double images. Not rounded. Float inputs keep their dtype; others give
    float64.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"rgb_to_y expects (N, 3, H, W), got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        x = x.to(torch.float64)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    # In the input's scale the coefficients stay coef / 255; only the offset scales.
    y = (_Y_COEFFS[0] * r + _Y_COEFFS[1] * g + _Y_COEFFS[2] * b) / 255.0
    return y + _Y_OFFSET * data_range / 255.0


def _to_nchw(x: ArrayLike, name: str) -> torch.Tensor:
    """Torch (N,C,H,W)/(C,H,W)/(H,W) or numpy (N,H,W,C)/(H,W,C)/(H,W) -> float64 NCHW."""
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"{name}: numpy input must be HW, HWC or NHWC, got {x.shape}")
        t = torch.from_numpy(np.array(x, dtype=np.float64))
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t.permute(2, 0, 1)[None]
        else:
            t = t.permute(0, 3, 1, 2)
        return t
    if isinstance(x, torch.Tensor):
        if x.ndim not in (2, 3, 4):
            raise ValueError(f"{name}: tensor must be HW, CHW or NCHW, got {tuple(x.shape)}")
        t = x.detach().to(torch.float64)
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        return t
    raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _shape(x: ArrayLike) -> tuple[int, ...]:
    return tuple(x.shape)


def _prepare(
    sr: ArrayLike,
    hr: ArrayLike,
    crop_border: int,
    y_channel: bool,
    data_range: float,
    round_y: bool,
    gray_as_rgb: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    crop_border = int(crop_border)
    if crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got {crop_border!r}")
    if not (data_range > 0 and math.isfinite(data_range)):
        raise ValueError(f"data_range must be positive, got {data_range!r}")
    a = _to_nchw(sr, "sr")
    b = _to_nchw(hr, "hr")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: sr {_shape(sr)} vs hr {_shape(hr)}")
    device = a.device if isinstance(sr, torch.Tensor) else b.device
    a, b = a.to(device), b.to(device)

    if crop_border:
        h, w = a.shape[-2:]
        if h <= 2 * crop_border or w <= 2 * crop_border:
            raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
        a = a[..., crop_border:-crop_border, crop_border:-crop_border]
        b = b[..., crop_border:-crop_border, crop_border:-crop_border]

    if y_channel:
        c = a.shape[1]
        if c == 1 and gray_as_rgb:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
            c = 3
        if c == 3:
            a, b = rgb_to_y(a, data_range), rgb_to_y(b, data_range)
            if round_y:
                a, b = _round_levels(a, data_range), _round_levels(b, data_range)
        elif c != 1:
            raise ValueError(f"y_channel needs 1 or 3 channels, got {c}")
    return a, b


def _round_levels(y: torch.Tensor, data_range: float) -> torch.Tensor:
    """Round to integer levels of the 0..255 scale, half away from zero (MATLAB round)."""
    v = y * (255.0 / data_range)
    v = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return v * (data_range / 255.0) if data_range != 255.0 else v


def psnr(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    crop_border: int = 0,
    y_channel: bool = True,
    data_range: float = 255.0,
    round_y: bool = False,
    gray_as_rgb: bool = False,
) -> torch.Tensor:
    """Per-image PSNR in dB, shape ``(N,)``, float64; ``inf`` where the images are equal.

    Inputs: torch ``(N,C,H,W)``/``(C,H,W)``/``(H,W)`` or numpy ``(H,W,C)``/``(H,W)``/
    ``(N,H,W,C)``, uint8 or float, values in ``0..data_range`` (not rescaled). With
    ``y_channel``, 3-channel images are measured on Y (rounded to integer levels only with
    ``round_y``) and 1-channel images on their gray values, or on the Y of the gray
    replicated to RGB with ``gray_as_rgb`` (public EDSR code). Without ``y_channel``, the
    MSE is over all channels.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, data_range, round_y, gray_as_rgb)
    mse = (a - b).square().mean(dim=(1, 2, 3))
    # float64 tensor division: mse == 0 gives inf without a warning
    return 10.0 * torch.log10(data_range**2 / mse)


#: The side of SSIM's Gaussian window: an image measured must be at least this large.
SSIM_WINDOW = 11


def _gaussian_1d(size: int = SSIM_WINDOW, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim(
    sr: ArrayLike,
    hr: ArrayLike,
    *,
    crop_border: int = 0,
    y_channel: bool = True,
    data_range: float = 255.0,
    round_y: bool = False,
    gray_as_rgb: bool = False,
) -> torch.Tensor:
    """Per-image SSIM, shape ``(N,)``, float64 (Wang et al., ``ssim_index.m``).

    Same inputs and keywords as :func:`psnr`; ``L = data_range``. 'Valid' filtering with
    the 11x11 Gaussian (sigma 1.5); the SSIM map is averaged over positions, then over
    channels when several are measured.
    """
    a, b = _prepare(sr, hr, crop_border, y_channel, data_range, round_y, gray_as_rgb)
    n, c, h, w = a.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least 11x11 after cropping, got {h}x{w}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2

    g = _gaussian_1d().tolist()

    def filt(x: torch.Tensor) -> torch.Tensor:
        # filter2(window, x, 'valid') with the separable 11x11 Gaussian (fspecial's window
        # is the outer product of this 1-D one), as shifted sums: faster than float64 conv2d.
        hh, ww = x.shape[-2] - 10, x.shape[-1] - 10
        y = g[0] * x[..., :hh, :]
        for k in range(1, 11):
            y.add_(x[..., k : k + hh, :], alpha=g[k])
        z = g[0] * y[..., :ww]
        for k in range(1, 11):
            z.add_(y[..., k : k + ww], alpha=g[k])
        return z

    a = a.reshape(n * c, 1, h, w)
    b = b.reshape(n * c, 1, h, w)
    stack = torch.cat([a, b, a * a, b * b, a * b], dim=0)
    mu1, mu2, e11, e22, e12 = filt(stack).split(n * c, dim=0)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s11, s22, s12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu12
    ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s11 + s22 + c2))
    return ssim_map.mean(dim=(1, 2, 3)).reshape(n, c).mean(dim=1)
