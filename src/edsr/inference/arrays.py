"""The array API: PIL images, numpy arrays and torch tensors in, the same type, layout and range
out.

The official weights expect RGB values in 0..255. Everything here converts to that range and
back, so a [0, 1] float tensor or a 16-bit image cannot silently produce a black or white
picture.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image as PILImage

from edsr.errors import EdsrError
from edsr.inference.descriptor import Model, resolve_scale
from edsr.inference.engine import ArraySink, TensorSink, TileBar, array_input, chain, run_tiled
from edsr.inference.precision import compute_model
from edsr.inference.tiling import OnTile, ShouldStop
from edsr.validators import finite_float, int_in_range

ImageLike = TypeVar("ImageLike", PILImage.Image, np.ndarray, torch.Tensor)


def upscale_tensor(
    model: Model,
    x: torch.Tensor,
    scale: int | None = None,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    progress: bool = False,
    on_tile: OnTile | None = None,
    should_stop: ShouldStop | None = None,
) -> torch.Tensor:
    """Upscale (N, C, H, W) float images in 0..255 (C = 1, 3, or 4 with alpha last); not rounded.

    Works in tiles sized to ``max_memory`` (default: see
    :func:`~edsr.inference.memory.default_memory_budget`) or of ``tile`` LR pixels, with the
    output assembled in one preallocated buffer on ``x``'s device; the result equals
    whole-image inference. ``ensemble`` averages the 8 flips/rotations. ``on_tile(done,
    total)`` is told the progress; ``should_stop()``, asked before each tile, cancels with
    :class:`~edsr.errors.Cancelled`. ``model`` runs as given: :func:`upscale` is the door
    that runs a plain model on the default compute path.
    """
    scale = resolve_scale(model, scale)
    if x.ndim != 4:
        raise EdsrError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    out = torch.empty((n, c, h * scale, w * scale), device=x.device)
    bar = TileBar(progress)
    try:
        run_tiled(
            model,
            x,
            scale,
            TensorSink(out),
            tile=tile,
            max_memory=max_memory,
            ensemble=ensemble,
            on_tile=chain(bar, on_tile),
            should_stop=should_stop,
        )
    finally:
        bar.close()
    return out


def upscale(
    image: ImageLike,
    model: Model,
    scale: int | None = None,
    *,
    value_range: float | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    precision: str | None = None,
    on_tile: OnTile | None = None,
    should_stop: ShouldStop | None = None,
) -> ImageLike:
    """Upscale an image and return it in the type, layout and range it came in.

    - PIL images: modes L, RGB, RGBA, LA, P (becomes RGB/RGBA), I;16 (16-bit gray).
    - numpy arrays: (H, W) or (H, W, C), C in 1, 3, 4; uint8 is 0..255, uint16 is 0..65535,
      floats are 0..1 unless ``value_range`` says otherwise (e.g. 255).
    - torch tensors: (C, H, W) or (N, C, H, W), with the same range rules as numpy.

    The model always sees 0..255, which is what the official weights were trained on.
    Integer outputs are rounded and clipped; float outputs are clipped to the input range.
    Without ``scale``, a model's only scale, else x4 (else its largest): see
    :mod:`edsr.defaults`. Large images are processed in exact tiles (``tile``,
    ``max_memory``: see :func:`upscale_tensor`); ``ensemble=True`` is the paper's
    self-ensemble (EDSR+/MDSR+). ``on_tile(done, total)`` reports progress and
    ``should_stop()`` cancels (:class:`~edsr.errors.Cancelled`) between tiles.

    The model runs on the compute path ``edsr upscale`` runs: ``precision`` left out is
    ``auto`` (bf16 on GPUs and on CPUs that compute it natively, else fp32), and a plain model
    is prepared for it on first use and the prepared copy reused while the model's weights,
    device and mode stay the same (:func:`~edsr.inference.precision.compute_model`); the model
    itself is not changed. ``precision="fp32"`` runs in float32 throughout; a model from
    :func:`~edsr.inference.precision.prepare_model` runs as prepared.
    """
    # the Python door's values, checked where they enter: one EdsrError naming the argument
    if scale is not None:
        scale = int_in_range(scale, "scale")
    if tile is not None:
        tile = int_in_range(tile, "tile")
    if value_range is not None:
        value_range = finite_float(value_range, "value_range")
    model = compute_model(model, precision)
    opts: dict[str, Any] = {
        "tile": tile,
        "max_memory": max_memory,
        "ensemble": ensemble,
        "on_tile": on_tile,
        "should_stop": should_stop,
    }
    if isinstance(image, PILImage.Image):
        return _upscale_pil(image, model, scale, **opts)
    if isinstance(image, np.ndarray):
        return _upscale_numpy(image, model, scale, value_range, **opts)
    if isinstance(image, torch.Tensor):
        return _upscale_torch(image, model, scale, value_range, **opts)
    raise EdsrError(
        f"upscale takes a PIL image, numpy array or torch tensor, not {type(image).__name__}"
    )


def _infer_float_range(x: torch.Tensor | np.ndarray, value_range: float | None) -> float:
    finite = bool(np.isfinite(x).all()) if isinstance(x, np.ndarray) else bool(x.isfinite().all())
    if not finite:  # with or without value_range: NaN is no gray level
        raise EdsrError("image holds NaN or infinite values; an image's values are finite")
    if value_range is not None:  # checked finite and positive where it entered (upscale)
        return float(value_range)
    n = x.size if isinstance(x, np.ndarray) else x.numel()
    peak = float(x.max()) if n else 0.0
    if peak > 1.0 + 1e-3:
        raise EdsrError(
            f"float input has values up to {peak:.4g}, but float images are taken as 0..1; "
            "pass value_range=255 for 0..255 data"
        )
    return 1.0


def _range_of(
    dtype: torch.dtype | np.dtype, x: torch.Tensor | np.ndarray, value_range: float | None
) -> tuple[float, bool]:
    """(value range, is_integer) for an input of this dtype."""
    if dtype in (np.uint8, torch.uint8):
        return 255.0, True
    if dtype in (np.uint16, torch.uint16):
        return 65535.0, True
    if (
        np.issubdtype(dtype, np.floating)
        if isinstance(dtype, np.dtype)
        else dtype.is_floating_point
    ):
        return _infer_float_range(x, value_range), False
    raise EdsrError(f"unsupported image dtype {dtype}; use uint8, uint16 or float")


def _upscale_torch(
    x: torch.Tensor, model: Model, scale: int | None, value_range: float | None, **opts: Any
) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise EdsrError(
            f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise EdsrError(f"image is empty: a tensor of shape {tuple(x.shape)} holds no pixel")
    vr, is_int = _range_of(x.dtype, x, value_range)
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    if batch.shape[1] not in (1, 2, 3, 4):
        raise EdsrError(
            f"expected 1, 3 or 4 channels in dim 1 (channels first), got shape {tuple(x.shape)}"
        )
    out = upscale_tensor(model, batch.float() * (255.0 / vr), scale, **opts).mul_(vr / 255.0)
    out = out.clamp_(0, vr).to(x.device)
    out = out.round().to(x.dtype) if is_int else out.to(x.dtype)
    return out if x.ndim == 4 else out[0]


def _check_numpy(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        return a
    raise EdsrError(f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {a.shape}")


def _upscale_numpy(
    a: np.ndarray, model: Model, scale: int | None, value_range: float | None, **opts: Any
) -> np.ndarray:
    if not a.dtype.isnative:  # big-endian samples (a FITS or raw file): the same values
        return _upscale_numpy(
            a.astype(a.dtype.newbyteorder("=")), model, scale, value_range, **opts
        ).astype(a.dtype)
    a3 = _check_numpy(a)
    scale = resolve_scale(model, scale)
    vr, is_int = _range_of(a.dtype, a, value_range)
    h, w, c = a3.shape
    if h == 0 or w == 0:
        raise EdsrError(f"cannot upscale an empty image of size {w}x{h}")
    # Tiles are quantized straight into the output array: no float copy of the HR image.
    out = np.empty((h * scale, w * scale, c), dtype=a.dtype)
    run_tiled(model, array_input(a3, vr), scale, ArraySink(out, vr, is_int), **opts)
    return out[:, :, 0] if a.ndim == 2 else out


def _upscale_pil(
    img: PILImage.Image, model: Model, scale: int | None, **opts: Any
) -> PILImage.Image:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if mode == "1" else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise EdsrError(
                f"a mode {img.mode!r} image with values {a.min()}..{a.max()}: 16-bit images hold "
                "0..65535; rescale it first"
            )
        out = _upscale_numpy(a.astype(np.uint16), model, scale, None, **opts)
        # Pillow picks the mode from the array: I;16 for uint16, I for int32 (as it came)
        return PILImage.fromarray(out if img.mode != "I" else out.astype(np.int32))
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise EdsrError(f"unsupported PIL image mode {img.mode!r}; convert it to RGB first")
    out = _upscale_numpy(np.asarray(img), model, scale, None, **opts)
    return PILImage.fromarray(out, mode=img.mode)
