"""The one table of data set files: where each is published, how big it is, its checksum, and
how its archive maps onto the folders ``edsr train`` and ``edsr eval`` read.

Checksums are the ones published by the hosts or by well-known loaders, never computed here
from a copy of unknown origin; the ``source`` of each says which. Where only MD5 is published,
MD5 it is. A file without a published checksum has ``checksum=None`` and is checked by its
size only (``edsr data list`` says "unverified"). Sizes are exact bytes where published, else
None (the server's length is then checked instead).

Sets published only as single image files in a repository at a pinned commit (T91, BSD200)
are checked image by image, by a hash of the decoded pixels (``images.tsv`` beside this file,
one line per image): the repositories publish no checksum, and the pixels, unlike the file
bytes, are the same in the source BMP and in the PNG made from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edsr.io.download import Checksum

_DIV2K = "https://data.vision.ee.ethz.ch/cvl/DIV2K/"
_SNU = "https://cv.snu.ac.kr/research/EDSR/"
_TFDS = "tensorflow-datasets url_checksums/div2k.txt (SHA-256, size)"
_TORCHSR = "torchSR's dataset definitions (MD5 only; size not published)"


@dataclass(frozen=True)
class Archive:
    """One downloadable file and the part of it a data set takes.

    ``members`` maps archive path prefixes to destination prefixes under the data root
    (``("benchmark/Set5/", "Set5/")``); members under no listed prefix are not extracted.
    """

    filename: str
    urls: tuple[str, ...]
    size: int | None
    checksum: Checksum | None
    source: str
    members: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ImageFile:
    """One image of a set published file by file: ``path`` under the set's base addresses,
    stored as ``FOLDER/HR/{name}.png``, checked by ``pixels`` (see ``images.pixel_digest``)."""

    name: str
    path: str
    width: int
    height: int
    pixels: str


@dataclass(frozen=True)
class ImageFiles:
    """A set published as single image files, each fetched from ``base_urls[i] + path`` and
    checked by the hash of its decoded pixels."""

    base_urls: tuple[str, ...]
    source: str
    files: tuple[ImageFile, ...]


#: The pixel hashes, one line per image: set, name, path, width, height, pixel SHA-256.
IMAGE_TABLE = Path(__file__).with_name("images.tsv")


def _image_table() -> dict[str, tuple[ImageFile, ...]]:
    rows: dict[str, list[ImageFile]] = {}
    for line in IMAGE_TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            table, name, path, width, height, pixels = line.split("\t")
            image = ImageFile(name, path, int(width), int(height), pixels)
            rows.setdefault(table, []).append(image)
    return {k: tuple(v) for k, v in rows.items()}


@dataclass(frozen=True)
class DataSetEntry:
    """A data set ``edsr data download NAME`` knows: its archives and the folder they fill.

    ``folder`` (under the data root) is what ``edsr train --train`` / ``edsr eval --data``
    take. ``manual`` is set, and ``archives`` empty, for a set with no public download: it
    says how to get it. ``images`` is set, and ``archives`` empty, for a set published image
    by image; they go to ``FOLDER/HR/``.
    """

    name: str
    description: str
    folder: str
    archives: tuple[Archive, ...]
    manual: str | None = None
    images: ImageFiles | None = None


def _div2k(split: str, what: str, size: int, sha256: str) -> Archive:
    name = f"DIV2K_{split}_{what}"
    folder = name if what == "HR" else f"DIV2K_{split}_LR_bicubic/X{what[-1]}"
    return Archive(
        filename=f"{name}.zip",
        urls=(f"{_DIV2K}{name}.zip",),
        size=size,
        checksum=Checksum("sha256", sha256),
        source=_TFDS,
        members=((f"{folder}/", f"DIV2K/{folder}/"),),
    )


_DIV2K_VALID = (
    _div2k(
        "valid",
        "HR",
        448993893,
        "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
    ),
    _div2k(
        "valid",
        "LR_bicubic_X2",
        117763600,
        "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57",
    ),
    _div2k(
        "valid",
        "LR_bicubic_X3",
        54513392,
        "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3",
    ),
    _div2k(
        "valid",
        "LR_bicubic_X4",
        31505881,
        "a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553",
    ),
)
_DIV2K_TRAIN = (
    _div2k(
        "train",
        "HR",
        3530603713,
        "9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
    ),
    _div2k(
        "train",
        "LR_bicubic_X2",
        925390592,
        "a53a424317575838dadce4bcd97cf7b744d6855f43740ed5f0245af3cf4bd850",
    ),
    _div2k(
        "train",
        "LR_bicubic_X3",
        427847282,
        "ad5c8e5507e2765823d3c2c5bd0934842efcd487c5370604c224090898b3163a",
    ),
    _div2k(
        "train",
        "LR_bicubic_X4",
        246914039,
        "f006b837f4eb52b82909aa01478e6d6d199eefce932179491d0c9dbb706dde3a",
    ),
)

# Both sets, as BMP (T91) and PNG (BSD200), in one repository; the commit pins the bytes.
_DCSCN = (
    "https://raw.githubusercontent.com/jiny2001/dcscn-super-resolution/"
    "d382bc30d41c94ac72f8cb148d61cc4864b3b380/"
)
_DCSCN_SOURCE = (
    "jiny2001/dcscn-super-resolution at d382bc30 ({}); pixel hashes computed from PNG copies "
    "checked pixel by pixel against it"
)

_IMAGES = _image_table()

_BENCHMARK_MD5 = Checksum("md5", "4ace41d33c2384b97e6b320cd0afd6ba")


def _benchmark(name: str, description: str) -> DataSetEntry:
    # The EDSR authors' benchmark.tar holds Set5, Set14, B100 and Urban100 (HR and MATLAB
    # bicubic LR x2/x3/x4); one download serves all four.
    archive = Archive(
        filename="benchmark.tar",
        urls=(f"{_SNU}benchmark.tar",),
        size=None,
        checksum=_BENCHMARK_MD5,
        source=_TORCHSR,
        members=((f"benchmark/{name}/", f"{name}/"),),
    )
    return DataSetEntry(name, description, name, (archive,))


CATALOGUE: tuple[DataSetEntry, ...] = (
    DataSetEntry(
        "DIV2K",
        "800 training + 100 validation 2K images, HR and bicubic LR x2/x3/x4 (the paper's data)",
        "DIV2K",
        _DIV2K_TRAIN + _DIV2K_VALID,
    ),
    DataSetEntry(
        "DIV2K-valid",
        "DIV2K's 100 validation images only (0801-0900), HR and bicubic LR x2/x3/x4",
        "DIV2K",
        _DIV2K_VALID,
    ),
    DataSetEntry(
        "Flickr2K",
        "2,650 2K images collected by the EDSR authors, HR and bicubic LR x2/x3/x4",
        "Flickr2K",
        (
            Archive(
                filename="Flickr2K.tar",
                urls=(f"{_SNU}Flickr2K.tar",),
                size=None,
                checksum=Checksum("md5", "5d3f39443d5e9489bff8963f8f26cb03"),
                source=_TORCHSR,
                # Renamed on the way in to the benchmark layout (HR/, LR_bicubic/X{s}/),
                # which the data set readers know; the "unknown" degradation track is left.
                members=(
                    ("Flickr2K/Flickr2K_HR/", "Flickr2K/HR/"),
                    ("Flickr2K/Flickr2K_LR_bicubic/", "Flickr2K/LR_bicubic/"),
                ),
            ),
        ),
    ),
    _benchmark("Set5", "5 images (Bevilacqua et al. 2012), HR and bicubic LR x2/x3/x4"),
    _benchmark("Set14", "14 images (Zeyde et al. 2010), HR and bicubic LR x2/x3/x4"),
    _benchmark("B100", "100 BSD300 test images (Martin et al. 2001), HR and bicubic LR x2/x3/x4"),
    _benchmark("Urban100", "100 urban scenes (Huang et al. 2015), HR and bicubic LR x2/x3/x4"),
    DataSetEntry(
        "T91",
        "91 training images (Yang et al. 2010), HR only: the LR images are made when training",
        "T91",
        (),
        images=ImageFiles((_DCSCN,), _DCSCN_SOURCE.format("data/yang91/*.bmp"), _IMAGES["T91"]),
    ),
    DataSetEntry(
        "BSD200",
        "the 200 BSDS300 training images (Martin et al. 2001), HR only; with T91 the 291 set",
        "BSD200",
        (),
        images=ImageFiles((_DCSCN,), _DCSCN_SOURCE.format("data/bsd200/*.png"), _IMAGES["BSD200"]),
    ),
    DataSetEntry(
        "Manga109",
        "109 manga volumes' covers and pages (Matsui et al. 2017)",
        "Manga109",
        (),
        manual=(
            "Manga109 is given out only on request (the application form at "
            "http://www.manga109.org); put its images in {folder}/HR/ and run "
            "`edsr downscale {folder}/HR -o {folder} --scale 2 3 4` for the LR images"
        ),
    ),
)

#: Name -> entry, for lookup (``edsr data download NAME``).
DATASETS: dict[str, DataSetEntry] = {e.name: e for e in CATALOGUE}
