"""Tests for edsr.io.png: the 16-bit PNG encoder and strip writer, and the decoder (checked
against files built byte by byte from the specification, and against Pillow)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageCms
import PIL.ImageOps
import pytest

from edsr.errors import EdsrError, ImageError
from edsr.io.image import Image, read_image, write_image, write_png
from edsr.io.png import PngStripWriter, encode_png, parse_png, peek_header

DATA = Path(__file__).parents[1] / "data"
SET5 = sorted((DATA / "Set5" / "HR").glob("*.png"))
BRIDGE = DATA / "Set14" / "HR" / "bridge.png"

RNG = np.random.default_rng(4321)


def rand(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def assert_one_line_naming(err: pytest.ExceptionInfo[ImageError], path: Path) -> str:
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------
# A PNG writer independent of the module: filters each byte in plain Python, straight from
# the PNG specification, so the module's vectorised decoder is checked against the spec.
# ------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def png_by_hand(
    samples: np.ndarray,
    filters: list[int],
    *,
    interlace: int = 0,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> bytes:
    """Encode (H, W, C) uint8/uint16 samples, row r filtered with filters[r % len(filters)]."""
    height, width, channels = samples.shape
    depth = 16 if samples.dtype == np.uint16 else 8
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    bpp = channels * depth // 8
    stream = bytearray()
    prev = [0] * (width * bpp)
    for r in range(height):
        row = list(samples[r].astype(">u2" if depth == 16 else np.uint8).tobytes())
        kind = filters[r % len(filters)]
        stream.append(kind)
        for i, x in enumerate(row):
            a = row[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            pred = [0, a, b, (a + b) // 2, paeth(a, b, c)][kind]
            stream.append((x - pred) % 256)
        prev = row
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, interlace)
    body = png_chunk(b"IHDR", ihdr)
    for kind, data in extra:
        body += png_chunk(kind, data)
    body += png_chunk(b"IDAT", zlib.compress(bytes(stream)))
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_16bit_writer_agrees_with_pillow(channels: int) -> None:
    # Pillow reduces 16-bit colour PNGs to their high bytes: an independent check of the encoder.
    samples = rand((9, 11, channels), np.uint16)
    buf = io.BytesIO()
    encode_png(buf, samples)
    with PIL.Image.open(io.BytesIO(buf.getvalue())) as im:
        got = np.array(im)
    high = (samples >> 8).astype(np.uint8)
    if channels == 2:  # Pillow opens 16-bit gray+alpha as RGBA
        np.testing.assert_array_equal(got[..., 0], high[..., 0])
        np.testing.assert_array_equal(got[..., 3], high[..., 1])
    else:
        np.testing.assert_array_equal(got, high)


def test_16bit_gray_writer_is_exact_in_pillow(tmp_path: Path) -> None:
    gray = rand((6, 7), np.uint16)
    with PIL.Image.open(write_png(tmp_path / "g16.png", gray)) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.array(im), gray)


def test_16bit_writer_uses_several_filters() -> None:
    # A smooth gradient makes Sub/Up win over None; check the chosen rows still decode.
    ramp = (np.arange(40 * 30 * 3).reshape(40, 30, 3) * 50).astype(np.uint16)
    buf = io.BytesIO()
    encode_png(buf, ramp)
    data = buf.getvalue()
    np.testing.assert_array_equal(parse_png(data).samples(), ramp)
    pos, idat = 8, b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        idat += data[pos + 8 : pos + 8 + length] if kind == b"IDAT" else b""
        pos += 12 + length
    types = set(zlib.decompress(idat)[:: 1 + 30 * 6])
    assert 1 in types and types <= {0, 1, 2}


def test_large_16bit_round_trip_spans_row_blocks(tmp_path: Path) -> None:
    # More rows than the encoder's block size, so Up filtering crosses block boundaries.
    pixels = (np.add.outer(np.arange(600), np.arange(20))[..., None] * [7, 11, 13]).astype(
        np.uint16
    )
    back = read_image(write_png(tmp_path / "tall.png", pixels))
    np.testing.assert_array_equal(back.pixels, pixels)


# ------------------------------------------------------------------------------------------
# The PNG decoder against files built byte by byte
# ------------------------------------------------------------------------------------------

ALL_FILTERS = [0, 1, 2, 3, 4, 4, 3, 2, 1, 0, 3, 1, 4, 2]


@pytest.mark.parametrize("channels", [2, 3, 4])
@pytest.mark.parametrize(("height", "width"), [(14, 9), (14, 1), (1, 5)])
def test_decoder_all_filter_types(tmp_path: Path, channels: int, height: int, width: int) -> None:
    samples = rand((height, width, channels), np.uint16)
    samples[0, 0, 0] = 65535
    data = png_by_hand(samples, ALL_FILTERS)
    # The hand-written file is valid: Pillow agrees on the high bytes.
    with PIL.Image.open(io.BytesIO(data)) as im:
        if channels != 2:
            np.testing.assert_array_equal(np.array(im), (samples >> 8).astype(np.uint8))
    path = tmp_path / "hand.png"
    path.write_bytes(data)
    got = read_image(path)
    pixels = samples[..., :-1] if channels in (2, 4) else samples
    np.testing.assert_array_equal(got.pixels, pixels)
    if channels in (2, 4):
        assert got.alpha is not None
        np.testing.assert_array_equal(got.alpha, samples[..., -1])
    else:
        assert got.alpha is None


def test_decoder_each_single_filter() -> None:
    samples = rand((6, 8, 3), np.uint16)
    for kind in range(5):
        got = read_image(png_by_hand(samples, [kind]))  # bytes, as the server passes them
        np.testing.assert_array_equal(got.pixels, samples, err_msg=f"filter {kind}")


@pytest.mark.parametrize("path", [*SET5, BRIDGE], ids=lambda p: p.name)
def test_decoder_matches_pillow_on_real_8bit_files(path: Path) -> None:
    # Real encoders use Average and Paeth heavily; the same unfilter code serves 16-bit files.
    got = parse_png(path.read_bytes()).samples()
    with PIL.Image.open(path) as im:
        ref = np.array(im)
    np.testing.assert_array_equal(got, ref.reshape(got.shape))


def test_decoder_trns_colour_key(tmp_path: Path) -> None:
    samples = rand((4, 5, 3), np.uint16)
    key = samples[1, 2].copy()
    samples[3, 4] = key
    path = tmp_path / "key.png"
    path.write_bytes(png_by_hand(samples, [1], extra=((b"tRNS", key.astype(">u2").tobytes()),)))
    got = read_image(path)
    assert got.alpha is not None
    expected = np.full((4, 5), 65535, np.uint16)
    expected[1, 2] = expected[3, 4] = 0
    np.testing.assert_array_equal(got.alpha, expected)


def test_decoder_applies_exif_orientation(tmp_path: Path) -> None:
    samples = np.zeros((4, 6, 3), np.uint16)
    samples[0, 0] = 60000  # marker top-left
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    path = tmp_path / "rot.png"
    path.write_bytes(png_by_hand(samples, [0], extra=((b"eXIf", exif.tobytes()),)))
    got = read_image(path)
    assert got.pixels.shape == (6, 4, 3)
    assert got.pixels[0, -1, 0] == 60000 and got.pixels.sum() == 3 * 60000


def test_interlaced_16bit_colour_png_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "adam7.png"
    path.write_bytes(png_by_hand(rand((3, 3, 3), np.uint16), [0], interlace=1))
    with pytest.raises(ImageError, match="interlac") as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_corrupt_16bit_png(tmp_path: Path) -> None:
    data = bytearray(png_by_hand(rand((8, 8, 3), np.uint16), [4]))
    good = tmp_path / "good.png"
    good.write_bytes(bytes(data))
    read_image(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ImageError, match="truncated") as err:
        read_image(cut)
    assert_one_line_naming(err, cut)
    text = png_chunk(b"tEXt", b"Comment\0hello")
    text = text[:-1] + bytes([text[-1] ^ 0xFF])  # bad CRC in an ancillary chunk: ignored
    ok = tmp_path / "ok.png"
    ok.write_bytes(bytes(data[:33]) + text + bytes(data[33:]))
    read_image(ok)
    data[60] ^= 0xFF  # inside IDAT: CRC mismatch
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="corrupt") as err:
        read_image(bad)
    assert_one_line_naming(err, bad)


def test_bad_filter_type(tmp_path: Path) -> None:
    raw = (b"\x07" + bytes(2 * 6)) * 2  # 2 rows of 2 RGB16 pixels; filter type 7 does not exist
    ihdr = struct.pack(">IIBBBBB", 2, 2, 16, 2, 0, 0, 0)
    path = tmp_path / "f7.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="filter type 7"):
        read_image(path)


def test_zero_size_png(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 0, 5, 8, 0, 0, 0, 0)
    path = tmp_path / "zero.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 5))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageError, match="zero size") as err:
        read_image(path)
    assert_one_line_naming(err, path)


# ------------------------------------------------------------------------------------------
# The strip writer: one filter choice for whole images and bands
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bands", [[1, 299, 300], [256, 344], [600]])
def test_strip_writer_in_bands_writes_the_bytes_of_the_whole_image(bands: list[int]) -> None:
    # Bands that cut across the encoder's 256-row blocks: the Up filter of each band's first
    # row must see the last row of the band before.
    samples = (np.add.outer(np.arange(600), np.arange(17))[..., None] * [3, 5, 7]).astype(np.uint16)
    whole = io.BytesIO()
    encode_png(whole, samples)
    striped = io.BytesIO()
    writer = PngStripWriter(striped, 17, 600, 3, np.uint16)
    start = 0
    for n in bands:
        writer.write_rows(samples[start : start + n])
        start += n
    writer.close()
    assert striped.getvalue() == whole.getvalue()
    np.testing.assert_array_equal(parse_png(whole.getvalue()).samples(), samples)


def test_strip_writer_refuses_misuse() -> None:
    writer = PngStripWriter(io.BytesIO(), 4, 3, 3, np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        writer.write_rows(np.zeros((1, 5, 3), np.uint8))
    writer.write_rows(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="more rows"):
        writer.write_rows(np.zeros((2, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="wrote 2 of 3 rows"):
        writer.close()
    with pytest.raises(EdsrError, match="too large for PNG"):
        PngStripWriter(io.BytesIO(), 2**31, 1, 3, np.uint8)


def test_peek_header() -> None:
    data = SET5[0].read_bytes()
    header = peek_header(data[:33])
    with PIL.Image.open(SET5[0]) as im:
        assert header is not None and (header.width, header.height) == im.size
    assert header.depth == 8 and header.channels == 3 and not header.interlaced
    assert peek_header(b"GIF89a" + bytes(40)) is None
    assert peek_header(data[:20]) is None


# ------------------------------------------------------------------------------------------
# ICC colour profiles in the iCCP chunk
# ------------------------------------------------------------------------------------------


def srgb_profile() -> bytes:
    return PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()


def test_16bit_png_keeps_its_icc_profile(tmp_path: Path) -> None:
    icc = srgb_profile()
    pixels = rand((5, 7, 3), np.uint16)
    path = write_png(tmp_path / "p16.png", pixels, icc_profile=icc)
    back = read_image(path)  # through this package's own decoder
    np.testing.assert_array_equal(back.pixels, pixels)
    assert back.icc_profile == icc
    with PIL.Image.open(path) as im:  # an independent reader of the iCCP chunk
        assert im.info["icc_profile"] == icc
    # and written back by write_image
    again = read_image(write_image(tmp_path / "again.png", back))
    assert again.icc_profile == icc


def test_strip_writer_writes_the_icc_profile() -> None:
    icc = srgb_profile()
    buf = io.BytesIO()
    writer = PngStripWriter(buf, 6, 4, 4, np.uint8, icc_profile=icc)
    writer.write_rows(rand((4, 6, 4)))
    writer.close()
    assert parse_png(buf.getvalue()).icc_profile() == icc
    with PIL.Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.info["icc_profile"] == icc


def test_damaged_icc_profile_is_dropped_not_fatal() -> None:
    samples = rand((3, 4, 3), np.uint16)
    bad = b"ICC Profile\0\0" + b"not zlib at all"
    got = read_image(png_by_hand(samples, [0], extra=((b"iCCP", bad),)))
    np.testing.assert_array_equal(got.pixels, samples)
    assert got.icc_profile is None
    # A CMYK profile does not describe RGB pixels: not carried over.
    cmyk = bytearray(srgb_profile())
    cmyk[16:20] = b"CMYK"
    iccp = b"ICC Profile\0\0" + zlib.compress(bytes(cmyk))
    got = read_image(png_by_hand(samples, [0], extra=((b"iCCP", iccp),)))
    assert got.icc_profile is None


def test_write_image_png_to_a_stream() -> None:
    image = Image(rand((4, 5, 3), np.uint16), rand((4, 5), np.uint16))
    buf = io.BytesIO()
    assert write_image(buf, image, format="png") is None
    header = peek_header(buf.getvalue())
    assert header is not None and header.depth == 16 and header.channels == 4
    back = read_image(buf.getvalue())
    np.testing.assert_array_equal(back.pixels, image.pixels)
    assert back.alpha is not None
    np.testing.assert_array_equal(back.alpha, image.alpha)
    assert struct.unpack(">I", buf.getvalue()[16:20])[0] == 5


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_png_exif_orientation_matches_pillow(orientation: int) -> None:
    samples = rand((3, 5, 3), np.uint16)
    exif = PIL.Image.Exif()
    exif[0x0112] = orientation
    got = read_image(png_by_hand(samples, [0], extra=((b"eXIf", exif.tobytes()),)))
    im = PIL.Image.fromarray((samples >> 8).astype(np.uint8))
    im.info["exif"] = exif.tobytes()
    ref = np.array(PIL.ImageOps.exif_transpose(im))
    np.testing.assert_array_equal((got.pixels >> 8).astype(np.uint8), ref)
