"""Video files with PyAV: decode, transform and encode one frame at a time; knows no model.

Frames reach the callback as RGB (the public code fed OpenCV's BGR frames to an RGB model),
the source frame timing is kept frame for frame, and audio streams are copied without
re-encoding. Memory stays at one input frame and one output frame, whatever the length.

PyAV is optional: ``pip install 'edsr[video]'`` (or ``pip install av``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from edsr.errors import EdsrError, one_line
from edsr.io.atomic import atomic_write, check_writable

#: Suffixes treated as videos.
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
#: Suffixes of the containers :func:`transform_video` can write.
WRITABLE_VIDEO_EXTENSIONS: frozenset[str] = frozenset(_WRITERS)

# Visually lossless settings: the upscaled video is the product.
_CODEC_OPTIONS = {
    "libx264": {"crf": "16", "preset": "medium"},
    "libvpx-vp9": {"crf": "20", "b": "0"},
}

#: ``transform(frame_rgb)``: an (H, W, 3) uint8 frame in, the (H*scale, W*scale, 3) one out.
Transform = Callable[[np.ndarray], np.ndarray]
#: ``on_frame(done, total)``: frames written so far, of ``total`` (None when not known).
OnFrame = Callable[[int, "int | None"], None]


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise EdsrError("video needs PyAV: pip install 'edsr[video]' (or pip install av)") from None
    return av


def _msg(e: Exception) -> str:
    # FFmpeg errors name our temporary file; the reason alone (strerror) is what a user can act on.
    return one_line(e)


def _open_input(av: Any, src: Path) -> Any:
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


def _pick_codec(av: Any, dst: Path) -> tuple[str, str]:
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


def transform_video(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    transform: Transform,
    *,
    scale: int,
    overwrite: bool = False,
    frames: int | None = None,
    on_frame: OnFrame | None = None,
) -> Path:
    """Write ``dst`` with every frame of ``src``'s first video stream passed through
    ``transform`` (which makes frames ``scale`` times larger); audio is copied unchanged.

    ``frames`` stops after that many frames (for previews; audio is cut to match). The output
    container comes from ``dst``'s suffix (.mp4, .mkv, .mov, .webm, .avi); the file appears
    only once complete. Odd output sizes are cropped by one pixel (4:2:0 chroma needs even).
    """
    av = _av()
    src, dst = Path(src), Path(dst)
    if frames is not None and frames < 1:
        raise EdsrError(f"--frames must be at least 1, got {frames}")
    check_writable(dst, overwrite=overwrite)
    fmt, codec = _pick_codec(av, dst)
    inp = _open_input(av, src)
    try:
        vin = inp.streams.video[0]
        if vin.codec_context is None or vin.codec_context.name is None:
            raise EdsrError(f"{src}: the video codec is not supported by this FFmpeg build")
        width, height = vin.codec_context.width, vin.codec_context.height
        if not width or not height:
            raise EdsrError(f"{src}: cannot tell the video's frame size")
        out_w, out_h = width * scale, height * scale
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

        def one_frame(rgb: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(transform(rgb)[:even_h, :even_w])

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

                def frame_done(done: int) -> None:
                    if on_frame is not None:
                        on_frame(done, total)

                _transcode(av, inp, out, vin, vout, audio_map, one_frame, frames, frame_done)
            except av.FFmpegError as e:
                raise EdsrError(f"{src} -> {dst}: {_msg(e)}") from None
            finally:
                out.close()
    finally:
        inp.close()
    return dst


def _transcode(
    av: Any,
    inp: Any,
    out: Any,
    vin: Any,
    vout: Any,
    audio_map: dict[int, Any],
    one_frame: Transform,
    frames: int | None,
    frame_done: Callable[[int], None],
) -> None:
    """Demux video and audio together: video frames are transformed and encoded, audio packets
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
            up = one_frame(frame.to_ndarray(format="rgb24"))
            new = av.VideoFrame.from_ndarray(up, format="rgb24")
            if frame.pts is not None:
                new.pts, new.time_base = frame.pts, frame.time_base
            else:  # no timestamps in the source: number the frames
                new.pts, new.time_base = done, vout.codec_context.time_base
            for p in vout.encode(new.reformat(format="yuv420p")):
                out.mux(p)
            done += 1
            frame_done(done)
            if frames is not None and done >= frames:
                dur = frame.duration or 0
                end_time = (new.pts + dur) * new.time_base
                break
    for p in vout.encode(None):
        out.mux(p)
    if done == 0:
        raise EdsrError("the video has no frames that could be decoded")
