"""Tests for edsr.io.image: reading every mode and format, ICC profiles, errors, atomic writes."""

from __future__ import annotations

import errno
import io
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageCms
import pytest

from edsr.errors import EdsrError, ImageError
from edsr.io import image as imageio
from edsr.io.datasets import find_images
from edsr.io.image import (
    IMAGE_EXTENSIONS,
    OUTPUT_EXTENSIONS,
    Image,
    max_side,
    read_image,
    to_8bit,
    write_image,
    write_png,
)

DATA = Path(__file__).parents[1] / "data"
SET5 = sorted((DATA / "Set5" / "HR").glob("*.png"))
BRIDGE = DATA / "Set14" / "HR" / "bridge.png"

RNG = np.random.default_rng(1234)


def rand(shape: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    return RNG.integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_one_line_naming(err: pytest.ExceptionInfo[ImageError], path: Path) -> str:
    msg = str(err.value)
    assert str(path) in msg
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------
# Image
# ------------------------------------------------------------------------------------------


def test_image_properties() -> None:
    im = Image(np.zeros((2, 3, 3), np.uint8))
    assert im.max_value == 255 and not im.gray and im.alpha is None
    im16 = Image(np.zeros((2, 3, 1), np.uint16), np.zeros((2, 3), np.uint16))
    assert im16.max_value == 65535 and im16.gray


@pytest.mark.parametrize(
    ("pixels", "alpha"),
    [
        (np.zeros((2, 3), np.uint8), None),  # no channel axis
        (np.zeros((2, 3, 2), np.uint8), None),
        (np.zeros((2, 3, 3), np.float32), None),
        (np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3), np.uint16)),
        (np.zeros((2, 3, 3), np.uint8), np.zeros((3, 2), np.uint8)),
    ],
)
def test_image_rejects_bad_arrays(pixels: np.ndarray, alpha: np.ndarray | None) -> None:
    with pytest.raises(ValueError):
        Image(pixels, alpha)


def test_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"} == IMAGE_EXTENSIONS
    assert IMAGE_EXTENSIONS - {".gif"} == OUTPUT_EXTENSIONS
    assert issubclass(ImageError, EdsrError)


def test_max_side_takes_suffixes_and_format_names() -> None:
    assert max_side(".webp") == max_side("webp") == max_side("WEBP") == 16383
    assert max_side(".JPG") == max_side("jpeg") == 65535
    assert max_side(".png") == max_side(".xyz") == 2**31 - 1


# ------------------------------------------------------------------------------------------
# Round trips through write_png / read_image
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(("channels", "with_alpha"), [(1, False), (1, True), (3, False), (3, True)])
def test_png_round_trip(tmp_path: Path, dtype: type, channels: int, with_alpha: bool) -> None:
    pixels = rand((13, 17, channels), dtype)
    alpha = rand((13, 17), dtype) if with_alpha else None
    if dtype == np.uint16:
        pixels[0, 0] = 65535  # make sure values far above 255 survive
        pixels[0, 1] = 0
    out = write_png(tmp_path / "x.png", pixels, alpha)
    assert out == tmp_path / "x.png"
    back = read_image(out)
    assert back.pixels.dtype == dtype and back.pixels.shape == pixels.shape
    np.testing.assert_array_equal(back.pixels, pixels)
    if with_alpha:
        assert back.alpha is not None and back.alpha.dtype == dtype
        np.testing.assert_array_equal(back.alpha, alpha)
    else:
        assert back.alpha is None
    assert back.pixels.flags.writeable and back.pixels.flags.c_contiguous


def test_png_accepts_2d_gray(tmp_path: Path) -> None:
    gray = rand((4, 5))
    np.testing.assert_array_equal(
        read_image(write_png(tmp_path / "g.png", gray)).pixels[..., 0], gray
    )


# ------------------------------------------------------------------------------------------
# Pillow modes and other formats
# ------------------------------------------------------------------------------------------


def test_real_files() -> None:
    rgb = read_image(SET5[0])
    assert rgb.pixels.dtype == np.uint8 and rgb.pixels.shape[2] == 3 and rgb.alpha is None
    gray = read_image(BRIDGE)
    assert gray.gray and gray.pixels.shape == (512, 512, 1)


def test_palette_without_transparency(tmp_path: Path) -> None:
    index = RNG.integers(0, 4, (5, 6), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    im = PIL.Image.new("P", (6, 5))
    im.putpalette(palette.ravel().tolist())
    im.putdata(index.ravel().tolist())
    im.save(tmp_path / "p.png")
    got = read_image(tmp_path / "p.png")
    assert got.alpha is None
    np.testing.assert_array_equal(got.pixels, palette[index])


def test_palette_with_transparency(tmp_path: Path) -> None:
    index = RNG.integers(0, 3, (5, 6), dtype=np.uint8)
    index[0, 0] = 2
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    im = PIL.Image.new("P", (6, 5))
    im.putpalette(palette.ravel().tolist())
    im.putdata(index.ravel().tolist())
    im.save(tmp_path / "pt.png", transparency=bytes([255, 128, 0]))  # per-entry alpha (tRNS)
    got = read_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(got.pixels, palette[index])
    assert got.alpha is not None
    np.testing.assert_array_equal(got.alpha, np.array([255, 128, 0], np.uint8)[index])


def test_bilevel_cmyk_and_16bit_tiff(tmp_path: Path) -> None:
    bits = rand((4, 9)) > 127
    PIL.Image.fromarray(bits).save(tmp_path / "b.png")
    got = read_image(tmp_path / "b.png")
    assert got.gray and got.pixels.dtype == np.uint8
    np.testing.assert_array_equal(got.pixels[..., 0], np.where(bits, 255, 0))

    cmyk = PIL.Image.fromarray(rand((4, 5, 3))).convert("CMYK")
    cmyk.save(tmp_path / "c.tif")
    got = read_image(tmp_path / "c.tif")
    np.testing.assert_array_equal(got.pixels, np.array(cmyk.convert("RGB")))

    gray16 = rand((4, 5), np.uint16)
    PIL.Image.fromarray(gray16).save(tmp_path / "g16.tif")
    got = read_image(tmp_path / "g16.tif")
    assert got.pixels.dtype == np.uint16
    np.testing.assert_array_equal(got.pixels[..., 0], gray16)


def test_32bit_images(tmp_path: Path) -> None:
    small = rand((3, 4)).astype(np.int32) * 200
    PIL.Image.fromarray(small).save(tmp_path / "i_ok.tif")  # mode I, values fit 16 bits
    got = read_image(tmp_path / "i_ok.tif")
    np.testing.assert_array_equal(got.pixels[..., 0], small)
    assert got.pixels.dtype == np.uint16

    big = small + 100_000
    PIL.Image.fromarray(big).save(tmp_path / "i_big.tif")
    with pytest.raises(ImageError, match="not converted") as err:
        read_image(tmp_path / "i_big.tif")
    assert_one_line_naming(err, tmp_path / "i_big.tif")

    PIL.Image.fromarray(np.ones((3, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="floating-point.*not converted"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize(
    ("suffix", "options", "exact"),
    [
        (".bmp", {}, True),
        (".tif", {}, True),
        (".tiff", {}, True),
        (".webp", {"lossless": True}, True),
        (".jpg", {"quality": 95, "subsampling": 0}, False),
        (".jpeg", {"quality": 95, "subsampling": 0}, False),
    ],
)
def test_other_formats_read(tmp_path: Path, suffix: str, options: dict, exact: bool) -> None:
    arr = np.repeat(np.repeat(rand((2, 3, 3)), 8, axis=0), 8, axis=1)  # 8x8 blocks suit JPEG
    PIL.Image.fromarray(arr).save(tmp_path / f"x{suffix}", **options)
    got = read_image(tmp_path / f"x{suffix}")
    assert got.pixels.shape == arr.shape and got.pixels.dtype == np.uint8
    if exact:
        np.testing.assert_array_equal(got.pixels, arr)
    else:
        assert np.abs(got.pixels.astype(int) - arr).mean() < 8


@pytest.mark.parametrize("suffix", [".bmp", ".tif", ".webp", ".jpg", ".png"])
def test_write_image_formats(tmp_path: Path, suffix: str) -> None:
    arr = np.repeat(np.repeat(rand((2, 3, 3)), 8, axis=0), 8, axis=1)
    out = write_image(tmp_path / f"out{suffix.upper()}", Image(arr))
    got = read_image(out)
    assert got.pixels.shape == arr.shape
    if suffix in (".jpg", ".webp"):
        assert np.abs(got.pixels.astype(int) - arr).mean() < 8
    else:
        np.testing.assert_array_equal(got.pixels, arr)


def test_write_image_alpha_formats(tmp_path: Path) -> None:
    im = Image(rand((8, 8, 3)), rand((8, 8)))
    got = read_image(write_image(tmp_path / "a.tiff", im))
    assert got.alpha is not None
    np.testing.assert_array_equal(got.alpha, im.alpha)
    for suffix in (".jpg", ".bmp"):
        with pytest.raises(ImageError, match="transparency.*png"):
            write_image(tmp_path / f"a{suffix}", im)
    assert files_in(tmp_path) == ["a.tiff"]


def test_write_image_16bit_needs_png(tmp_path: Path) -> None:
    im = Image(rand((4, 4, 3), np.uint16))
    for suffix in (".jpg", ".tif", ".webp", ".bmp"):
        with pytest.raises(ImageError, match=r"16-bit.*\.png") as err:
            write_image(tmp_path / f"x{suffix}", im)
        assert_one_line_naming(err, tmp_path / f"x{suffix}")
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "x.png", im)).pixels, im.pixels)
    assert files_in(tmp_path) == ["x.png"]


def test_write_image_too_large_for_webp(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"too large for WEBP.*\.png"):
        write_image(tmp_path / "wide.webp", Image(np.zeros((1, 16384, 3), np.uint8)))
    assert files_in(tmp_path) == []


def test_write_image_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="suffix"):
        write_image(tmp_path / "x.gif", Image(rand((2, 2, 3))))
    with pytest.raises(ImageError, match="suffix"):
        write_image(tmp_path / "noext", Image(rand((2, 2, 3))))


def test_exif_orientation_jpeg(tmp_path: Path) -> None:
    arr = np.zeros((40, 64, 3), np.uint8)
    arr[:8, :8] = (255, 0, 0)  # red marker at the stored top-left
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    PIL.Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=95)
    got = read_image(tmp_path / "o.jpg")
    assert got.pixels.shape == (64, 40, 3)
    # After a clockwise turn the stored top-left corner is at the top-right.
    assert (got.pixels[1:7, -7:-1, 0] > 200).all() and (got.pixels[1:7, -7:-1, 1:] < 60).all()
    assert got.pixels[-4:, -4:].max() < 60


def test_rgb_with_colour_key_gets_alpha(tmp_path: Path) -> None:
    arr = rand((4, 5, 3))
    arr[2, 3] = (1, 2, 3)
    PIL.Image.fromarray(arr).save(tmp_path / "k.png", transparency=(1, 2, 3))
    got = read_image(tmp_path / "k.png")
    assert got.alpha is not None and got.alpha[2, 3] == 0 and got.alpha.sum() == 255 * 19


# ------------------------------------------------------------------------------------------
# Read errors
# ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist") as err:
        read_image(tmp_path / "nope.png")
    assert_one_line_naming(err, tmp_path / "nope.png")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="directory") as err:
        read_image(tmp_path)
    assert_one_line_naming(err, tmp_path)


def test_text_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match="not an image") as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_truncated_png(tmp_path: Path) -> None:
    data = SET5[0].read_bytes()
    path = tmp_path / "half.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as err:
        read_image(path)
    assert_one_line_naming(err, path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    buf = io.BytesIO()
    PIL.Image.fromarray(rand((64, 64, 3))).save(buf, "JPEG")
    path = tmp_path / "half.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        read_image(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageError, match="empty") as err:
        read_image(path)
    assert_one_line_naming(err, path)


@pytest.fixture
def pixel_limit(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    # read_image writes the env var into PIL's global; registering the attribute with
    # monkeypatch restores Pillow's limit after the test.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", PIL.Image.MAX_IMAGE_PIXELS)
    return monkeypatch


@pytest.mark.parametrize("factor", [1.5, 3])  # Pillow warns below 2x its limit, errors above
def test_decompression_bomb(tmp_path: Path, pixel_limit: pytest.MonkeyPatch, factor: float) -> None:
    path = write_png(tmp_path / "big.png", rand((20, 50, 3)))
    pixel_limit.setenv(imageio.MAX_PIXELS_ENV, str(int(1000 / factor)))
    with pytest.raises(ImageError) as err:
        read_image(path)
    msg = assert_one_line_naming(err, path)
    assert f"has 1000 pixels, above the limit of {int(1000 / factor)}" in msg
    assert imageio.MAX_PIXELS_ENV in msg
    pixel_limit.setenv(imageio.MAX_PIXELS_ENV, "1000")
    assert read_image(path).pixels.shape == (20, 50, 3)


def test_decompression_bomb_16bit(tmp_path: Path, pixel_limit: pytest.MonkeyPatch) -> None:
    path = write_png(tmp_path / "big16.png", rand((20, 50, 3), np.uint16))
    pixel_limit.setenv(imageio.MAX_PIXELS_ENV, "999")
    with pytest.raises(ImageError, match="has 1000 pixels, above the limit of 999"):
        read_image(path)


def test_bad_pixel_limit_env(tmp_path: Path, pixel_limit: pytest.MonkeyPatch) -> None:
    pixel_limit.setenv(imageio.MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageError, match=imageio.MAX_PIXELS_ENV):
        read_image(SET5[0])


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_png(tmp_path / "secret.png", rand((2, 2, 3)))

    def deny(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    # Simulated: chmod does not stop root, which CI containers often are.
    monkeypatch.setattr(imageio, "open", deny, raising=False)
    with pytest.raises(ImageError, match="permission denied") as err:
        read_image(path)
    assert_one_line_naming(err, path)


# ------------------------------------------------------------------------------------------
# Atomic, no-overwrite writes
# ------------------------------------------------------------------------------------------


def test_existing_destination_kept(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"precious")
    with pytest.raises(ImageError, match="--overwrite") as err:
        write_png(dest, rand((3, 3, 3)))
    assert_one_line_naming(err, dest)
    assert dest.read_bytes() == b"precious"
    assert files_in(tmp_path) == ["out.png"]


def test_overwrite_replaces(tmp_path: Path) -> None:
    dest = tmp_path / "out.png"
    dest.write_bytes(b"old")
    arr = rand((3, 3, 3))
    write_png(dest, arr, overwrite=True)
    np.testing.assert_array_equal(read_image(dest).pixels, arr)
    assert files_in(tmp_path) == ["out.png"]


def test_creates_parent_and_respects_umask(tmp_path: Path) -> None:
    dest = tmp_path / "a" / "b" / "out.png"
    write_png(dest, rand((3, 3, 3)))
    assert dest.is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("exc", [RuntimeError("encoder broke"), KeyboardInterrupt()])
@pytest.mark.parametrize("existing", [False, True])
def test_failure_mid_write_16bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, existing: bool
) -> None:
    dest = tmp_path / "out.png"
    if existing:
        dest.write_bytes(b"old")
    seen: list[str] = []

    def broken(f: io.BufferedWriter, samples: np.ndarray, **kwargs: object) -> None:
        f.write(b"\x89PNG partial")
        seen.extend(n for n in files_in(tmp_path) if n.startswith(".") and n.endswith(".tmp"))
        raise exc

    monkeypatch.setattr(imageio, "encode_png", broken)
    with pytest.raises(type(exc)):
        write_png(dest, rand((3, 3, 3), np.uint16), overwrite=existing)
    assert len(seen) == 1  # the temporary file existed while writing...
    assert files_in(tmp_path) == (["out.png"] if existing else [])  # ...and is gone now
    if existing:
        assert dest.read_bytes() == b"old"


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_keyboard_interrupt_in_pillow_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    def interrupted(self: PIL.Image.Image, fp: io.BufferedWriter, *a: object, **k: object) -> None:
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(PIL.Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / f"out{suffix}", Image(rand((3, 3, 3))))
    assert files_in(tmp_path) == []


def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(imageio.os, "fsync", full)
    dest = tmp_path / "out.png"
    with pytest.raises(ImageError, match="disk full") as err:
        write_png(dest, rand((3, 3, 3)))
    assert_one_line_naming(err, dest)
    assert files_in(tmp_path) == []


def test_destination_appears_during_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out.png"
    real = imageio.encode_png

    def racing(f: io.BufferedWriter, samples: np.ndarray, **kwargs: object) -> None:
        dest.write_bytes(b"someone else")
        real(f, samples)

    monkeypatch.setattr(imageio, "encode_png", racing)
    with pytest.raises(ImageError, match="exists"):
        write_png(dest, rand((3, 3, 3), np.uint16))
    assert dest.read_bytes() == b"someone else"
    assert files_in(tmp_path) == ["out.png"]


def test_no_hard_links_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(imageio.os, "link", no_link)
    arr = rand((3, 3, 3))
    dest = write_png(tmp_path / "out.png", arr)
    np.testing.assert_array_equal(read_image(dest).pixels, arr)
    assert files_in(tmp_path) == ["out.png"]
    with pytest.raises(ImageError, match="exists"):
        write_png(dest, arr)


def test_destination_is_directory(tmp_path: Path) -> None:
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageError, match="directory"):
        write_png(tmp_path / "d.png", rand((2, 2, 3)), overwrite=True)


def test_write_png_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.uint16))
    assert files_in(tmp_path) == []


# ------------------------------------------------------------------------------------------
# find_images (edsr.io.datasets: scanning folders for images)
# ------------------------------------------------------------------------------------------


def test_find_images(tmp_path: Path) -> None:
    for rel in [
        "b.png",
        "a.JPG",
        "sub/z.webp",
        "sub/deeper/c.tiff",
        "a2/x.bmp",
        "notes.txt",
        ".hidden.png",
        ".cache/d.png",
        "sub/.git/e.png",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a.JPG",
        "a2/x.bmp",
        "b.png",
        "sub/deeper/c.tiff",
        "sub/z.webp",
    ]
    # Explicit files are kept whatever their suffix, in the order given; duplicates dropped.
    explicit = find_images([tmp_path / "notes.txt", tmp_path / "b.png", tmp_path])
    assert explicit[:3] == [tmp_path / "notes.txt", tmp_path / "b.png", tmp_path / "a.JPG"]
    assert len(explicit) == 6


def test_find_images_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no such file") as err:
        find_images([tmp_path / "missing"])
    assert_one_line_naming(err, tmp_path / "missing")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    (empty / ".hidden" / "x.png").write_bytes(b"")
    (empty / "readme.txt").write_text("hi")
    with pytest.raises(ImageError, match="no images") as err:
        find_images([empty])
    assert_one_line_naming(err, empty)


def test_find_images_real_data() -> None:
    assert find_images([DATA / "Set5"]) == SET5


# ------------------------------------------------------------------------------------------
# Animated GIF and multi-page TIFF: the first frame, one warning
# ------------------------------------------------------------------------------------------


def frames(n: int) -> list[PIL.Image.Image]:
    # Distinct flat colours, so which frame was read is plain from any pixel.
    return [PIL.Image.new("RGB", (6, 4), (40 * i, 255 - 40 * i, 7)) for i in range(n)]


@pytest.mark.parametrize(
    ("suffix", "kind"), [(".gif", "animated GIF"), (".tif", "multi-page TIFF")]
)
def test_first_frame_with_one_warning(tmp_path: Path, suffix: str, kind: str) -> None:
    first, *rest = frames(3)
    path = tmp_path / f"anim{suffix}"
    first.save(path, save_all=True, append_images=rest)
    with PIL.Image.open(path) as im:
        assert im.n_frames == 3  # the file really holds three
    with pytest.warns(UserWarning) as record:
        got = read_image(path)
    assert [str(w.message) for w in record] == [f"{path}: {kind} with 3 frames; using the first"]
    assert got.pixels.shape == (4, 6, 3)
    np.testing.assert_array_equal(got.pixels[0, 0], (0, 255, 7))


def test_single_frame_gif_reads_without_warning(tmp_path: Path) -> None:
    path = tmp_path / "still.gif"
    frames(1)[0].save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_image(path)
    np.testing.assert_array_equal(got.pixels[2, 3], (0, 255, 7))
    assert find_images([tmp_path]) == [path]  # a folder scan takes GIFs


# ------------------------------------------------------------------------------------------
# ICC colour profiles
# ------------------------------------------------------------------------------------------


def srgb_profile() -> bytes:
    return PIL.ImageCms.ImageCmsProfile(PIL.ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_round_trips_byte_for_byte(tmp_path: Path, suffix: str) -> None:
    icc = srgb_profile()
    src = tmp_path / f"in{suffix}"
    PIL.Image.fromarray(rand((8, 8, 3))).save(src, icc_profile=icc)
    img = read_image(src)
    assert img.icc_profile == icc
    out = write_image(tmp_path / f"out{suffix}", img)
    with PIL.Image.open(out) as im:  # Pillow, not this package, reads the written profile
        assert im.info.get("icc_profile") == icc
    assert read_image(out).icc_profile == icc


def test_no_icc_profile_none_written(tmp_path: Path) -> None:
    img = read_image(SET5[0])
    assert img.icc_profile is None
    for suffix in (".png", ".jpg"):
        with PIL.Image.open(write_image(tmp_path / f"o{suffix}", img)) as im:
            assert "icc_profile" not in im.info


def test_cmyk_profile_is_not_carried_to_rgb(tmp_path: Path) -> None:
    # The CMYK pixels become RGB; a CMYK profile would then describe data that is not there.
    cmyk_profile = bytearray(srgb_profile())
    cmyk_profile[16:20] = b"CMYK"
    PIL.Image.new("CMYK", (4, 4)).save(tmp_path / "c.tif", icc_profile=bytes(cmyk_profile))
    assert read_image(tmp_path / "c.tif").icc_profile is None


def test_image_rejects_a_non_bytes_profile() -> None:
    with pytest.raises(ValueError, match="icc_profile"):
        Image(rand((2, 2, 3)), icc_profile="sRGB")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Bytes and streams (the server's way in and out)
# ------------------------------------------------------------------------------------------


def test_read_image_from_bytes_and_streams() -> None:
    data = SET5[0].read_bytes()
    ref = read_image(SET5[0]).pixels
    np.testing.assert_array_equal(read_image(data).pixels, ref)
    np.testing.assert_array_equal(read_image(io.BytesIO(data)).pixels, ref)
    with pytest.raises(ImageError, match=r"^upload\.png: .*truncated"):
        read_image(data[: len(data) // 2], name="upload.png")
    with pytest.raises(ImageError, match=r"^the image: not an image"):
        read_image(b"hello, not a picture")
    with pytest.raises(ImageError, match="empty"):
        read_image(b"")


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_write_image_to_a_stream_reduces_16bit_when_asked(fmt: str) -> None:
    # 8x8 blocks of one colour: lossy codecs keep them close.
    pixels = np.repeat(np.repeat(rand((2, 2, 3), np.uint16), 8, axis=0), 8, axis=1)
    alpha = np.full((16, 16), 65535, np.uint16)
    alpha[:, 8:] = 32896  # 128 in 8 bits
    image = Image(pixels, alpha if fmt == "webp" else None)
    with pytest.raises(ImageError, match=r"^the image: .*16-bit"):
        write_image(io.BytesIO(), image, format=fmt)
    buf = io.BytesIO()
    write_image(buf, image, format=fmt, reduce_to_8bit=True)
    with PIL.Image.open(io.BytesIO(buf.getvalue())) as im:
        assert im.format == fmt.upper()
        got = np.array(im)
    expected = ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.abs(got[..., :3].astype(int) - expected).mean() < 8
    if fmt == "webp":
        np.testing.assert_array_equal(got[..., 3], to_8bit(alpha))


def test_write_image_format_overrides_suffix(tmp_path: Path) -> None:
    out = write_image(tmp_path / "result.bin", Image(rand((8, 8, 3))), format=".jpg")
    with PIL.Image.open(out) as im:
        assert im.format == "JPEG"
    with pytest.raises(ValueError, match="format"):
        write_image(io.BytesIO(), Image(rand((2, 2, 3))))
    with pytest.raises(ImageError, match=r"'\.gif' files; use one of these suffixes") as err:
        write_image(tmp_path / "x.gif", Image(rand((2, 2, 3))))
    assert ".gif" not in str(err.value).split("suffixes:")[1]
