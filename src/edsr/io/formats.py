"""The image formats this package reads and writes, as tables: suffixes, Pillow's names, the
writers' options and size limits, and how images of several frames are taken. Reading and
writing them is :mod:`edsr.io.image`'s work."""

from __future__ import annotations

from typing import NamedTuple

import PIL.Image

from edsr.io.png import PNG_MAX_SIDE

__all__ = [
    "IMAGE_EXTENSIONS",
    "KEEPS_ICC",
    "MAX_PIXELS_ENV",
    "OUTPUT_EXTENSIONS",
    "PILLOW_FORMATS",
    "PIL_WRITERS",
    "PilWriter",
    "first_frame_note",
    "frame_count",
    "max_side",
    "normal_suffix",
]

#: The suffixes of the images this package reads: what a folder scan takes, what the CLI and the
#: server accept. Animated GIF and multi-page TIFF: the first frame, with a warning.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)

#: Pillow's names for the formats of IMAGE_EXTENSIONS: MPO is what Pillow calls many camera
#: JPEGs, DIB a BMP without its file header.
PILLOW_FORMATS: frozenset[str] = frozenset(
    {"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "WEBP", "GIF"}
)

#: Environment variable that, when set, replaces ``PIL.Image.MAX_IMAGE_PIXELS`` at read time.
MAX_PIXELS_ENV = "EDSR_MAX_IMAGE_PIXELS"


class PilWriter(NamedTuple):
    """How Pillow writes one output format."""

    format: str  # Pillow's name
    options: dict[str, object]  # for Image.save
    keeps_alpha: bool
    largest: int  # width or height


#: Output formats other than PNG, written by Pillow (8-bit only). The save options favour
#: quality: an upscaled image is the product, so Pillow's default JPEG quality (75, 4:2:0 chroma)
#: is too lossy. Pillow reads 32-bit BMPs back without their alpha, so BMP keeps none.
PIL_WRITERS: dict[str, PilWriter] = {
    ".jpg": PilWriter("JPEG", {"quality": 95, "subsampling": 0}, False, 65535),
    ".jpeg": PilWriter("JPEG", {"quality": 95, "subsampling": 0}, False, 65535),
    ".webp": PilWriter("WEBP", {"quality": 95}, True, 16383),
    ".bmp": PilWriter("BMP", {}, False, 2**31 - 1),
    ".tif": PilWriter("TIFF", {}, True, 2**31 - 1),
    ".tiff": PilWriter("TIFF", {}, True, 2**31 - 1),
}
#: Pillow writers with an icc_profile option (PNG keeps it through edsr.io.png).
KEEPS_ICC = {"JPEG", "WEBP", "TIFF"}

#: The suffixes write_image writes (the format follows the suffix).
OUTPUT_EXTENSIONS: frozenset[str] = frozenset({".png", *PIL_WRITERS})


def normal_suffix(name: str) -> str:
    """'.jpg' for 'jpg', 'JPG' or '.jpg'; format names are accepted for suffixes."""
    return "." + name.lower().lstrip(".")


def max_side(suffix: str) -> int:
    """Largest width or height a file with this suffix (or format name: ``"webp"``) can hold;
    PNG's for unknown suffixes."""
    entry = PIL_WRITERS.get(normal_suffix(suffix))
    return entry.largest if entry is not None else PNG_MAX_SIDE


def first_frame_note(fmt: str, frames: int) -> str:
    """The one wording of the policy for images of several frames, wherever they come in."""
    kind = "multi-page TIFF" if fmt == "TIFF" else f"animated {fmt}"
    return f"{kind} with {frames} frames; using the first"


def frame_count(im: PIL.Image.Image) -> int:
    """Frames of an animated or multi-page image; 1 for a camera JPEG's MPO extra pictures,
    which are previews or stereo views of the first, not frames to be warned about."""
    if im.format == "MPO":
        return 1
    return int(getattr(im, "n_frames", 1))
