"""The out-of-the-box job: upscale the bundled samples with the bundled model, show and measure it.

Each sample's HR image is shrunk with MATLAB bicubic (the paper's protocol), brought back with
bicubic and with the model, and measured on Y with ``shave = scale``. The comparison PNG puts
bicubic, the model and the ground truth side by side, with the same zoomed crop under each, so
the difference is visible without a viewer's zoom.

The JPEG case (:func:`run_jpeg_case`) is what most photos are: one sample's LR image saved as a
JPEG at quality 60, then upscaled by bicubic, by the model, and by the default route (which
reads the JPEG's quality and picks the JPEG-aware model), beside the ground truth.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from edsr.degrade import jpeg_image
from edsr.evaluate import BICUBIC, discover, load_pair, super_resolve
from edsr.inference import Model, resolve_scale, upscale
from edsr.io.atomic import atomic_write, check_writable
from edsr.metrics import psnr
from edsr.route import Router

SAMPLES = Path(__file__).resolve().parent / "assets" / "samples"

_GAP = 8
_LABEL_H = 26
#: The JPEG case: this sample's LR saved at this quality (a web photo's; phones save ~85-95).
JPEG_SAMPLE = "zebra"
JPEG_QUALITY = 60


@dataclass(frozen=True)
class DemoResult:
    image: str
    scale: int
    psnr_bicubic: float
    psnr_model: float
    comparison: Path

    @property
    def gain(self) -> float:
        return self.psnr_model - self.psnr_bicubic


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def pick_crop(reference: np.ndarray, worse: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side`` x ``side`` window where ``worse`` misses ``reference`` most.

    That is where upscaling has work to do (edges, texture), so the zoom shows the difference
    rather than a patch of sky.
    """
    err = np.abs(reference.astype(np.float64) - worse.astype(np.float64)).sum(axis=2)
    # Window sums from an integral image, on a coarse grid: exactness does not matter here.
    ii = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = ii[side:, side:] - ii[:-side, side:] - ii[side:, :-side] + ii[:-side, :-side]
    stride = max(1, side // 8)
    grid = sums[::stride, ::stride]
    y, x = np.unravel_index(int(np.argmax(grid)), grid.shape)
    return int(y) * stride, int(x) * stride


def comparison_image(
    panels: list[tuple[str, np.ndarray]], crop: tuple[int, int], side: int
) -> Image.Image:
    """Full images in a row with their labels, the same crop of each zoomed in a row below."""
    h, w = panels[0][1].shape[:2]
    zoom = max(1, w // side)
    z = side * zoom
    width = len(panels) * w + (len(panels) + 1) * _GAP
    height = _LABEL_H + h + _GAP + z + 2 * _GAP
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(16)
    y0, x0 = crop
    for i, (label, pixels) in enumerate(panels):
        left = _GAP + i * (w + _GAP)
        draw.text((left, 4), label, fill="black", font=font)
        canvas.paste(Image.fromarray(pixels), (left, _LABEL_H))
        draw.rectangle(
            [left + x0, _LABEL_H + y0, left + x0 + side - 1, _LABEL_H + y0 + side - 1],
            outline=(255, 0, 0),
            width=2,
        )
        patch = Image.fromarray(pixels[y0 : y0 + side, x0 : x0 + side]).resize(
            (z, z), Image.Resampling.NEAREST
        )
        canvas.paste(patch, (left + (w - z) // 2, _LABEL_H + h + _GAP))
    return canvas


def _hwc(x: torch.Tensor) -> np.ndarray:
    a = x.permute(1, 2, 0).numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a


def upscale_sample(
    model: Model, lr: torch.Tensor, scale: int | None = None, *, precision: str | None = None
) -> torch.Tensor:
    """The model's uint8 (C, h*s, w*s) result for a uint8 (C, h, w) LR image, run by
    :func:`edsr.upscale`: the engine, defaults and compute path every other door runs."""
    out = upscale(lr.permute(1, 2, 0).numpy(), model, scale, precision=precision)
    return torch.from_numpy(out).permute(2, 0, 1)


def run_demo(
    model: Model,
    out_dir: str | os.PathLike,
    *,
    scale: int | None = None,
    samples: str | os.PathLike = SAMPLES,
    model_name: str = "model",
    precision: str | None = None,
) -> list[DemoResult]:
    """Upscale every sample at ``scale`` (None: the model's default, see
    :mod:`edsr.defaults`); write ``<name>_x<scale>_comparison.png`` for each.

    The demo owns those file names in ``out_dir``: a second run replaces them (a newcomer's
    re-run must just work), and leaves every other file there alone.
    """
    scale = resolve_scale(model, scale)
    evalset = discover(samples)
    out_dir = Path(out_dir)
    targets = [out_dir / f"{p.stem}_x{scale}_comparison.png" for p in evalset.hr_files]
    for t in targets:  # refuse before any work, so a refusal leaves nothing half-done
        check_writable(t, overwrite=True)
    results = []
    for hr_path, target in zip(evalset.hr_files, targets, strict=True):
        lr, hr = load_pair(evalset, hr_path, scale)
        shown = [
            ("bicubic", super_resolve(BICUBIC, lr, scale)),
            (model_name, upscale_sample(model, lr, scale, precision=precision)),
        ]
        p_bic, p_sr = _write_comparison(target, shown, hr, scale)
        results.append(DemoResult(hr_path.stem, scale, p_bic, p_sr, target))
    return results


def _write_comparison(
    target: Path, shown: list[tuple[str, torch.Tensor]], hr: torch.Tensor, scale: int
) -> list[float]:
    """Write ``shown`` (label, uint8 (C, H, W) result; the first is bicubic, whose worst region
    is the zoomed crop) beside the ground truth, each labelled with its PSNR (Y, shave =
    scale); return those PSNRs."""
    scores = [float(psnr(x, hr, crop_border=scale, y_channel=True)[0]) for _, x in shown]
    gt = _hwc(hr)
    side = max(16, min(gt.shape[:2]) // 2)  # zoomed 2-3x: enough to see, not a blur of pixels
    crop = pick_crop(gt, _hwc(shown[0][1]), side)
    panels = [
        (f"{label}  {p:.2f} dB", _hwc(x)) for (label, x), p in zip(shown, scores, strict=True)
    ]
    with atomic_write(target, overwrite=True) as tmp:
        comparison_image([*panels, ("ground truth", gt)], crop, side).save(tmp, format="PNG")
    return scores


@dataclass(frozen=True)
class JpegCase:
    """The JPEG case's PSNRs (Y, shave = scale) and what the default route chose."""

    image: str
    scale: int
    quality: int
    psnr_bicubic: float
    psnr_model: float
    psnr_route: float
    route_model: str
    route_why: str
    comparison: Path


def run_jpeg_case(
    model: Model,
    out_dir: str | os.PathLike,
    *,
    scale: int | None = None,
    samples: str | os.PathLike = SAMPLES,
    model_name: str = "model",
    router: Router | None = None,
    quality: int = JPEG_QUALITY,
    precision: str | None = None,
) -> JpegCase | None:
    """Write ``<sample>_x<scale>_jpeg<q>_comparison.png``: bicubic, ``model`` and the default
    route on the sample's LR saved as a JPEG at ``quality``, and the ground truth. None when
    ``samples`` has no :data:`JPEG_SAMPLE` (a folder of the user's own)."""
    scale = resolve_scale(model, scale)
    evalset = discover(samples)
    hr_path = next((p for p in evalset.hr_files if p.stem == JPEG_SAMPLE), None)
    if hr_path is None:
        return None
    target = Path(out_dir) / f"{hr_path.stem}_x{scale}_jpeg{quality}_comparison.png"
    check_writable(target, overwrite=True)
    lr, hr = load_pair(evalset, hr_path, scale)
    buf = io.BytesIO()
    jpeg_image(lr.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=quality)
    photo = Image.open(buf)  # what a user's JPEG is: the route reads its tables
    lr_jpeg = torch.from_numpy(np.array(photo.convert("RGB"))).permute(2, 0, 1)
    router = router or Router(scale=scale, progress=False)
    name, why = router.choose(photo)
    shown = [
        (f"bicubic of JPEG q{quality}", super_resolve(BICUBIC, lr_jpeg, scale)),
        (model_name, upscale_sample(model, lr_jpeg, scale, precision=precision)),
        (
            f"default route: {name}",
            upscale_sample(router.model(name), lr_jpeg, scale, precision=precision),
        ),
    ]
    p_bic, p_model, p_route = _write_comparison(target, shown, hr, scale)
    return JpegCase(hr_path.stem, scale, quality, p_bic, p_model, p_route, name, why, target)


def format_jpeg_case(case: JpegCase, model_name: str) -> str:
    return (
        f"JPEG case: {case.image} x{case.scale}, LR saved as JPEG q{case.quality}: bicubic "
        f"{case.psnr_bicubic:.2f} dB, {model_name} {case.psnr_model:.2f} dB "
        f"({case.psnr_model - case.psnr_bicubic:+.2f}), default route {case.psnr_route:.2f} dB "
        f"({case.psnr_route - case.psnr_bicubic:+.2f}; {case.route_model}: {case.route_why}); "
        f"{case.comparison}"
    )


def format_results(results: list[DemoResult]) -> str:
    rows = [f"{'image':<12} {'scale':>5} {'bicubic':>9} {'model':>9} {'gain':>8}  comparison"]
    for r in results:
        rows.append(
            f"{r.image:<12} {'x' + str(r.scale):>5} {r.psnr_bicubic:>7.2f}dB "
            f"{r.psnr_model:>7.2f}dB {r.gain:>+6.2f}dB  {r.comparison}"
        )
    return "\n".join(rows)
