"""The out-of-the-box job: bundled model on bundled samples, comparison PNGs, PSNR vs bicubic."""

import numpy as np
import pytest
from PIL import Image

from edsr import EdsrError
from edsr.cli import main
from edsr.demo import SAMPLES, pick_crop, run_demo
from edsr.weights import load_model


@pytest.fixture(scope="module")
def bundled():
    return load_model()


def test_bundled_model_beats_bicubic_on_every_sample(tmp_path, bundled):
    results = run_demo(bundled, tmp_path, scale=4)
    assert sorted(r.image for r in results) == sorted(p.stem for p in SAMPLES.glob("*.png"))
    for r in results:
        assert r.psnr_model > r.psnr_bicubic + 0.3, r
        hr = Image.open(SAMPLES / f"{r.image}.png")
        w = hr.width - hr.width % 4
        png = Image.open(r.comparison)
        assert png.format == "PNG" and png.width == 3 * w + 4 * 8 and png.height > hr.height


def test_demo_rerun_replaces_only_its_own_files(tmp_path, bundled):
    # Issue 13.3: the demo owns its output names, so running it twice just works.
    other = tmp_path / "notes.png"
    other.write_bytes(b"not the demo's")
    first = run_demo(bundled, tmp_path, scale=2)
    for r in first:
        r.comparison.write_bytes(b"stale")
    again = run_demo(bundled, tmp_path, scale=2)
    assert [r.comparison for r in again] == [r.comparison for r in first]
    assert all(Image.open(r.comparison).format == "PNG" for r in again)
    assert other.read_bytes() == b"not the demo's"
    with pytest.raises(EdsrError, match="not x5"):
        run_demo(bundled, tmp_path, scale=5)


def test_pick_crop_finds_where_the_error_is():
    ref = np.zeros((120, 90, 3), np.uint8)
    worse = ref.copy()
    worse[70:90, 10:30] = 200
    y, x = pick_crop(ref, worse, 20)
    assert 60 <= y <= 70 and 0 <= x <= 10


def test_cli_demo(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--scale", "3"]) == 0
    out = capsys.readouterr().out
    assert (
        "mean gain over bicubic: +" in out and len(list(tmp_path.glob("*_x3_comparison.png"))) == 2
    )
    assert main(["demo", "-o", str(tmp_path), "--scale", "3"]) == 0


def test_the_jpeg_case_shows_the_route_beating_the_clean_model(tmp_path, bundled):
    from edsr import defaults
    from edsr.demo import JPEG_QUALITY, run_jpeg_case

    case = run_jpeg_case(bundled, tmp_path, scale=4, model_name="mdsr-baseline-291")
    assert case is not None and case.quality == JPEG_QUALITY
    assert (
        case.route_model == defaults.route(JPEG_QUALITY)[0]
        and f"quality {JPEG_QUALITY}" in case.route_why
    )
    assert case.psnr_route > case.psnr_model > case.psnr_bicubic, case
    png = Image.open(case.comparison)
    hr = Image.open(SAMPLES / "zebra.png")
    assert png.width == 4 * (hr.width - hr.width % 4) + 5 * 8  # four panels
    # a folder of the user's own without the sample: no JPEG case, no error
    assert run_jpeg_case(bundled, tmp_path, scale=4, samples=tmp_path) is None


def test_cli_demo_says_the_jpeg_case(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "JPEG case: zebra x2, LR saved as JPEG q60" in out
    assert (tmp_path / "zebra_x2_jpeg60_comparison.png").is_file()
