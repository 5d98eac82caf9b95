"""The default route: with no model named, a JPEG goes to the JPEG-aware model for its quality
band and everything else to the clean default, the same through every door, and each door says
which model ran and why."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import DATA
from edsr import EdsrError, defaults, load_model, upscale
from edsr.route import Router

JPEG, CLEAN = defaults.JPEG_MODEL, "mdsr-baseline-291"
HQ = defaults.JPEG_ROUTE[-1][1]


def _band(q: int) -> str:
    """The model a JPEG at quality ``q`` should get, read from the bounds table directly."""
    return next((name for bound, name in defaults.JPEG_ROUTE if q < bound), CLEAN)


@pytest.fixture(scope="module")
def photo():
    return Image.open(DATA / "Set5" / "HR" / "bird.png").convert("RGB").crop((60, 60, 124, 116))


def _jpeg(img, quality, **kw):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, **kw)
    buf.seek(0)
    return Image.open(buf)


@pytest.fixture(scope="module")
def models():
    return {name: load_model(name, device="cpu") for name in (CLEAN, *defaults.route_models())}


def test_the_rule():
    t = defaults.JPEG_CLEAN_QUALITY
    assert defaults.JPEG_ROUTE[-1] == (t, HQ) and JPEG in defaults.route_models()
    bounds = [b for b, _ in defaults.JPEG_ROUTE]
    assert bounds == sorted(set(bounds)), "bounds rise"
    assert defaults.route(None) == (None, "not a JPEG")
    (first, name), *rest = defaults.JPEG_ROUTE
    assert defaults.route(first - 1) == (name, f"a JPEG at quality {first - 1} (below {first})")
    assert defaults.route(1)[0] == name
    low = first
    for bound, name in rest:  # each band from the bound below it to one below its own
        for q in (low, bound - 1):
            assert defaults.route(q) == (name, f"a JPEG at quality {q} ({low}-{bound - 1})")
        low = bound
    assert defaults.route(t)[0] is None and "nearly lossless" in defaults.route(t)[1]
    assert defaults.route(100)[0] is None
    assert defaults.route(None, "jpeg")[0] == JPEG and defaults.route(None, "jpeg:75")[0] == JPEG
    assert defaults.route(40, "clean")[0] is None
    with pytest.raises(ValueError, match="'jpeg' or 'clean'"):
        defaults.route(None, "png")


def test_files_are_routed_by_type_and_quality_read_from_the_file(tmp_path, photo):
    router = Router(device="cpu", progress=False)
    photo.save(tmp_path / "a.png")
    assert router.choose(tmp_path / "a.png") == (CLEAN, "not a JPEG")
    bounds = [b for b, _ in defaults.JPEG_ROUTE]
    for q in sorted({40, 60, 75, 90, 91, 94, 95, 98, 100} | {b - 1 for b in bounds} | set(bounds)):
        for sub in (2, 0):  # 4:2:0 and 4:4:4 chroma
            path = tmp_path / f"q{q}-{sub}.jpg"
            photo.save(path, quality=q, subsampling=sub)
            name, why = router.choose(path)
            assert name == _band(q), (q, why)
            assert f"quality {q}" in why
    # a PNG holding a JPEG's pixels is not told apart; the caller says so
    _jpeg(photo, 50).save(tmp_path / "screenshot.png")
    assert router.choose(tmp_path / "screenshot.png")[0] == CLEAN
    assert Router(degradation="jpeg").choose(tmp_path / "screenshot.png")[0] == JPEG


def test_python_door_routes_pillow_jpegs_and_arrays_say_what_they_are(photo, models):
    jpeg = _jpeg(photo, 70)
    routed = np.asarray(upscale(jpeg, scale=2, precision="fp32"))
    chosen = np.asarray(upscale(jpeg, models[_band(70)], 2, precision="fp32"))
    other = np.asarray(upscale(jpeg, models[CLEAN], 2, precision="fp32"))
    assert np.array_equal(routed, chosen) and not np.array_equal(routed, other)
    png = np.asarray(upscale(photo, scale=2, precision="fp32"))
    assert np.array_equal(png, np.asarray(upscale(photo, models[CLEAN], 2, precision="fp32")))
    arr = np.asarray(jpeg.convert("RGB"))
    assert np.array_equal(upscale(arr, scale=2, precision="fp32"), other), "arrays stay clean"
    said = upscale(arr, scale=2, precision="fp32", degradation="jpeg")
    assert np.array_equal(said, upscale(arr, models[JPEG], 2, precision="fp32"))
    with pytest.raises(EdsrError, match="leave it out when you give a model"):
        upscale(arr, models[CLEAN], 2, degradation="jpeg")


def test_the_cli_says_which_model_ran_and_why(tmp_path, photo, models):
    photo.save(tmp_path / "photo.jpg", quality=75)
    photo.save(tmp_path / "screen.png")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "edsr", "upscale", tmp_path / "photo.jpg", tmp_path / "screen.png",
         "-o", out, "--scale", "2", "-v", "--quiet", "--precision", "fp32"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"{tmp_path / 'photo.jpg'}: {_band(75)}: {defaults.route(75)[1]}" in lines
    assert f"{tmp_path / 'screen.png'}: {CLEAN}: not a JPEG" in lines
    # the same pixels edsr.upscale gives with each model named
    got = np.asarray(Image.open(out / "photo_x2.png"))
    want = upscale(Image.open(tmp_path / "photo.jpg"), models[_band(75)], 2, precision="fp32")
    assert np.array_equal(got, np.asarray(want))
    got = np.asarray(Image.open(out / "screen_x2.png"))
    assert np.array_equal(got, np.asarray(upscale(photo, models[CLEAN], 2, precision="fp32")))


def test_the_server_routes_and_says_why_in_its_headers(photo):
    from fastapi.testclient import TestClient

    from edsr.serve import ServeConfig, create_app, load_models

    app = create_app(load_models([], progress=False), ServeConfig(workers=1), route=True)
    cases = [
        ("JPEG", {"quality": 70}, _band(70)),
        ("JPEG", {"quality": 90}, _band(90)),
        ("JPEG", {"quality": 97}, CLEAN),
        ("PNG", {}, CLEAN),
    ]
    with TestClient(app) as client:
        for fmt, kw, want in cases:
            buf = io.BytesIO()
            photo.save(buf, fmt, **kw)
            r = client.post(
                "/v1/upscale", files={"image": ("a", buf.getvalue())}, data={"scale": "2"}
            )
            assert r.status_code == 200, r.text
            assert r.headers["x-model"] == want
            assert ("quality" in r.headers["x-model-reason"]) == (fmt == "JPEG")
        named = client.post(
            "/v1/upscale",
            files={"image": ("a", buf.getvalue())},
            data={"scale": "2", "model": JPEG},
        )
        assert named.headers["x-model"] == JPEG
        assert named.headers["x-model-reason"] == "named by the request"
