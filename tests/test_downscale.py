"""`edsr downscale`: MATLAB-exact LR images in the benchmark layout, from the one LR maker that
evaluation and training use, so a folder made by it scores exactly what the built-in LR
making scores."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import DATA
from edsr.cli import main
from edsr.datasets import downscale_folder
from edsr.datasets.downscale import MANIFEST
from edsr.evaluate import evaluate
from edsr.io.image import read_image, to_8bit
from edsr.resize import bicubic_lr, imresize_np
from edsr.training.data import PatchDataset

SET5 = DATA / "Set5" / "HR"
NAMES = ["baby", "bird", "butterfly", "head", "woman"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("s5")
    assert main(["downscale", str(SET5), "-o", str(out), "--scale", "2", "3", "4", "--jobs", "1",
                 "--quiet"]) == 0  # fmt: skip
    return out


def test_layout_and_pixels(made):
    assert sorted(p.name for p in (made / "HR").iterdir()) == [f"{n}.png" for n in NAMES]
    for n in NAMES:
        assert (made / "HR" / f"{n}.png").read_bytes() == (SET5 / f"{n}.png").read_bytes()
        hr = to_8bit(read_image(SET5 / f"{n}.png").pixels)
        for s in (2, 3, 4):
            lr = read_image(made / "LR_bicubic" / f"X{s}" / f"{n}x{s}.png").pixels
            h, w = hr.shape[0] // s, hr.shape[1] // s
            assert lr.shape == (h, w, 3)
            # MATLAB's imresize of the HR image cropped to a multiple of the scale.
            assert np.array_equal(lr, imresize_np(hr[: h * s, : w * s], 1 / s))


def _same_scores(made, scales):
    built_in = evaluate("bicubic", [SET5.parent], scales, progress=False)
    from_files = evaluate("bicubic", [made], scales, progress=False)
    for a, b in zip(built_in["results"], from_files["results"], strict=True):
        assert a["per_image"] == b["per_image"] and a["psnr"] == b["psnr"]
    return [round(r["psnr"], 2) for r in from_files["results"]]


def test_eval_on_the_made_folder_equals_the_built_in_lr_making(made):
    """`edsr eval --model bicubic`: the LR files read back score exactly as LR made in memory,
    image by image; Set5 x4 is the published bicubic 28.43 dB."""
    assert _same_scores(made, [4]) == [28.43]


@pytest.mark.slow
def test_eval_on_the_made_folder_equals_the_built_in_lr_making_x2_x3_x4(made):
    assert _same_scores(made, [2, 3, 4]) == [33.68, 30.40, 28.43]  # the published bicubic row


def test_training_reads_the_same_lr_it_would_make(made, tmp_path):
    """Training on the made folder (LR files read) and on the HR folder alone (LR made by
    bicubic_lr) gives the same arrays."""
    kw = dict(patch_size=8, progress=False)
    flat = tmp_path / "flat"
    shutil.copytree(SET5, flat)
    a = PatchDataset([made], [2, 3], cache_dir=tmp_path / "c1", **kw)
    b = PatchDataset([flat], [2, 3], cache_dir=tmp_path / "c2", **kw)
    assert a.names == b.names
    for s in (2, 3):
        for x, y in zip(a.lr[s], b.lr[s], strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))


def test_rerun_skips_what_is_done_and_redoes_what_changed(tmp_path):
    src = tmp_path / "hr"
    shutil.copytree(SET5, src)
    out = tmp_path / "out"
    first = downscale_folder(src, out, [3], jobs=1, progress=False)
    assert (first.written, first.skipped, first.failed) == (5, 0, [])
    lr_file = out / "LR_bicubic" / "X3" / "birdx3.png"
    stamp = lr_file.stat().st_mtime_ns
    again = downscale_folder(src, out, [3], jobs=1, progress=False)
    assert (again.written, again.skipped) == (0, 5) and lr_file.stat().st_mtime_ns == stamp
    # A changed HR image (same name), a deleted LR file and a new scale are redone.
    shutil.copy(SET5 / "head.png", src / "baby.png")
    (out / "LR_bicubic" / "X3" / "womanx3.png").unlink()
    third = downscale_folder(src, out, [3], jobs=1, progress=False)
    assert (third.written, third.skipped) == (2, 3)
    baby = read_image(out / "LR_bicubic" / "X3" / "babyx3.png").pixels
    assert np.array_equal(baby, bicubic_lr(read_image(SET5 / "head.png").pixels, 3))
    fourth = downscale_folder(src, out, [3, 4], jobs=1, progress=False)
    assert (fourth.written, fourth.skipped) == (5, 0)
    records = json.loads((out / MANIFEST).read_text())["images"]
    assert sorted(records) == NAMES and records["bird"]["lr_sizes"]["4"] == [72, 72]


@pytest.mark.slow
def test_parallel_run_writes_the_same_files(made, tmp_path):
    out = tmp_path / "par"
    report = downscale_folder(SET5, out, [2, 3, 4], jobs=2, progress=False)
    assert report.written == 5
    for s in (2, 3, 4):
        for n in NAMES:
            name = f"X{s}/{n}x{s}.png"
            assert (out / "LR_bicubic" / name).read_bytes() == (
                made / "LR_bicubic" / name
            ).read_bytes()


def test_unreadable_image_is_reported_and_counted(tmp_path, capsys):
    src = tmp_path / "hr"
    src.mkdir()
    shutil.copy(SET5 / "bird.png", src)
    (src / "broken.png").write_bytes(b"not a png")
    code = main(["downscale", str(src), "-o", str(tmp_path / "o"), "--scale", "2", "--quiet",
                 "--jobs", "1"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 1 and "wrote 1 images; 0 already done; 1 refused" in out.out
    assert "broken.png" in out.out
