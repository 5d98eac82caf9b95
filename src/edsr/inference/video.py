"""Video upscaling with PyAV: decode, upscale and encode one frame at a time.

Frames are converted to RGB before the model sees them (the public code fed OpenCV's BGR
frames to an RGB model), the source frame timing is kept frame for frame, and audio streams
are copied without re-encoding. Memory stays at one input frame, one output frame and the
tiles' working memory, whatever the length of the video.

PyAV is optional: ``pip install 'edsr[video]'`` (or ``pip install av``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edsr.errors import EdsrError
from edsr.inference.pipeline import _ArraySink, _run_into, default_memory_budget, resolve_scale
from edsr.io.atomic import atomic_write, check_writable

#: Suffixes treated as videos by ``edsr upscale``.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"}
)

# Containers we write, with the video codecs to try in order (the first one this FFmpeg has).
_WRITERS: dict[str, tuple[str, tuple[str, ...]]] = {
    ".mp4": ("mp4", ("libx264", "h264", "mpeg4")),
    ".m4v": ("mp4", ("libx264", "h264", "mpeg4")),
    ".mov": ("mov", ("libx264", "h264", "mpeg4")),
    ".mkv": ("matroska", ("libx264", "h264", "mpeg4")),
    ".webm": ("webm", ("libvpx-vp9", "libvpx")),
    ".avi": ("avi", ("mpeg4",)),
}
# Visually lossless settings: the upscaled video is the product.
_CODEC_OPTIONS = {
    "libx264": {"crf": "16", "preset": "medium"},
    "libvpx-vp9": {"crf": "20", "b": "0"},
}


def _av():
    try:
        import av
    except ImportError:
        raise EdsrError("video needs PyAV: pip install 'edsr[video]' (or pip install av)") from None
    return av


def video_output_path(src: str | os.PathLike, output: str | os.PathLike, scale: int) -> Path:
    """``output`` itself when it names a video file, else ``<output>/<stem>_x<scale><suffix>``."""
    src, output = Path(src), Path(output)
    if output.suffix.lower() in VIDEO_EXTENSIONS and not output.is_dir():
        return output
    suffix = src.suffix.lower() if src.suffix.lower() in _WRITERS else ".mp4"
    return output / f"{src.stem}_x{scale}{suffix}"


def _open_input(av, src: Path):
    if not src.is_file():
        raise EdsrError(f"{src}: no such file")
    try:
        container = av.open(str(src))
    except av.FFmpegError as e:
        raise EdsrError(f"{src}: cannot read this video container ({_msg(e)})") from None
    if not container.streams.video:
        container.close()
        raise EdsrError(f"{src}: has no video stream")
    return container


def _msg(e: Exception) -> str:
    # FFmpeg errors name our temporary file; the reason alone is what a user can act on.
    text = getattr(e, "strerror", None) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
    return str(text).strip()


def _pick_codec(av, dst: Path) -> tuple[str, str]:
    suffix = dst.suffix.lower()
    if suffix not in _WRITERS:
        have = ", ".join(sorted(_WRITERS))
        raise EdsrError(
            f"{dst}: cannot write '{suffix or '(no suffix)'}' videos; use one of {have}"
        )
    fmt, codecs = _WRITERS[suffix]
    for name in codecs:
        if name in av.codecs_available:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001 - a decoder-only build of this codec
                continue
            return fmt, name
    raise EdsrError(f"{dst}: this FFmpeg build has no encoder for {suffix} ({', '.join(codecs)})")


def upscale_video(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model,
    scale: int,
    *,
    overwrite: bool = False,
    frames: int | None = None,
    tile: int | None = None,
    max_memory: int | str | None = None,
    ensemble: bool = False,
    progress: bool = True,
) -> Path:
    """Upscale the first video stream of ``src`` into ``dst``; audio is copied unchanged.

    ``frames`` stops after that many frames (for previews; audio is cut to match). The output
    container comes from ``dst``'s suffix (.mp4, .mkv, .mov, .webm, .avi); the file appears
    only once complete.
    """
    av = _av()
    src, dst = Path(src), Path(dst)
    scale = resolve_scale(model, scale)
    if frames is not None and frames < 1:
        raise EdsrError(f"--frames must be at least 1, got {frames}")
    check_writable(dst, overwrite=overwrite)
    fmt, codec = _pick_codec(av, dst)
    if max_memory is None:
        # Fix the budget once, so every frame gets the same tiles (and one compiled graph).
        max_memory = default_memory_budget(next(model.parameters()).device)
    inp = _open_input(av, src)
    try:
        vin = inp.streams.video[0]
        if vin.codec_context is None or vin.codec_context.name is None:
            raise EdsrError(f"{src}: the video codec is not supported by this FFmpeg build")
        width, height = vin.codec_context.width, vin.codec_context.height
        if not width or not height:
            raise EdsrError(f"{src}: cannot tell the video's frame size")
        out_w, out_h = width * scale, height * scale
        # 4:2:0 chroma needs even sizes (odd only happens at x3 of an odd size).
        even_w, even_h = out_w - out_w % 2, out_h - out_h % 2
        if (even_w, even_h) != (out_w, out_h):
            warnings.warn(
                f"the {out_w}x{out_h} result is cropped to {even_w}x{even_h}: the video codec "
                "needs even sizes",
                UserWarning,
                stacklevel=2,
            )
        rate = vin.average_rate or vin.guessed_rate or Fraction(25)
        total = vin.frames or None
        if frames is not None:
            total = min(total, frames) if total else frames

        buffer = np.empty((out_h, out_w, 3), np.uint8)  # one output frame, reused
        sink = _ArraySink(buffer, 255.0, True)
        opts = {"tile": tile, "max_memory": max_memory, "ensemble": ensemble}

        def upscale_frame(rgb: np.ndarray) -> np.ndarray:
            _run_into(
                model, rgb, scale, 255.0, rows_done=None, put=sink.put, progress=False, **opts
            )
            return np.ascontiguousarray(buffer[:even_h, :even_w])

        with atomic_write(dst, overwrite=overwrite) as tmp:
            try:
                out = av.open(str(tmp), mode="w", format=fmt)
            except av.FFmpegError as e:
                raise EdsrError(f"{dst}: cannot write a {fmt} file ({_msg(e)})") from None
            try:
                vout = out.add_stream(codec, rate=rate, options=_CODEC_OPTIONS.get(codec, {}))
                vout.width, vout.height, vout.pix_fmt = even_w, even_h, "yuv420p"
                # The source's time base keeps each frame's timestamp exactly (variable frame
                # rates too). AVI has no timestamps, only a frame rate, and MPEG-4 part 2 caps
                # the denominator: there 1/rate it is.
                tb = vin.time_base
                if tb is None or fmt == "avi" or (codec == "mpeg4" and tb.denominator > 65535):
                    tb = Fraction(rate.denominator, rate.numerator)
                vout.codec_context.time_base = tb
                audio_map = {}
                for ain in inp.streams.audio:
                    name = ain.codec_context.name
                    supported = getattr(out, "supported_codecs", None)  # PyAV >= 12.3
                    if supported is not None and name not in supported:
                        raise EdsrError(
                            f"{dst}: {fmt} cannot hold the {name} audio of {src}; write a .mkv file"
                        )
                    audio_map[ain.index] = out.add_stream_from_template(ain)
                bar = tqdm(
                    total=total, desc=f"upscale x{scale}", unit="frame", disable=not progress
                )
                try:
                    _transcode(av, inp, out, vin, vout, audio_map, upscale_frame, frames, bar)
                finally:
                    bar.close()
            except av.FFmpegError as e:
                raise EdsrError(f"{src} -> {dst}: {_msg(e)}") from None
            finally:
                out.close()
    finally:
        inp.close()
    return dst


def _transcode(
    av,
    inp,
    out,
    vin,
    vout,
    audio_map: dict,
    upscale_frame: Callable[[np.ndarray], np.ndarray],
    frames: int | None,
    bar: tqdm,
) -> None:
    """Demux video and audio together: video frames are upscaled and encoded, audio packets
    are copied as they are; after ``frames`` frames, audio is copied up to the same time."""
    end_time: Fraction | None = None
    done = 0
    audio_past_end: set[int] = set()
    streams = [vin, *(s for s in inp.streams.audio if s.index in audio_map)]
    for packet in inp.demux(*streams):
        if end_time is not None and len(audio_past_end) == len(audio_map):
            break  # frame limit reached and every audio stream has caught up
        if packet.stream.type == "audio":
            if packet.dts is None:
                continue  # the demuxer's empty flush packet
            if end_time is not None and packet.pts is not None:
                if packet.pts * packet.time_base >= end_time:
                    audio_past_end.add(packet.stream.index)
                    continue
            name = packet.stream.codec_context.name
            packet.stream = audio_map[packet.stream.index]
            try:
                out.mux(packet)
            except av.FFmpegError as e:
                raise EdsrError(
                    f"cannot copy the {name} audio into a {out.format.name} file as it is "
                    f"({_msg(e)}); write a .mkv file"
                ) from None
            continue
        if end_time is not None:
            continue
        try:
            decoded = packet.decode()
        except av.FFmpegError as e:
            raise EdsrError(f"cannot decode the video ({_msg(e)})") from None
        for frame in decoded:
            up = upscale_frame(frame.to_ndarray(format="rgb24"))  # RGB, as the model was trained
            new = av.VideoFrame.from_ndarray(up, format="rgb24")
            if frame.pts is not None:
                new.pts, new.time_base = frame.pts, frame.time_base
            else:  # no timestamps in the source: number the frames
                new.pts, new.time_base = done, vout.codec_context.time_base
            for p in vout.encode(new.reformat(format="yuv420p")):
                out.mux(p)
            done += 1
            bar.update(1)
            if frames is not None and done >= frames:
                dur = frame.duration or 0
                end_time = (new.pts + dur) * new.time_base
                break
    for p in vout.encode(None):
        out.mux(p)
    if done == 0:
        raise EdsrError("the video has no frames that could be decoded")
