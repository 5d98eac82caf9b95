"""Small line charts drawn with Pillow, so training curves need no plotting library."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

from PIL import Image, ImageDraw, ImageFont

from edsr.io.atomic import atomic_write

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 10000:
        return f"{v / 1000:g}k"
    return f"{v:.4g}"


def line_chart(
    path: str | os.PathLike,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (800, 480),
    log_y: bool = False,
    references: Mapping[str, float] | None = None,
) -> None:
    """Write a PNG line chart of ``{label: (xs, ys)}``, atomically (replacing the old one).

    ``references`` are dashed horizontal lines ``{label: y}``; a label that starts with a
    series' label (``"x2 bicubic"`` for ``"x2"``) takes that series' colour.
    """
    references = dict(references or {})
    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    pts = {
        k: [(x, y) for x, y in zip(*v, strict=True) if math.isfinite(y) and (y > 0 or not log_y)]
        for k, v in series.items()
    }
    xs = [x for p in pts.values() for x, _ in p]
    ys = [math.log10(y) if log_y else y for p in pts.values() for _, y in p]
    ys += [
        math.log10(y) if log_y else y
        for y in references.values()
        if math.isfinite(y) and (y > 0 or not log_y)
    ]
    draw.text((left, 12), title, fill="black", font=font)
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text(((left + w - right) // 2 - 3 * len(xlabel), h - 20), xlabel, fill="black", font=font)
    draw.text((5, top - 15), ylabel, fill="black", font=font)
    if xs:
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        if x1 == x0:
            x1 = x0 + 1
        pad = (y1 - y0) * 0.05 or (abs(y0) * 0.05 or 1.0)
        y0, y1 = y0 - pad, y1 + pad

        def to_px(x: float, y: float) -> tuple[float, float]:
            px = left + (x - x0) / (x1 - x0) * (w - left - right)
            py = h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
            return px, py

        for t in _nice_ticks(x0, x1):
            px, _ = to_px(t, y0)
            draw.line([px, h - bottom, px, h - bottom + 4], fill="black")
            draw.text((px - 10, h - bottom + 6), _fmt(t), fill="black", font=font)
        for t in _nice_ticks(y0, y1):
            _, py = to_px(x0, t)
            draw.line([left, py, w - right, py], fill="#e6e6e6")
            draw.text((8, py - 6), _fmt(10**t if log_y else t), fill="black", font=font)
        for i, (label, p) in enumerate(pts.items()):
            colour = _COLOURS[i % len(_COLOURS)]
            line = [to_px(x, math.log10(y) if log_y else y) for x, y in p]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            elif line:
                cx, cy = line[0]
                draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=colour)
            draw.text((w - right - 150, top + 8 + 14 * i), f"-- {label}", fill=colour, font=font)
        colour_of = {label: _COLOURS[i % len(_COLOURS)] for i, label in enumerate(pts)}
        for label, y in references.items():
            if not math.isfinite(y) or (log_y and y <= 0):
                continue
            colour = next((c for k, c in colour_of.items() if label.split()[0] == k), "#7f7f7f")
            _, py = to_px(x0, math.log10(y) if log_y else y)
            for xa in range(left, w - right, 12):
                draw.line([xa, py, min(xa + 6, w - right), py], fill=colour, width=1)
            draw.text((left + 6, py - 13), f"{label} {_fmt(y)}", fill=colour, font=font)
    with atomic_write(path, overwrite=True) as tmp:
        img.save(tmp, format="PNG")
