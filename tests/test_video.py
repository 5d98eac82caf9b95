"""Video: decode, upscale and encode frame by frame with PyAV, keeping timing and audio."""

from __future__ import annotations

import os
from fractions import Fraction

import numpy as np
import pytest

from edsr import EdsrError, save_model
from edsr.cli import main
from edsr.inference import upscale_files
from edsr.io.video import transform_video
from sr_helpers import pass_through_model

av = pytest.importorskip("av", reason="PyAV is not installed (pip install 'edsr[video]')")

FPS = 12
N_FRAMES = 8
W, H = 32, 24


def make_clip(path, *, audio: bool = True, codec: str = "mpeg4") -> None:
    """A short clip: left half red, right half blue, a white bar moving down; AAC sine audio."""
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=FPS)
        v.width, v.height, v.pix_fmt = W, H, "yuv420p"
        v.options = {"qscale": "2"} if codec == "mpeg4" else {}
        a = None
        if audio:
            a = out.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i in range(N_FRAMES):
            img = np.zeros((H, W, 3), np.uint8)
            img[:, : W // 2] = (220, 20, 20)
            img[:, W // 2 :] = (20, 20, 220)
            img[i * 2 : i * 2 + 3, :] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode(None):
            out.mux(p)
        if a is not None:
            t = np.arange(int(16000 * N_FRAMES / FPS)) / 16000
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(samples), 1024):
                chunk = samples[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate = 16000
                frame.pts = start
                frame.time_base = Fraction(1, 16000)
                for p in a.encode(frame):
                    out.mux(p)
            for p in a.encode(None):
                out.mux(p)


def probe(path):
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        info = {
            "size": (v.codec_context.width, v.codec_context.height),
            "rate": v.average_rate,
            "frames": frames,
            "audio": [(s.codec_context.name, s.sample_rate) for s in c.streams.audio],
        }
    with av.open(str(path)) as c:
        if c.streams.audio:
            s = c.streams.audio[0]
            pts = [p.pts + (p.duration or 0) for p in c.demux(s) if p.pts is not None]
            info["audio_seconds"] = float(max(pts) * s.time_base)
    return info


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    make_clip(path)
    return path


@pytest.fixture(scope="module")
def model():
    # image in, image out (nearest-neighbour plus a little): colours must survive as they are
    return pass_through_model(2, n_resblocks=2, n_feats=16)


def test_upscales_every_frame_keeps_rate_audio_and_rgb_order(tmp_path, clip, model):
    src = probe(clip)
    [dst] = upscale_files([clip], tmp_path / "out.mp4", model, progress=False)
    got = probe(dst)
    assert got["size"] == (2 * W, 2 * H)
    assert got["rate"] == src["rate"] == FPS
    assert len(got["frames"]) == len(src["frames"]) == N_FRAMES
    assert got["audio"] == src["audio"] == [("aac", 16000)]
    assert abs(got["audio_seconds"] - src["audio_seconds"]) < 0.01
    for i, frame in enumerate(got["frames"]):
        left = frame[:, : W - 4].reshape(-1, 3).astype(int)
        right = frame[:, W + 4 :].reshape(-1, 3).astype(int)
        left, right = np.median(left, 0), np.median(right, 0)
        assert left[0] > 150 and left[2] < 90, f"frame {i}: left half should stay red, got {left}"
        assert right[2] > 150 and right[0] < 90, (
            f"frame {i}: right half should stay blue, got {right}"
        )
        bar_row = frame[4 * i + 2, 2 : W - 4].astype(int)  # the white bar, scaled x2
        assert bar_row.min() > 150


def test_frames_limits_a_preview_and_cuts_audio(tmp_path, clip, model):
    dst = tmp_path / "preview.mkv"
    upscale_files([clip], dst, model, frames=3, progress=False)
    got = probe(dst)
    assert len(got["frames"]) == 3
    assert got["audio"] == [("aac", 16000)]
    assert got["audio_seconds"] <= 3 / FPS + 0.07  # whole AAC packets: 64 ms each


def test_output_folder_name_and_no_overwrite(tmp_path, clip, model):
    [dst] = upscale_files([clip], tmp_path, model, frames=1, progress=False)
    assert dst == tmp_path / "clip_x2.mp4" and dst.is_file()
    with pytest.raises(EdsrError, match="already exists"):
        upscale_files([clip], tmp_path, model, frames=1, progress=False)


def test_skip_existing_keeps_a_done_video_and_redoes_one_whose_input_changed(tmp_path, clip, model):
    src = tmp_path / "clip.mp4"
    src.write_bytes(clip.read_bytes())
    (tmp_path / "out").mkdir()
    [dst] = upscale_files([src], tmp_path / "out", model, frames=1, progress=False)
    before = dst.stat().st_mtime_ns
    again = upscale_files([src], tmp_path / "out", model, skip_existing=True, progress=False)
    assert again.skipped_existing == [src] and not again.written
    assert dst.stat().st_mtime_ns == before and len(probe(dst)["frames"]) == 1
    # The input is edited after its output was written: the output is out of date.
    make_clip(src, audio=False)
    os.utime(src, ns=(before + 10**9, before + 10**9))
    redone = upscale_files([src], tmp_path / "out", model, skip_existing=True, progress=False)
    assert redone.written == [dst] and not redone.skipped_existing
    got = probe(dst)
    assert len(got["frames"]) == N_FRAMES and got["audio"] == []


def test_unsupported_container_codec_and_garbage(tmp_path, clip, model):
    with pytest.raises(EdsrError, match=r"cannot write '\.xyz' videos; use one of"):
        from edsr.inference.video import upscale_video

        upscale_video(clip, tmp_path / "out.xyz", model, 2)
    garbage = tmp_path / "fake.mp4"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(EdsrError, match="fake.mp4: cannot read this video container"):
        upscale_files([garbage], tmp_path / "o.mp4", model, progress=False)
    silent = tmp_path / "silent.mp4"
    make_clip(silent, audio=False)
    with pytest.raises(EdsrError, match="give one video at a time"):
        upscale_files([silent, clip], tmp_path, model, progress=False)
    assert not list(tmp_path.glob("o.mp4*"))


def test_cli_video(tmp_path, clip, model, capsys):
    ckpt = tmp_path / "m.safetensors"
    save_model(model, ckpt)
    dst = tmp_path / "out.mp4"
    code = main(
        ["upscale", str(clip), "-o", str(dst), "--model", str(ckpt), "--frames", "2", "--quiet"]
    )
    assert code == 0, capsys.readouterr().err
    assert len(probe(dst)["frames"]) == 2
    # Issue 13.3: the summary names what was written: a video, not "1 image(s)".
    dst.unlink()
    code = main(["upscale", str(clip), "-o", str(dst), "--model", str(ckpt), "--frames", "1"])
    assert code == 0 and capsys.readouterr().out.strip().endswith(f"wrote 1 video to {dst}")


def test_io_video_takes_a_frame_callback_and_knows_no_model(tmp_path, clip):
    """Nearest-neighbour x3 as the callback: every frame in order, timing and audio kept."""
    seen, progress = [], []

    def nearest_x3(rgb: np.ndarray) -> np.ndarray:
        seen.append(rgb.shape)
        return rgb.repeat(3, axis=0).repeat(3, axis=1)

    dst = transform_video(
        clip, tmp_path / "n.mkv", nearest_x3, scale=3, on_frame=lambda d, t: progress.append(d)
    )
    got, src = probe(dst), probe(clip)
    assert seen == [(H, W, 3)] * N_FRAMES and progress == list(range(1, N_FRAMES + 1))
    assert got["size"] == (3 * W, 3 * H) and got["rate"] == FPS
    assert got["audio"] == src["audio"]
    for a, b in zip(got["frames"], src["frames"], strict=True):
        assert np.abs(a[::3, ::3].astype(int) - b.astype(int)).mean() < 6
