"""Running a model on user images: range handling, gray and alpha, PIL/numpy/tensor in and out.

The official weights expect RGB values in 0..255. Everything here converts to that range and
back, so a [0, 1] float tensor or a 16-bit image cannot silently produce a black or white
picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar, overload

import numpy as np
import torch
from PIL import Image as PILImage
from tqdm import tqdm

from edsr.errors import EdsrError
from edsr.fileio import check_writable
from edsr.imageio import IMAGE_EXTENSIONS, find_images, read_image, write_png
from edsr.models import SRModel
from edsr.resize import imresize

# BT.601 luma weights (what PIL's convert("L") uses) to turn the model's RGB output for a
# gray input back into one channel.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

ImageLike = TypeVar("ImageLike", PILImage.Image, np.ndarray, torch.Tensor)


def resolve_scale(model: SRModel, scale: int | None) -> int:
    if scale is None:
        if len(model.scales) == 1:
            return model.scales[0]
        have = ", ".join(f"x{s}" for s in model.scales)
        raise EdsrError(f"this model has scales {have}: choose one with --scale (scale=...)")
    scale = int(scale)
    if scale not in model.scales:
        have = ", ".join(f"x{s}" for s in model.scales)
        raise EdsrError(f"this model upscales {have}, not x{scale}")
    return scale


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def sr_forward(model: SRModel, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Model output for (N, C, H, W) float input in 0..255; C may be 1 (gray) for an RGB model."""
    n_colors = model.n_colors
    c = x.shape[1]
    if c == n_colors:
        return model(x, scale)
    if c == 1 and n_colors == 3:
        y = model(x.expand(-1, 3, -1, -1), scale)
        w = torch.tensor(_GRAY_WEIGHTS, dtype=y.dtype, device=y.device).view(1, 3, 1, 1)
        return (y * w).sum(dim=1, keepdim=True)
    raise EdsrError(f"the model takes {n_colors}-channel images, the input has {c} channels")


def upscale_tensor(model: SRModel, x: torch.Tensor, scale: int | None = None) -> torch.Tensor:
    """Upscale (N, C, H, W) float images in 0..255 (C = 1, 3, or 4 with alpha last); not rounded."""
    scale = resolve_scale(model, scale)
    if x.ndim != 4:
        raise EdsrError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise EdsrError(f"cannot upscale an empty image of size {x.shape[-1]}x{x.shape[-2]}")
    device = _model_device(model)
    x = x.to(device=device, dtype=torch.float32)
    alpha = None
    if x.shape[1] in (2, 4):
        x, alpha = x[:, :-1], x[:, -1:]
    out = sr_forward(model, x, scale)
    if alpha is not None:
        # Alpha is not image content the model was trained on: bicubic is the honest choice.
        out = torch.cat([out, imresize(alpha, scale)], dim=1)
    return out


def _from_unit(x: torch.Tensor, value_range: float) -> torch.Tensor:
    return x * (255.0 / value_range)


def _infer_float_range(x: torch.Tensor | np.ndarray, value_range: float | None) -> float:
    if value_range is not None:
        if value_range <= 0:
            raise EdsrError(f"value_range must be positive, got {value_range}")
        return float(value_range)
    n = x.size if isinstance(x, np.ndarray) else x.numel()
    peak = float(x.max()) if n else 0.0
    if peak > 1.0 + 1e-3:
        raise EdsrError(
            f"float input has values up to {peak:.4g}, but float images are taken as 0..1; "
            "pass value_range=255 for 0..255 data"
        )
    return 1.0


@overload
def upscale(image: PILImage.Image, model: SRModel, scale: int | None = ..., *, value_range: float | None = ...) -> PILImage.Image: ...
@overload
def upscale(image: np.ndarray, model: SRModel, scale: int | None = ..., *, value_range: float | None = ...) -> np.ndarray: ...
@overload
def upscale(image: torch.Tensor, model: SRModel, scale: int | None = ..., *, value_range: float | None = ...) -> torch.Tensor: ...


def upscale(image, model, scale=None, *, value_range=None):
    """Upscale an image and return it in the type, layout and range it came in.

    - PIL images: modes L, RGB, RGBA, LA, P (becomes RGB/RGBA), I;16 (16-bit gray).
    - numpy arrays: (H, W) or (H, W, C), C in 1, 3, 4; uint8 is 0..255, uint16 is 0..65535,
      floats are 0..1 unless ``value_range`` says otherwise (e.g. 255).
    - torch tensors: (C, H, W) or (N, C, H, W), with the same range rules as numpy.

    The model always sees 0..255, which is what the official weights were trained on.
    Integer outputs are rounded and clipped; float outputs are clipped to the input range.
    """
    if isinstance(image, PILImage.Image):
        return _upscale_pil(image, model, scale)
    if isinstance(image, np.ndarray):
        return _upscale_numpy(image, model, scale, value_range)
    if isinstance(image, torch.Tensor):
        return _upscale_torch(image, model, scale, value_range)
    raise EdsrError(f"upscale takes a PIL image, numpy array or torch tensor, not {type(image).__name__}")


def _range_of(dtype: torch.dtype | np.dtype, x, value_range: float | None) -> tuple[float, bool]:
    """(value range, is_integer) for an input of this dtype."""
    if dtype in (np.uint8, torch.uint8):
        return 255.0, True
    if dtype in (np.uint16, torch.uint16):
        return 65535.0, True
    if np.issubdtype(dtype, np.floating) if isinstance(dtype, np.dtype) else dtype.is_floating_point:
        return _infer_float_range(x, value_range), False
    raise EdsrError(f"unsupported image dtype {dtype}; use uint8, uint16 or float")


def _upscale_torch(x: torch.Tensor, model: SRModel, scale: int | None, value_range: float | None) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise EdsrError(f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")
    vr, is_int = _range_of(x.dtype, x, value_range)
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    if batch.shape[1] not in (1, 2, 3, 4):
        raise EdsrError(f"expected 1, 3 or 4 channels in dim 1 (channels first), got shape {tuple(x.shape)}")
    out = upscale_tensor(model, _from_unit(batch.float(), vr), scale) * (vr / 255.0)
    out = out.clamp(0, vr).to(x.device)
    out = out.round().to(x.dtype) if is_int else out.to(x.dtype)
    return out if x.ndim == 4 else out[0]


def _upscale_numpy(a: np.ndarray, model: SRModel, scale: int | None, value_range: float | None) -> np.ndarray:
    if a.ndim == 2:
        a3 = a[:, :, None]
    elif a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        a3 = a
    else:
        raise EdsrError(f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {a.shape}")
    vr, is_int = _range_of(a.dtype, a, value_range)
    t = torch.from_numpy(np.ascontiguousarray(a3).astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    out = upscale_tensor(model, _from_unit(t, vr), scale) * (vr / 255.0)
    out_np = out[0].permute(1, 2, 0).clamp(0, vr).cpu().numpy()
    out_np = np.rint(out_np).astype(a.dtype) if is_int else out_np.astype(a.dtype)
    return out_np[:, :, 0] if a.ndim == 2 else out_np


def _upscale_pil(img: PILImage.Image, model: SRModel, scale: int | None) -> PILImage.Image:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if mode == "1" else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.uint16)
        out = _upscale_numpy(a, model, scale, None)
        return PILImage.fromarray(out.astype(np.uint16), mode="I;16")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise EdsrError(f"unsupported PIL image mode {img.mode!r}; convert it to RGB first")
    out = _upscale_numpy(np.asarray(img), model, scale, None)
    return PILImage.fromarray(out, mode=img.mode)


def output_paths(
    inputs: Sequence[Path], roots: Sequence[Path | None], output: str | os.PathLike, scale: int
) -> list[Path]:
    """Where each input's result goes: ``<stem>_x<scale>.png`` under ``output``, keeping the
    sub-directory an input had below the directory it was found in, so that equal names in
    different folders never collide. A single file input may name the output file directly."""
    output = Path(output)
    if len(inputs) == 1 and output.suffix.lower() in IMAGE_EXTENSIONS and not output.is_dir():
        return [output]
    outs = []
    for path, root in zip(inputs, roots, strict=True):
        rel = path.relative_to(root).parent if root is not None else Path()
        outs.append(output / rel / f"{path.stem}_x{scale}.png")
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outs, strict=True):
        if dst in seen:
            raise EdsrError(f"{src} and {seen[dst]} would both be written to {dst}; rename one")
        seen[dst] = src
    return outs


def upscale_files(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: SRModel,
    scale: int | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Upscale image files or directories into ``output``; returns the written paths.

    Every destination is checked before any work starts, so a run that would overwrite a
    file without ``overwrite`` fails at once instead of half-way through.
    """
    scale = resolve_scale(model, scale)
    files: list[Path] = []
    roots: list[Path | None] = []
    for item in inputs:
        item = Path(item)
        found = find_images([item])
        files += found
        roots += [item if item.is_dir() else None] * len(found)
    dests = output_paths(files, roots, output, scale)
    for dst in dests:
        check_writable(dst, overwrite=overwrite)
    written = []
    bar = tqdm(list(zip(files, dests, strict=True)), desc=f"upscale x{scale}", unit="img", disable=not progress)
    for src, dst in bar:
        bar.set_postfix_str(src.name)
        img = read_image(src)
        pixels = img.pixels if img.alpha is None else np.concatenate([img.pixels, img.alpha[:, :, None]], axis=2)
        out = _upscale_numpy(pixels, model, scale, None)
        c = img.pixels.shape[2]
        write_png(dst, out[:, :, :c], out[:, :, c] if img.alpha is not None else None, overwrite=overwrite)
        written.append(dst)
    return written
