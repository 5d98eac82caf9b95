"""Videos through the model: every frame upscaled with one tile plan, written by
:mod:`edsr.io.video` (which keeps the frame timing and copies the audio)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from edsr.inference.descriptor import Model, describe, resolve_scale
from edsr.inference.engine import ArraySink, array_input, run_tiled
from edsr.inference.memory import default_memory_budget
from edsr.inference.tiling import ShouldStop, TilePlan, plan_tiles
from edsr.io.video import WRITABLE_VIDEO_EXTENSIONS, transform_video


def video_output_path(
    src: str | os.PathLike[str], output: str | os.PathLike[str], scale: int
) -> Path:
    """``output`` itself when it names a file (a suffix, not a folder), else
    ``<output>/<stem>_x<scale><suffix>`` (.mp4 when the source container cannot be written)."""
    src, output = Path(src), Path(output)
    if output.suffix and not output.is_dir():
        return output
    suffix = src.suffix.lower() if src.suffix.lower() in WRITABLE_VIDEO_EXTENSIONS else ".mp4"
    return output / f"{src.stem}_x{scale}{suffix}"


def upscale_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    model: Model,
    scale: int | None = None,
    *,
    overwrite: bool = False,
    frames: int | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    progress: bool = True,
    should_stop: ShouldStop | None = None,
) -> Path:
    """Upscale the first video stream of ``src`` into ``dst``; audio is copied unchanged.

    ``frames`` stops after that many frames (for previews). Every frame gets the same tiles,
    planned once for the first frame's size, and is written into one reused output buffer.
    """
    scale = resolve_scale(model, scale)
    if max_memory is None:
        # Fix the budget once, so every frame gets the same tiles (and one compiled graph).
        max_memory = default_memory_budget(describe(model).device)
    plans: dict[tuple[int, int], TilePlan] = {}
    buffers: dict[tuple[int, int], np.ndarray] = {}

    def upscale_frame(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        if (h, w) not in plans:
            plans[h, w] = plan_tiles(
                model, (1, 3, h, w), scale, tile=tile, max_memory=max_memory, ensemble=ensemble
            )
            buffers[h, w] = np.empty((h * scale, w * scale, 3), np.uint8)
        out = buffers[h, w]
        run_tiled(
            model,
            array_input(rgb, 255.0),
            scale,
            ArraySink(out, 255.0, True),
            plan=plans[h, w],
            ensemble=ensemble,
            should_stop=should_stop,
        )
        return out

    with tqdm(desc=f"upscale x{scale}", unit="frame", disable=not progress) as bar:

        def on_frame(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        with torch.no_grad():
            return transform_video(
                src,
                dst,
                upscale_frame,
                scale=scale,
                overwrite=overwrite,
                frames=frames,
                on_frame=on_frame,
            )
