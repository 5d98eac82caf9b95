"""The shared checks of values and paths (edsr.validators), and the doors that call them."""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA, crop_set
from edsr import build_model
from edsr.errors import EdsrError, ImageError
from edsr.evaluate import BICUBIC, evaluate
from edsr.inference import upscale_files
from edsr.io.image import read_image, write_png
from edsr.training.config import TrainConfig, resolve
from edsr.validators import (
    device_name,
    existing_folder,
    finite_float,
    input_file,
    input_folder,
    int_in_range,
    memory_size,
    output_file,
    output_folder,
)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -1.0, 1e30, "nan", "x", True])
def test_finite_float_refuses_in_one_line(bad):
    with pytest.raises(EdsrError) as e:
        finite_float(bad, "learning rate", maximum=1.0)
    assert str(e.value).startswith("learning rate must be") and "\n" not in str(e.value)


def test_finite_float_and_int_accept_what_they_say():
    assert finite_float("1e-4", maximum=1.0) == 1e-4
    assert finite_float(0, minimum=0, inclusive=True) == 0.0
    assert int_in_range("7") == 7 and int_in_range(0, minimum=0) == 0
    for bad in ("1e3", "2.0", True, 0, 2**31, "-1"):
        with pytest.raises(EdsrError, match="^expected"):
            int_in_range(bad)


def test_memory_size_refuses_what_int_would_crash_on():
    assert memory_size("512MiB") == 512 * 2**20
    for bad in (math.inf, math.nan, 0, "0", "1e30", "2000000TiB", -1):
        with pytest.raises(EdsrError):
            memory_size(bad)


def test_device_names():
    assert device_name("cuda:1") == "cuda:1" and device_name("auto") == "auto"
    for bad in ("nan", "-1", "cuda:-1", "", "gpu"):
        with pytest.raises(EdsrError, match="unknown device"):
            device_name(bad)


def test_path_checks_say_what_is_wrong_and_write_nothing(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    before = sorted(tmp_path.rglob("*"))
    assert output_folder(tmp_path / "new" / "deep") == tmp_path / "new" / "deep"
    assert output_file(tmp_path / "new" / "r.json") == tmp_path / "new" / "r.json"
    for check, path, message in [
        (output_folder, a_file, "it is not a folder"),
        (output_folder, a_file / "x", f"{a_file} is not a folder"),
        (output_file, tmp_path, "it is a folder; give a file name"),
        (output_file, a_file / "r.json", f"{a_file} is not a folder"),
        (input_folder, a_file, "is a file, not a folder"),
        (input_folder, tmp_path / "missing", "does not exist"),
        (existing_folder, a_file / "x", "does not exist"),
        (input_file, tmp_path, "is a folder; give a file"),
    ]:
        with pytest.raises(EdsrError, match=message):
            check(path)
    assert sorted(tmp_path.rglob("*")) == before


def test_train_config_refuses_non_finite_values_from_a_config_file(tmp_path):
    for key, value in [("lr", "inf"), ("lr", "nan"), ("adam_eps", "-1.0"), ("spike_factor", "nan")]:
        toml = tmp_path / f"{key}.toml"
        toml.write_text(f"train = ['{DATA / 'Set5'}']\n{key} = {value}\n")
        with pytest.raises(EdsrError, match=key.replace("lr", "learning rate")):
            resolve(None, None, str(toml), {})
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    cfg = TrainConfig(train=[str(DATA / "Set5")], out=str(a_file / "run"))
    with pytest.raises(EdsrError, match="the run folder .* is not a folder"):
        cfg.validate()
    cfg = TrainConfig(train=[str(DATA / "Set5")], out=str(tmp_path / "r"), init_from="no.pt")
    with pytest.raises(EdsrError, match="--init-from no.pt does not exist"):
        cfg.validate()


def test_library_doors_refuse_a_non_finite_res_scale(tmp_path):
    from edsr import load_model
    from edsr.models import build_model, model_from_config

    config = build_model("edsr-baseline", scale=2).config()
    for bad in (math.nan, math.inf, 0.0, -1.0):
        with pytest.raises(EdsrError, match="res_scale must be a finite number"):
            load_model(res_scale=bad, device="cpu")
        with pytest.raises(EdsrError, match="res_scale must be a finite number"):
            model_from_config({**config, "res_scale": bad})  # a checkpoint's stored config


def test_eval_shave_larger_than_an_image_is_one_line(tmp_path):
    small = crop_set(tmp_path / "small", ("bird",), (0, 0, 24, 24))
    for shave, left in [(12, "0x0"), (7, "10x10")]:  # SSIM's window is 11x11
        with pytest.raises(EdsrError, match=rf"bird.png \(24x24\) shaved by {shave} leaves {left}"):
            evaluate(BICUBIC, [small], [2], shave=shave, progress=False)
    assert evaluate(BICUBIC, [small], [2], shave=6, progress=False)["results"][0]["images"] == 1


def _with_bad_crc(data: bytes, kind: bytes) -> bytes:
    """``data`` with the CRC of its first ``kind`` chunk flipped."""
    pos = 8
    while True:
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 12 + length
        if ctype == kind:
            crc = struct.unpack(">I", data[end - 4 : end])[0] ^ 1
            return data[: end - 4] + struct.pack(">I", crc) + data[end:]
        pos = end


def _text_chunk(data: bytes) -> bytes:
    """``data`` with a tEXt chunk (ancillary) after IHDR."""
    body = b"Comment\x00hello"
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body))
    return data[:33] + chunk + data[33:]


@pytest.mark.parametrize("depth", [8, 16], ids=["pillow", "own-decoder"])
def test_png_with_a_bad_critical_crc_is_refused_as_corrupt(tmp_path, depth):
    pixels = np.asarray(Image.open(DATA / "Set5/HR/bird.png"))[:8, :8].astype(np.uint16)
    good = tmp_path / "good.png"
    write_png(good, pixels * 257 if depth == 16 else pixels.astype(np.uint8))
    data = good.read_bytes()
    for kind in (b"IDAT", b"IEND"):
        bad = tmp_path / f"bad-{kind.decode()}.png"
        bad.write_bytes(_with_bad_crc(data, kind))
        name = kind.decode()
        with pytest.raises(ImageError, match=f"{bad}: PNG file is truncated or corrupt .*{name}"):
            read_image(bad)
        with pytest.raises(ImageError, match=f"CRC mismatch in the {kind.decode()} chunk"):
            read_image(bad.read_bytes())
    # An ancillary chunk's bad CRC drops that chunk, as libpng does; the pixels are intact.
    ancillary = tmp_path / "ancillary.png"
    ancillary.write_bytes(_with_bad_crc(_text_chunk(data), b"tEXt"))
    assert np.array_equal(read_image(ancillary).pixels, read_image(good).pixels)


def test_skip_existing_redoes_an_empty_output(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.open(DATA / "Set5/HR/bird.png").crop((0, 0, 12, 10)).save(src / "a.png")
    Image.open(DATA / "Set5/HR/bird.png").crop((12, 0, 24, 10)).save(src / "b.png")
    out = tmp_path / "out"
    model = build_model("edsr-baseline", scale=2)
    upscale_files([src], out, model, progress=False)
    done = (out / "b_x2.png").read_bytes()
    (out / "a_x2.png").write_bytes(b"")  # what a crashed tool or a full disk can leave
    os.utime(out / "a_x2.png", (os.path.getmtime(src / "a.png") + 10,) * 2)
    again = upscale_files([src], out, model, progress=False, skip_existing=True)
    assert [p.name for p in again.written] == ["a_x2.png"]
    assert [p.name for p in again.skipped_existing] == ["b.png"]
    assert read_image(out / "a_x2.png").pixels.shape == (20, 24, 3)
    assert (out / "b_x2.png").read_bytes() == done


def test_folder_check_leaves_no_folder_behind(tmp_path):
    from edsr.io.atomic import check_folder_writable

    check_folder_writable(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    Path(tmp_path / "keep").mkdir()
    check_folder_writable(tmp_path / "keep" / "new")
    assert [p.name for p in tmp_path.rglob("*")] == ["keep"]
