"""A folder with no image in it is an error wherever a folder is read, in one wording from
one place (`edsr.io.datasets.no_images_error`): it names the folder and every layout tried."""

from __future__ import annotations

import pytest

from conftest import DATA
from edsr.cli import main
from edsr.io.image import IMAGE_EXTENSIONS

LAYOUTS = ("DIV2K_{split}_HR/ (DIV2K layout)", "HR/ (benchmark layout)", "(a flat folder)")


@pytest.fixture
def empty(tmp_path):
    """Not quite empty: a subfolder, a text file and a hidden image, none of which count."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("no pictures here")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edsr: error: no images in ")
    assert all(ext in err for ext in IMAGE_EXTENSIONS)
    return err


@pytest.mark.parametrize(
    ("what", "split", "argv"),
    [
        ("data", "valid", ["eval", "--model", "bicubic", "--scale", "2", "--data", "{d}"]),
        ("training", "train", ["train", "--preset", "edsr-baseline", "--scale", "2",
                               "--train", "{d}", "--out", "{o}"]),
        ("validation", "valid", ["train", "--preset", "edsr-baseline", "--scale", "2",
                                 "--train", str(DATA / "Set5"), "--val", "{d}", "--out", "{o}"]),
    ],
)  # fmt: skip
def test_data_folders_name_the_folder_and_every_layout(capsys, empty, tmp_path, what, split, argv):
    argv = [a.format(d=empty, o=tmp_path / "run") for a in argv]
    err = _error(capsys, argv)
    assert f"no images in {what} directory {empty}: tried " in err
    assert all(layout.format(split=split) in err for layout in LAYOUTS)
    assert not (tmp_path / "run").exists()  # refused before any work


def test_upscale_names_the_folder_and_the_layout(capsys, empty, tmp_path):
    err = _error(capsys, ["upscale", str(empty), "-o", str(tmp_path / "out")])
    assert f"no images in input directory {empty}: tried image files in it or its subfolders" in err
