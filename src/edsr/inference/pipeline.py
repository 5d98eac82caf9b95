"""Running a model on user images: range handling, gray and alpha, PIL/numpy/tensor in and out,
seamless tiling under a memory budget, and the paper's self-ensemble.

The official weights expect RGB values in 0..255. Everything here converts to that range and
back, so a [0, 1] float tensor or a 16-bit image cannot silently produce a black or white
picture.

Tiling is exact, not approximate: each tile is given as much context on every side as the
model's receptive field reaches (derived from the layers themselves, see :func:`probe_model`),
so the stitched output equals whole-image inference up to float rounding. The public code's
"chop" overlapped 10 pixels where the field reaches ~36, which is why its outputs had seams.
"""

from __future__ import annotations

import math
import os
import re
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image as PILImage
from torch import nn
from tqdm import tqdm

from edsr.errors import EdsrError
from edsr.inference.precision import InferenceModel, prepare_model, unwrap
from edsr.io.atomic import atomic_write, check_writable
from edsr.io.image import IMAGE_EXTENSIONS, Image, find_images, max_side, read_image, write_image
from edsr.io.png import PngStripWriter
from edsr.models import SRModel
from edsr.resize import imresize

# BT.601 luma weights (what PIL's convert("L") uses) to turn the model's RGB output for a
# gray input back into one channel.
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)

ImageLike = TypeVar("ImageLike", PILImage.Image, np.ndarray, torch.Tensor)
Model = SRModel | InferenceModel


def resolve_scale(model: Model, scale: int | None) -> int:
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
def sr_forward(model: Model, x: torch.Tensor, scale: int) -> torch.Tensor:
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


# --------------------------------------------------------------------------------------------
# Self-ensemble (EDSR+ / MDSR+)
# --------------------------------------------------------------------------------------------


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th of the 8 dihedral transforms of the last two dims: k % 4 quarter turns, then a
    left-right flip when k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``."""
    y = x.flip(-1) if k >= 4 else x
    return torch.rot90(y, -(k % 4), dims=(-2, -1))


@torch.no_grad()
def ensemble_forward(model: Model, x: torch.Tensor, scale: int) -> torch.Tensor:
    """Mean of the model's outputs for the 8 flips/rotations of ``x``, each mapped back.

    Runs on ``x``'s device, one transform at a time (memory of one forward pass plus a float32
    accumulator), for every image of the batch at once.
    """
    acc: torch.Tensor | None = None
    for k in range(8):
        y = dihedral_inverse(sr_forward(model, dihedral(x, k), scale), k).float()
        acc = y if acc is None else acc.add_(y)
    assert acc is not None
    return acc.div_(8)


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
}  # fmt: skip


def parse_memory(text: str | int | float) -> int:
    """Bytes in a size such as ``"2GB"`` (10^9), ``"512MiB"`` (2^20), ``"1.5G"`` or ``1000000``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not m or m.group(2).lower() not in _UNITS:
            raise EdsrError(f"cannot read the memory size {text!r}; write e.g. 2GB, 512MiB or 1.5G")
        value, unit = float(m.group(1)), m.group(2).lower()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise EdsrError(f"the memory size must be positive, got {text!r}")
    return size


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _cgroup_available() -> int | None:
    """Memory left under a cgroup v2 limit (containers), where MemAvailable shows the host's."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - int(used))


def host_available_memory() -> int:
    """Bytes of RAM the system could give us now (without psutil: /proc/meminfo or sysconf)."""
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = (
                4 * 1024**3
            )  # no way to ask (e.g. Windows without psutil): assume a small machine
    cgroup = _cgroup_available()
    return min(avail, cgroup) if cgroup is not None else avail


def default_memory_budget(device: torch.device | str) -> int:
    """Working memory for tiles when ``--max-memory`` is not given: 80% of the GPU's free memory,
    or half of the RAM available now (the other half is left to the input, the output and the
    rest of the system)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.8)
    return host_available_memory() // 2


# --------------------------------------------------------------------------------------------
# Receptive field and memory per pixel, measured from the layers that actually run
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelProbe:
    """What tiling needs to know about a model at one scale.

    ``reach`` is the exact receptive radius in LR pixels: the sum over convolutions of their
    one-sided reach divided by the resolution they run at (1 on the LR path, 2 after a x2 pixel
    shuffle, ...). ``overlap`` is its ceiling: a tile with that many LR pixels of context on
    every side reproduces whole-image inference. ``bytes_per_pixel`` estimates the peak working
    memory per LR pixel of a tile (batch 1, no ensemble).
    """

    scale: int
    reach: Fraction
    overlap: int
    bytes_per_pixel: int
    out_bytes_per_pixel: int


_PROBES: weakref.WeakKeyDictionary[nn.Module, dict[int, ModelProbe]] = weakref.WeakKeyDictionary()
_PROBE_LOCK = threading.Lock()

# The estimate below counts the tensors a layer reads and writes plus two feature maps held by
# skip connections; allocator slack, oneDNN reorders and PixelShuffle's copies come on top.
# 1.2 was calibrated by measuring peak RSS against the estimate (benchmarks/bench_large_image.py).
_MEMORY_SAFETY = 1.2
_MEMORY_FIXED = 64 * 1024**2  # weights, oneDNN primitives, Python objects


@torch.no_grad()
def probe_model(model: Model, scale: int) -> ModelProbe:
    """Run the model once on a 1x1 image, recording every leaf layer it calls.

    On a 1x1 input a layer's input height *is* its resolution relative to LR, so the reach of
    each convolution can be scaled exactly, whatever the architecture (EDSR's head, 2 convs per
    residual block, body conv, upsampler; MDSR's 5x5 pre-processing blocks; the tail at HR).
    """
    base = unwrap(model)
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
        param = next(base.parameters())
        base(torch.zeros(1, base.n_colors, 1, 1, device=param.device), scale)
    finally:
        for h in handles:
            h.remove()
    reach = Fraction(0)
    layer_peak = 0
    lr_feature = 0
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
        elif not isinstance(mod, (nn.PixelShuffle, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity)):
            raise EdsrError(f"cannot derive the receptive field of {type(mod).__name__} layers")
        nbytes = inp.numel() * inp.element_size() + out.numel() * out.element_size()
        layer_peak = max(layer_peak, nbytes)
        if inp.shape[-2] == 1:
            lr_feature = max(lr_feature, inp.numel() * inp.element_size())
    out_bytes = base.n_colors * scale * scale * 4
    per_pixel = layer_peak + 2 * lr_feature + out_bytes + base.n_colors * 4
    return ModelProbe(
        scale=scale,
        reach=reach,
        overlap=math.ceil(reach),
        bytes_per_pixel=int(per_pixel * _MEMORY_SAFETY),
        out_bytes_per_pixel=out_bytes,
    )


def receptive_field(model: Model, scale: int | None = None) -> int:
    """LR pixels of context a tile needs on each side for exact output (see :func:`probe_model`)."""
    return probe_model(model, resolve_scale(model, scale)).overlap


def tile_memory(
    probe: ModelProbe, height: int, width: int, batch: int = 1, ensemble: bool = False
) -> int:
    """Estimated peak bytes to run one ``height`` x ``width`` LR tile of ``batch`` images."""
    per_pixel = probe.bytes_per_pixel
    if ensemble:
        # a float32 accumulator and one mapped-back output beside the forward pass
        per_pixel += 2 * probe.out_bytes_per_pixel
    return batch * height * width * per_pixel + _MEMORY_FIXED


# --------------------------------------------------------------------------------------------
# Tile planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """One tile along one axis: the model sees ``[start, stop)``, its output is kept for
    ``[core_start, core_stop)`` (LR coordinates)."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def plan_axis(n: int, tile: int, overlap: int) -> list[Window]:
    """Cover ``[0, n)`` with equal windows of at most ``tile`` pixels whose kept cores partition
    it and lie at least ``overlap`` pixels inside every window edge that is not an image edge.

    The windows are shrunk to the smallest equal size that still covers ``n`` with as few
    windows as ``tile`` allows, so no work is wasted on a mostly-empty last tile and every
    window has the same shape (one cached convolution plan, one torch.compile graph).
    """
    if n <= tile:
        return [Window(0, n, 0, n)]
    core = tile - 2 * overlap
    if core < 1:
        raise ValueError(f"tile {tile} leaves no room inside an overlap of {overlap}")
    count = 1 + math.ceil((n - tile) / core)
    size = math.ceil((n + (count - 1) * 2 * overlap) / count)
    starts = [round(i * (n - size) / (count - 1)) for i in range(count)]
    bounds = [0] + [(starts[i] + starts[i + 1] + size) // 2 for i in range(count - 1)] + [n]
    return [Window(s, s + size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def min_tile(overlap: int) -> int:
    """Smallest tile accepted: its kept core is at least as wide as the overlap on each side.

    Smaller tiles are technically exact but spend over 9x the work on context.
    """
    return max(3 * overlap, 8)


@dataclass(frozen=True)
class TilePlan:
    rows: list[Window]
    cols: list[Window]
    batch: int  # images per forward pass
    tile: int
    overlap: int
    memory: int  # estimated peak bytes of one forward pass

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)


def plan_tiles(
    model: Model,
    shape: Sequence[int],
    scale: int,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    device: torch.device | str | None = None,
) -> TilePlan:
    """Choose tiles for an (N, C, H, W) input: the largest that fit ``max_memory``, or ``tile``.

    A ``tile`` too small to hold the needed context is enlarged with a warning; a memory
    budget too small for even the smallest tile of one image is an error naming the minimum.
    """
    n, _, h, w = (int(v) for v in shape)
    probe = probe_model(model, scale)
    overlap = probe.overlap
    smallest = min_tile(overlap)
    device = torch.device(device) if device is not None else _model_device(model)
    budget = parse_memory(max_memory) if max_memory is not None else None

    def need(t: int, b: int) -> int:
        return tile_memory(probe, min(t, h), min(t, w), b, ensemble)

    def largest_batch(t: int, limit: int) -> int:
        b = n
        while b > 1 and need(t, b) > limit:
            b = max(1, min(b - 1, b * limit // max(1, need(t, b))))
        return b

    if tile is not None:
        tile = int(tile)
        if tile < 1:
            raise EdsrError(f"the tile size must be positive, got {tile}")
        if tile < smallest and tile < max(h, w):
            warnings.warn(
                f"tile {tile} is too small for this model: each tile needs {overlap} pixels of "
                f"context on every side (its receptive field), so using tile {smallest}",
                UserWarning,
                stacklevel=2,
            )
            tile = smallest
        if budget is not None and need(tile, 1) > budget:
            raise EdsrError(
                f"tile {tile} needs about {format_bytes(need(tile, 1))}, more than the memory "
                f"budget of {format_bytes(budget)}; give a smaller tile or a larger budget"
            )
        batch = largest_batch(tile, budget if budget is not None else default_memory_budget(device))
    else:
        if budget is None:
            budget = default_memory_budget(device)
        full = max(h, w)
        if need(full, 1) <= budget:
            # Whole images, as many per pass as fit: no work is spent on overlaps.
            tile, batch = full, largest_batch(full, budget)
        else:
            # Tiling anyway: one image per pass leaves room for the largest tiles (least overlap).
            batch = 1
            if need(smallest, 1) > budget:
                t = min(smallest, full)
                raise EdsrError(
                    f"a memory budget of {format_bytes(budget)} is too small for this model: the "
                    f"smallest tile ({t}x{t} pixels, {overlap} of them context on each side) needs "
                    f"about {format_bytes(need(smallest, 1))}; allow at least that (--max-memory)"
                )
            lo, hi = smallest, full  # need(lo) fits, need(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if need(mid, 1) <= budget else (lo, mid)
            tile = lo
    rows, cols = plan_axis(h, tile, overlap), plan_axis(w, tile, overlap)
    memory = tile_memory(
        probe, rows[0].stop - rows[0].start, cols[0].stop - cols[0].start, batch, ensemble
    )
    return TilePlan(rows, cols, batch, tile, overlap, memory)


# --------------------------------------------------------------------------------------------
# Tiled execution
# --------------------------------------------------------------------------------------------

# (batch slice, HR row slice, HR column slice, output tile (b, C, h, w) float32 on the device)
TileResult = tuple[slice, slice, slice, torch.Tensor]


@torch.no_grad()
def iter_tiles(
    model: Model,
    x: torch.Tensor,
    scale: int,
    plan: TilePlan,
    *,
    ensemble: bool = False,
    progress: bool = False,
) -> Iterator[TileResult]:
    """Run ``model`` over ``x`` (N, C, H, W, float 0..255, any device) tile by tile, in row-major
    order, yielding each tile's kept output and where it goes in the HR image.

    Only one tile's input and output live on the model's device at a time.
    """
    device = _model_device(model)
    forward = ensemble_forward if ensemble else sr_forward
    n = x.shape[0]
    total = math.ceil(n / plan.batch) * plan.count
    bar = tqdm(
        total=total, desc="tiles", unit="tile", leave=False, disable=not progress or total < 2
    )
    try:
        for b0 in range(0, n, plan.batch):
            bs = slice(b0, min(n, b0 + plan.batch))
            for r in plan.rows:
                for c in plan.cols:
                    xt = x[bs, :, r.start : r.stop, c.start : c.stop].to(device, torch.float32)
                    yt = forward(model, xt, scale)
                    top, left = (r.core_start - r.start) * scale, (c.core_start - c.start) * scale
                    hh, ww = (
                        (r.core_stop - r.core_start) * scale,
                        (c.core_stop - c.core_start) * scale,
                    )
                    yield (
                        bs,
                        slice(r.core_start * scale, r.core_stop * scale),
                        slice(c.core_start * scale, c.core_stop * scale),
                        yt[:, :, top : top + hh, left : left + ww],
                    )
                    bar.update(1)
    finally:
        bar.close()


def _alpha_rows(alpha: torch.Tensor, scale: int, r0: int, r1: int) -> torch.Tensor:
    """Rows ``[r0*scale, r1*scale)`` of ``imresize(alpha, scale)``, computed from a band of LR rows.

    Bicubic taps reach 2 pixels; a margin of 4 keeps the band's own mirrored edges out of the
    kept rows, so the band equals the same rows of the whole resized image.
    """
    margin = 4
    a0, a1 = max(0, r0 - margin), min(alpha.shape[-2], r1 + margin)
    band = imresize(alpha[..., a0:a1, :].double(), scale).to(alpha.dtype)
    return band[..., (r0 - a0) * scale : (r1 - a0) * scale, :]


def _prepared(model: Model, precision: str | None, compile: bool) -> Model:
    if precision is None and not compile:
        return model
    return prepare_model(model, precision=precision or "fp32", compile=compile)


def upscale_tensor(
    model: Model,
    x: torch.Tensor,
    scale: int | None = None,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Upscale (N, C, H, W) float images in 0..255 (C = 1, 3, or 4 with alpha last); not rounded.

    Works in tiles sized to ``max_memory`` (default: see :func:`default_memory_budget`) or of
    ``tile`` LR pixels, with the output assembled in one preallocated buffer on ``x``'s device;
    the result equals whole-image inference. ``ensemble`` averages the 8 flips/rotations.
    """
    scale = resolve_scale(model, scale)
    if x.ndim != 4:
        raise EdsrError(f"expected an (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise EdsrError(f"cannot upscale an empty image of size {x.shape[-1]}x{x.shape[-2]}")
    alpha = None
    if x.shape[1] in (2, 4):
        x, alpha = x[:, :-1], x[:, -1:]
    n, c, h, w = x.shape
    plan = plan_tiles(model, x.shape, scale, tile=tile, max_memory=max_memory, ensemble=ensemble)
    out = torch.empty((n, c + (alpha is not None), h * scale, w * scale), device=x.device)
    for bs, ys, xs, y in iter_tiles(model, x, scale, plan, ensemble=ensemble, progress=progress):
        out[bs, :c, ys, xs] = y.to(out.device)
    if alpha is not None:
        # Alpha is not image content the model was trained on: bicubic is the honest choice.
        a = alpha.float()
        for r in plan.rows:
            out[:, c:, r.core_start * scale : r.core_stop * scale] = _alpha_rows(
                a, scale, r.core_start, r.core_stop
            )
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


def upscale(
    image: ImageLike,
    model: Model,
    scale: int | None = None,
    *,
    value_range: float | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
) -> ImageLike:
    """Upscale an image and return it in the type, layout and range it came in.

    - PIL images: modes L, RGB, RGBA, LA, P (becomes RGB/RGBA), I;16 (16-bit gray).
    - numpy arrays: (H, W) or (H, W, C), C in 1, 3, 4; uint8 is 0..255, uint16 is 0..65535,
      floats are 0..1 unless ``value_range`` says otherwise (e.g. 255).
    - torch tensors: (C, H, W) or (N, C, H, W), with the same range rules as numpy.

    The model always sees 0..255, which is what the official weights were trained on.
    Integer outputs are rounded and clipped; float outputs are clipped to the input range.
    Large images are processed in exact tiles (``tile``, ``max_memory``: see
    :func:`upscale_tensor`); ``ensemble=True`` is the paper's self-ensemble (EDSR+/MDSR+).
    For speed, pass a model from :func:`edsr.inference.precision.prepare_model`.
    """
    opts = {"tile": tile, "max_memory": max_memory, "ensemble": ensemble}
    if isinstance(image, PILImage.Image):
        return _upscale_pil(image, model, scale, **opts)
    if isinstance(image, np.ndarray):
        return _upscale_numpy(image, model, scale, value_range, **opts)
    if isinstance(image, torch.Tensor):
        return _upscale_torch(image, model, scale, value_range, **opts)
    raise EdsrError(
        f"upscale takes a PIL image, numpy array or torch tensor, not {type(image).__name__}"
    )


def _range_of(dtype: torch.dtype | np.dtype, x, value_range: float | None) -> tuple[float, bool]:
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
    x: torch.Tensor, model: Model, scale: int | None, value_range: float | None, **opts
) -> torch.Tensor:
    if x.ndim not in (3, 4):
        raise EdsrError(
            f"tensor images must be (C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}"
        )
    vr, is_int = _range_of(x.dtype, x, value_range)
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    if batch.shape[1] not in (1, 2, 3, 4):
        raise EdsrError(
            f"expected 1, 3 or 4 channels in dim 1 (channels first), got shape {tuple(x.shape)}"
        )
    out = upscale_tensor(model, _from_unit(batch.float(), vr), scale, **opts).mul_(vr / 255.0)
    out = out.clamp_(0, vr).to(x.device)
    out = out.round().to(x.dtype) if is_int else out.to(x.dtype)
    return out if x.ndim == 4 else out[0]


class _ArraySink:
    """Receives output tiles (0..255 floats) and stores them, quantized, into an (H, W, C) array."""

    def __init__(self, out: np.ndarray, value_range: float, is_int: bool) -> None:
        self.out = out
        self.factor = value_range / 255.0
        self.vr = value_range
        self.is_int = is_int

    def convert(self, y: torch.Tensor) -> np.ndarray:
        """(C, h, w) tensor in 0..255 -> (h, w, C) array of the output dtype."""
        y = y.float().permute(1, 2, 0).mul(self.factor).clamp_(0, self.vr)
        if self.is_int:
            y = y.round_()
        return y.cpu().numpy().astype(self.out.dtype)

    def put(self, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        self.out[ys, xs, channels] = self.convert(y)


def _check_numpy(a: np.ndarray) -> np.ndarray:
    if a.ndim == 2:
        return a[:, :, None]
    if a.ndim == 3 and a.shape[2] in (1, 2, 3, 4):
        return a
    raise EdsrError(f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {a.shape}")


def _run_into(
    model: Model,
    a3: np.ndarray,
    scale: int,
    vr: float,
    *,
    rows_done: Callable[[int, int], None] | None,
    put: Callable[[slice, slice, slice, torch.Tensor], None],
    tile: int | None,
    max_memory: int | str | None,
    ensemble: bool,
    progress: bool,
) -> None:
    """Tile an (H, W, C) array through the model, handing each kept tile to ``put`` and
    calling ``rows_done(hr_start, hr_stop)`` when a band of HR rows is complete (alpha too)."""
    if a3.shape[0] == 0 or a3.shape[1] == 0:
        raise EdsrError(f"cannot upscale an empty image of size {a3.shape[1]}x{a3.shape[0]}")
    # float32 0..255 copy of the LR input; tiles are cut from it (it is 1/scale^2 of the output)
    x = torch.from_numpy(np.ascontiguousarray(a3, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    if vr != 255.0:
        x.mul_(255.0 / vr)
    alpha = None
    if x.shape[1] in (2, 4):
        x, alpha = x[:, :-1], x[:, -1:]
    c = x.shape[1]
    plan = plan_tiles(model, x.shape, scale, tile=tile, max_memory=max_memory, ensemble=ensemble)
    ncols = len(plan.cols)
    for i, (_, ys, xs, y) in enumerate(
        iter_tiles(model, x, scale, plan, ensemble=ensemble, progress=progress)
    ):
        put(ys, xs, slice(0, c), y[0])
        if (i + 1) % ncols == 0:
            r = plan.rows[i // ncols]
            if alpha is not None:
                band = _alpha_rows(alpha, scale, r.core_start, r.core_stop)
                put(
                    slice(r.core_start * scale, r.core_stop * scale),
                    slice(None),
                    slice(c, c + 1),
                    band[0],
                )
            if rows_done is not None:
                rows_done(r.core_start * scale, r.core_stop * scale)


def _upscale_numpy(
    a: np.ndarray,
    model: Model,
    scale: int | None,
    value_range: float | None,
    *,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    progress: bool = False,
) -> np.ndarray:
    a3 = _check_numpy(a)
    scale = resolve_scale(model, scale)
    vr, is_int = _range_of(a.dtype, a, value_range)
    h, w, c = a3.shape
    out = np.empty((h * scale, w * scale, c), dtype=a.dtype)
    sink = _ArraySink(out, vr, is_int)
    _run_into(
        model,
        a3,
        scale,
        vr,
        rows_done=None,
        put=sink.put,
        tile=tile,
        max_memory=max_memory,
        ensemble=ensemble,
        progress=progress,
    )
    return out[:, :, 0] if a.ndim == 2 else out


def _upscale_pil(img: PILImage.Image, model: Model, scale: int | None, **opts) -> PILImage.Image:
    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if mode == "1" else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img).astype(np.uint16)
        out = _upscale_numpy(a, model, scale, None, **opts)
        return PILImage.fromarray(out.astype(np.uint16), mode="I;16")
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise EdsrError(f"unsupported PIL image mode {img.mode!r}; convert it to RGB first")
    out = _upscale_numpy(np.asarray(img), model, scale, None, **opts)
    return PILImage.fromarray(out, mode=img.mode)


class _StripSink(_ArraySink):
    """Holds one band of HR rows; complete bands go to a :class:`PngStripWriter`."""

    def __init__(
        self, writer: PngStripWriter, width: int, channels: int, dtype, vr: float, is_int: bool
    ) -> None:
        super().__init__(np.empty((0, width, channels), dtype), vr, is_int)
        self.writer = writer
        self.top = 0

    def put(self, ys: slice, xs: slice, channels: slice, y: torch.Tensor) -> None:
        if ys.start == self.top and self.out.shape[0] != ys.stop - ys.start:
            self.out = np.empty((ys.stop - ys.start, *self.out.shape[1:]), self.out.dtype)
        self.out[:, xs, channels] = self.convert(y)

    def rows_done(self, start: int, stop: int) -> None:
        assert start == self.top and stop - start == self.out.shape[0]
        self.writer.write_rows(self.out)
        self.top = stop


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


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


def _should_stream(nbytes: int, dst: Path, stream: bool | None) -> bool:
    if stream is not None:
        return stream and dst.suffix.lower() == ".png"
    # A quarter of the free RAM: the output is then the largest thing in memory by far.
    return dst.suffix.lower() == ".png" and nbytes > host_available_memory() // 4


def upscale_image_file(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model: Model,
    scale: int,
    *,
    overwrite: bool = False,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    stream: bool | None = None,
    progress: bool = False,
) -> Path:
    """Upscale one image file into ``dst`` (format from its suffix).

    The output is assembled in memory and written atomically, or, for a PNG too large to hold
    (over a quarter of the free RAM, or when ``stream`` is True), written band by band as the
    tiles finish, so memory stays at one band of rows plus the tiles' working memory.
    """
    src, dst = Path(src), Path(dst)
    img = read_image(src)
    h, w, c = img.pixels.shape
    suffix = dst.suffix.lower()
    limit = max_side(suffix)
    if max(h, w) * scale > limit:
        raise EdsrError(
            f"{dst}: the {w * scale}x{h * scale} result is too large for {suffix} files (at most "
            f"{limit} pixels a side); write a .png file instead"
        )
    pixels = (
        img.pixels
        if img.alpha is None
        else np.concatenate([img.pixels, img.alpha[:, :, None]], axis=2)
    )
    vr = float(img.max_value)
    total_c = pixels.shape[2]
    nbytes = h * w * scale * scale * total_c * pixels.dtype.itemsize
    opts = {"tile": tile, "max_memory": max_memory, "ensemble": ensemble, "progress": progress}
    if _should_stream(nbytes, dst, stream):
        check_writable(dst, overwrite=overwrite)
        with atomic_write(dst, overwrite=overwrite) as tmp, open(tmp, "wb") as f:
            writer = PngStripWriter(f, w * scale, h * scale, total_c, pixels.dtype)
            sink = _StripSink(writer, w * scale, total_c, pixels.dtype, vr, True)
            _run_into(model, pixels, scale, vr, rows_done=sink.rows_done, put=sink.put, **opts)
            writer.close()
        return dst
    if nbytes > host_available_memory() // 2:
        raise EdsrError(
            f"{dst}: the {w * scale}x{h * scale} result ({format_bytes(nbytes)}) does not fit in "
            "memory; write a .png file, which is written in strips"
        )
    out = np.empty((h * scale, w * scale, total_c), pixels.dtype)
    sink = _ArraySink(out, vr, True)
    _run_into(model, pixels, scale, vr, rows_done=None, put=sink.put, **opts)
    result = Image(
        np.ascontiguousarray(out[:, :, :c]),
        np.ascontiguousarray(out[:, :, c]) if img.alpha is not None else None,
    )
    return write_image(dst, result, overwrite=overwrite)


def upscale_files(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: Model,
    scale: int | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    precision: str | None = None,
    compile: bool = False,
    frames: int | None = None,
    stream: bool | None = None,
) -> list[Path]:
    """Upscale image files, directories or video files into ``output``; returns the written paths.

    Every destination is checked before any work starts, so a run that would overwrite a
    file without ``overwrite`` fails at once instead of half-way through. Images are tiled
    (see :func:`upscale_tensor`), so any size fits in memory. ``precision``/``compile`` prepare
    the model once (see :func:`edsr.inference.precision.prepare_model`); ``frames`` limits videos.
    """
    from edsr.inference.video import VIDEO_EXTENSIONS, upscale_video, video_output_path

    scale = resolve_scale(model, scale)
    if frames is not None and frames < 1:
        raise EdsrError(f"--frames must be at least 1, got {frames}")
    videos = [
        Path(i)
        for i in inputs
        if Path(i).suffix.lower() in VIDEO_EXTENSIONS and not Path(i).is_dir()
    ]
    image_inputs = [Path(i) for i in inputs if Path(i) not in videos]
    if videos and len(inputs) > 1:
        raise EdsrError("give one video at a time (images and folders can be given together)")
    if frames is not None and not videos:
        warnings.warn("--frames only applies to videos; ignored", UserWarning, stacklevel=2)
    model = _prepared(model, precision, compile)
    opts = {"tile": tile, "max_memory": max_memory, "ensemble": ensemble}
    if videos:
        dst = video_output_path(videos[0], output, scale)
        return [
            upscale_video(
                videos[0],
                dst,
                model,
                scale,
                overwrite=overwrite,
                frames=frames,
                progress=progress,
                **opts,
            )
        ]

    files: list[Path] = []
    roots: list[Path | None] = []
    for item in image_inputs:
        found = find_images([item])
        files += found
        roots += [item if item.is_dir() else None] * len(found)
    dests = output_paths(files, roots, output, scale)
    for dst in dests:
        check_writable(dst, overwrite=overwrite)
    written = []
    bar = tqdm(
        list(zip(files, dests, strict=True)),
        desc=f"upscale x{scale}",
        unit="img",
        disable=not progress,
    )
    for src, dst in bar:
        bar.set_postfix_str(src.name)
        written.append(
            upscale_image_file(
                src,
                dst,
                model,
                scale,
                overwrite=overwrite,
                stream=stream,
                progress=progress,
                **opts,
            )
        )
    return written
