"""`edsr serve`: the HTTP API against the real app, served by uvicorn on 127.0.0.1.

Models are tiny (2 residual blocks, 16 features, random weights) so CPU inference takes
milliseconds; what is tested is the service around them. Slow paths (a full queue, the time
limit, a client that goes away) are made deterministic with a forward pre-hook, installed by
the test, that holds every forward pass until the test lets it go.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the 'serve' extra (fastapi)")
pytest.importorskip("uvicorn", reason="needs the 'serve' extra (uvicorn)")
pytest.importorskip("python_multipart", reason="needs the 'serve' extra (python-multipart)")
httpx = pytest.importorskip("httpx", reason="needs httpx (test extra)")

from edsr import save_model, upscale  # noqa: E402
from edsr.errors import EdsrError  # noqa: E402
from edsr.inference import plan_tiles  # noqa: E402
from edsr.models import EDSR, MDSR  # noqa: E402
from edsr.resize import imresize_np  # noqa: E402
from edsr.serve import ServeConfig, background_server, create_app, load_models  # noqa: E402
from edsr.weights import registry  # noqa: E402

MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 20_000


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("serve_models")
    torch.manual_seed(0)
    paths = {"tiny-x2": d / "tiny-x2.safetensors", "tiny-mdsr": d / "tiny-mdsr.safetensors"}
    save_model(EDSR(scale=2, n_resblocks=2, n_feats=16), paths["tiny-x2"])
    save_model(MDSR(scales=(2, 3), n_resblocks=2, n_feats=16), paths["tiny-mdsr"])
    return paths


def fresh_models(checkpoints):
    return load_models(
        [f"{checkpoints['tiny-x2']},{checkpoints['tiny-mdsr']}"], device="cpu", progress=False
    )


@pytest.fixture(scope="module")
def served(checkpoints):
    return fresh_models(checkpoints)


@pytest.fixture(scope="module")
def server(served, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_tmp")
    config = ServeConfig(
        max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, workers=2, queue=4, tmp_dir=str(tmp)
    )
    app = create_app(served, config)
    with background_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        client.tmp = tmp
        client.app = app
        yield client
    assert list(tmp.iterdir()) == [], "the server left files behind after shutdown"


def png_bytes(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, fmt)  # uint16 (H, W) is I;16, (H, W, 4) is RGBA
    return buf.getvalue()


def rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # smooth content with some texture, like a photo
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=2)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def post(client, data: bytes, name: str = "in.png", **fields):
    return client.post("/v1/upscale", files={"image": (name, data, "image/png")}, data=fields)


def decode(r) -> Image.Image:
    im = Image.open(io.BytesIO(r.content))
    im.load()
    return im


def assert_error(r, status: int, *needles: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for n in needles:
        assert n in body["error"], body["error"]
    return body


# ---------------------------------------------------------------------------------------------
# Small endpoints
# ---------------------------------------------------------------------------------------------


def test_healthz(server):
    r = server.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["models"] == ["tiny-x2", "tiny-mdsr"]
    assert body["workers"] == 2 and body["capacity"] == 6


def test_models_lists_loaded_models_and_registry_with_psnr(server):
    body = server.get("/v1/models").json()
    assert body["default"] == "tiny-x2"
    by_id = {m["id"]: m for m in body["models"]}
    assert by_id["tiny-x2"]["loaded"] and by_id["tiny-x2"]["scales"] == [2]
    assert by_id["tiny-mdsr"]["scales"] == [2, 3] and by_id["tiny-mdsr"]["arch"] == "mdsr"
    assert by_id["bicubic"]["scales"] == [2, 3]
    # every registry entry is listed, with its scales and its numbers
    specs = " ".join(f"--model {m.spec}" for m in server.app.state.server.models)
    for entry in registry.REGISTRY.values():
        m = by_id[entry.name]
        assert m["loaded"] is False and m["scales"] == list(entry.scales)
        assert len(m["psnr"]) == len(entry.metrics)
        # how to get it loaded: the models served now, and it
        assert m["load_with"] == f"edsr serve {specs} --model {entry.name}"
    assert "load_with" not in by_id["tiny-x2"] and "load_with" not in by_id["bicubic"]
    # a field that does not apply is left out, not null
    assert "precision" not in by_id["edsr-x2"] and by_id["tiny-x2"]["precision"]
    div2k = [p for p in by_id["edsr-baseline-x2"]["psnr"] if p["dataset"] == "DIV2K-val"]
    assert div2k[0]["psnr"] == pytest.approx(34.61) and div2k[0]["kind"] == "published"
    assert body["limits"]["max_upload_bytes"] == MAX_UPLOAD
    assert body["limits"]["max_pixels"] == MAX_PIXELS
    assert body["limits"]["max_uploads_per_client"] == 4  # the default: every limit is listed


def test_page_and_static_files(server):
    r = server.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in r.text
    for path, kind in [("/static/app.js", "javascript"), ("/static/style.css", "text/css")]:
        r = server.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path


def test_openapi_schema_lists_the_api_and_docs_are_served(server):
    r = server.get("/openapi.json")
    assert r.status_code == 200
    paths = r.json()["paths"]
    for path in ("/v1/upscale", "/v1/models", "/healthz", "/v1/progress/{job}"):
        assert path in paths, sorted(paths)
    upscale_body = paths["/v1/upscale"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upscale_body
    schemas = r.json()["components"]["schemas"]
    listing = paths["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]
    assert listing["schema"]["$ref"] == "#/components/schemas/ModelList"  # typed, not "object"
    assert {"id", "loaded", "load_with", "psnr"} <= set(schemas["ModelInfo"]["properties"])
    fields = schemas["UpscaleOptions"]["properties"]
    assert {"model", "scale", "ensemble", "format", "job"} <= set(fields)
    assert schemas["OutputFormat"]["enum"] == ["png", "jpeg", "webp"]
    docs = server.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    # the page's strict CSP would keep Swagger's scripts from loading
    assert "content-security-policy" not in docs.headers


def test_unknown_paths_and_methods_are_json(server):
    assert_error(server.get("/nope"), 404, "/nope")
    assert_error(server.get("/v1/upscale"), 405)
    assert_error(server.get("/v1/progress/doesnotexist"), 404, "unknown job")


# ---------------------------------------------------------------------------------------------
# Upscaling
# ---------------------------------------------------------------------------------------------


def test_upscale_png_equals_the_library(server, served):
    a = rgb(40, 30)
    r = post(server, png_bytes(a), name="photo.jpg", scale="2")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'inline; filename="photo_x2.png"'
    assert (r.headers["x-image-width"], r.headers["x-image-height"]) == ("80", "60")
    assert r.headers["x-model"] == "tiny-x2"
    out = np.asarray(decode(r))
    want = upscale(a, served[0].model, 2)
    assert out.shape == (60, 80, 3)
    assert np.abs(out.astype(int) - want).max() <= 1


def test_upscale_mdsr_scale_3_with_ensemble_and_formats(server, served):
    a = rgb(24, 20, seed=1)
    r = post(server, png_bytes(a), model="tiny-mdsr", scale="3", ensemble="true")
    assert r.status_code == 200, r.text
    want = upscale(a, served[1].model, 3, ensemble=True)
    assert np.abs(np.asarray(decode(r)).astype(int) - want).max() <= 1
    for fmt, media, pil in [("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")]:
        r = post(server, png_bytes(a), model="tiny-mdsr", scale="2", format=fmt)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == media
        im = decode(r)
        assert im.format == pil and im.size == (48, 40)


def test_gray_16bit_and_alpha_keep_their_kind(server):
    g16 = (np.arange(20 * 16, dtype=np.uint16).reshape(16, 20) * 200).astype(np.uint16)
    r = post(server, png_bytes(g16))
    assert r.status_code == 200, r.text
    im = decode(r)
    assert im.mode in ("I;16", "I") and im.size == (40, 32)
    assert np.asarray(im).max() > 255  # still 16-bit data
    rgba = np.dstack([rgb(20, 16), np.full((16, 20), 128, np.uint8)])
    r = post(server, png_bytes(rgba), format="webp")
    assert r.status_code == 200, r.text
    im = decode(r)
    assert im.mode == "RGBA" and im.size == (40, 32)
    assert abs(int(np.asarray(im)[..., 3].mean()) - 128) <= 2


def test_bicubic_is_matlab_bicubic(server):
    a = rgb(20, 14, seed=2)
    r = post(server, png_bytes(a), model="bicubic", scale="3")
    assert r.status_code == 200, r.text
    assert r.headers["content-disposition"] == 'inline; filename="in_x3_bicubic.png"'
    np.testing.assert_array_equal(np.asarray(decode(r)), imresize_np(a, 3))


def test_raw_body_upload_with_query_parameters(server):
    r = server.post(
        "/v1/upscale?model=tiny-mdsr&scale=3&filename=raw.png",
        content=png_bytes(rgb(10, 8)),
        headers={"content-type": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert decode(r).size == (30, 24)
    assert 'filename="raw_x3.png"' in r.headers["content-disposition"]


def test_progress_reports_the_finished_job(server):
    r = post(server, png_bytes(rgb(16, 16)), job="test-job-0001")
    assert r.status_code == 200 and r.headers["x-job-id"] == "test-job-0001"
    p = server.get("/v1/progress/test-job-0001").json()
    assert p["state"] == "done" and p["done"] == p["total"] == 1
    assert_error(post(server, png_bytes(rgb(8, 8)), job="bad id!"), 422, "job")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_upload_limit_413(server):
    big = b"\x89PNG" + bytes(MAX_UPLOAD)
    assert_error(post(server, big), 413, "256 KB", "--max-upload-mb")
    # declared far larger than the limit: refused before the body is read, still as JSON
    assert_error(post(server, bytes(3 * MAX_UPLOAD)), 413, "256 KB")

    # without Content-Length (chunked): cut off at the limit, and still answered cleanly
    def chunks():
        for _ in range(12):
            yield bytes(64 * 1024)

    r = server.post("/v1/upscale", content=chunks(), headers={"content-type": "image/png"})
    assert_error(r, 413)
    assert server.get("/healthz").status_code == 200


def test_pixel_limit_422_states_the_limit(server):
    # a small file whose header claims many pixels: rejected before decoding
    r = post(server, png_bytes(np.zeros((200, 150, 3), np.uint8)))
    assert_error(r, 422, "150x200 = 30,000 pixels", "limit of 20,000 pixels")


@pytest.mark.parametrize(
    ("data", "status", "needle"),
    [
        (b"this is not an image at all", 415, "not an image"),
        (b"GIF89a" + bytes(40), 415, ""),
        (png_bytes(rgb(30, 30))[:300], 422, "truncated or corrupt"),
    ],
    ids=["text", "gif-header", "truncated-png"],
)
def test_unsupported_or_corrupt_image(server, data, status, needle):
    body = assert_error(post(server, data), status, needle)
    assert "/tmp" not in body["error"] and "upload.bin" not in body["error"]


# read_image's warning, raised in the server's worker thread; the client gets X-Warning
@pytest.mark.filterwarnings("ignore:.*animated GIF with 2 frames")
def test_animated_gif_first_frame_is_upscaled_with_a_warning(server, served):
    """The CLI's policy (issue 13.6): the first frame, and a warning the client can see."""
    frames = [Image.fromarray(rgb(12, 10, seed=s)).convert("P") for s in (3, 4)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r = post(server, buf.getvalue(), name="anim.gif")
    assert r.status_code == 200, r.text
    assert "2 frames" in r.headers["x-warning"]
    first = np.asarray(frames[0].convert("RGB"))
    want = upscale(first, served[0].model, 2)
    assert np.abs(np.asarray(decode(r)).astype(int) - want).max() <= 1
    assert r.headers["content-disposition"] == 'inline; filename="anim_x2.png"'


def test_other_formats_than_the_house_reads_are_415(server):
    buf = io.BytesIO()
    Image.fromarray(rgb(8, 8)).save(buf, "ICO")
    assert_error(post(server, buf.getvalue(), name="a.ico"), 415, "ICO", ".gif")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_icc_profile_is_carried_to_the_result(server, fmt):
    """Issue 13.14: the upload's colour profile is in the answer, whatever the format."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    Image.fromarray(rgb(16, 12, seed=5)).save(buf, "PNG", icc_profile=icc)
    r = post(server, buf.getvalue(), format=fmt)
    assert r.status_code == 200, r.text
    assert decode(r).info.get("icc_profile") == icc
    plain = post(server, png_bytes(rgb(16, 12, seed=5)), format=fmt)
    assert "icc_profile" not in decode(plain).info


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"scale": "4"}, "upscales x2, not x4"),
        ({"scale": "two"}, "whole number"),
        ({"model": "nope"}, "unknown model 'nope'"),
        ({"model": "edsr-x2"}, "not loaded here"),
        ({"ensemble": "maybe"}, "ensemble must be true or false"),
        ({"format": "gif"}, "format must be png, jpeg or webp"),
    ],
)
def test_bad_options_422(server, fields, needle):
    assert_error(post(server, png_bytes(rgb(8, 8)), **fields), 422, needle)


def test_a_registry_model_not_loaded_is_answered_with_the_command_that_loads_it(server):
    specs = " ".join(f"--model {m.spec}" for m in server.app.state.server.models)
    command = f"edsr serve {specs} --model edsr-x2"
    for asked in ("edsr-x2", "edsr_x2"):  # an alias gets the entry's name
        body = assert_error(post(server, png_bytes(rgb(8, 8)), model=asked), 422, asked)
        assert f"restart the server as `{command}`" in body["error"]


def test_jpeg_cannot_hold_alpha(server):
    rgba = np.dstack([rgb(8, 8), np.full((8, 8), 9, np.uint8)])
    assert_error(post(server, png_bytes(rgba), format="jpeg"), 422, "transparency")


def test_missing_image_and_wrong_content_type(server):
    r = server.post("/v1/upscale", data={"scale": "2"}, files={"note": (None, "x")})
    assert_error(r, 422, "no image")
    r = server.post(
        "/v1/upscale", content=b'{"a": 1}', headers={"content-type": "application/json"}
    )
    assert_error(r, 415, "multipart/form-data")
    r = server.post(
        "/v1/upscale", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}
    )
    assert_error(r, 400, "boundary")
    # a raw body has no form field to name
    r = server.post("/v1/upscale", content=b"", headers={"content-type": "image/png"})
    body = assert_error(r, 422, "the request body is empty")
    assert "field" not in body["error"]


def test_no_files_left_in_the_temp_dir(server):
    # every request above has finished; its folder must be gone (allow the last a moment)
    root = server.app.state.server.tmp_root
    assert root.parent == server.tmp
    deadline = time.monotonic() + 5
    while list(root.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(root.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Queue, time limit, cancellation (each with its own server)
# ---------------------------------------------------------------------------------------------


class Gate:
    """Forward pre-hook that holds every forward pass until the test releases it, counting them."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, module, args) -> None:
        self.calls += 1
        self.entered.set()
        if not self.release.wait(30):
            raise RuntimeError("the test never released the gate")


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


TILED_SIDE = 160


def several_tiles_budget(checkpoints) -> int:
    """The smallest tile memory every served model accepts: with it a TILED_SIDE image takes
    several tiles, so "stopped at its next tile" can be told from "ran to the end"."""
    models = fresh_models(checkpoints)
    for mib in range(16, 1024, 2):
        budget = mib * 2**20
        try:
            for m in models:
                for s in m.scales:
                    plan_tiles(m.model, (1, 3, 64, 64), s, max_memory=budget)
        except EdsrError:
            continue
        tiles = plan_tiles(models[0].model, (1, 3, TILED_SIDE, TILED_SIDE), 2, max_memory=budget)
        assert tiles.count >= 2, tiles
        return budget
    raise AssertionError("no budget fits the test models")


@pytest.fixture
def gated(checkpoints, tmp_path):
    """A factory: a fresh server over fresh models, and a Gate on its first model."""
    opened = []

    def make(gate: Gate, **config):
        models = fresh_models(checkpoints)
        app = create_app(models, ServeConfig(tmp_dir=str(tmp_path), **config))
        # after create_app: its warm-up runs the model once, which the gate would hold
        handle = models[0].model.register_forward_pre_hook(gate)
        cm = background_server(app)
        url = cm.__enter__()
        opened.append((cm, handle, gate))
        return httpx.Client(base_url=url, timeout=30), app

    yield make
    for cm, handle, gate in opened:
        gate.release.set()
        handle.remove()
        cm.__exit__(None, None, None)
    assert list(tmp_path.iterdir()) == []


def in_thread(fn):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    t.start()
    return t, box


def test_full_queue_gets_503_and_the_loop_stays_responsive(gated):
    gate = Gate()
    client, app = gated(gate, workers=1, queue=1)
    image = png_bytes(rgb(16, 16))
    first, box1 = in_thread(lambda: post(client, image, job="first-job-1"))
    assert gate.entered.wait(10)
    second, box2 = in_thread(lambda: post(client, image, job="second-job-2"))
    wait_for(lambda: client.get("/v1/progress/second-job-2").status_code == 200)
    assert client.get("/v1/progress/second-job-2").json() == {
        "job": "second-job-2", "state": "queued", "done": 0, "total": 0, "position": 1,
    }  # fmt: skip
    p = client.get("/v1/progress/first-job-1").json()
    assert p["state"] == "running" and p["total"] == 1 and p["done"] == 0
    # capacity is 2 (1 running + 1 waiting): the third is turned away while the first job is
    # still held inside its forward pass, not after it
    r = post(client, image)
    assert_error(r, 503, "busy")
    assert int(r.headers["retry-after"]) >= 1
    # the event loop answers while the model computes
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["running"] == 1 and r.json()["admitted"] == 2
    assert first.is_alive() and gate.calls == 1 and not gate.release.is_set()
    assert client.get("/v1/progress/first-job-1").json()["state"] == "running"
    gate.release.set()
    first.join(20)
    second.join(20)
    assert box1["result"].status_code == 200 and box2["result"].status_code == 200
    assert decode(box2["result"]).size == (32, 32)


def test_time_limit_504_stops_the_job_at_its_next_tile_and_frees_the_worker(gated, checkpoints):
    """Issue 13.13: after a 504 the job stops at its next tile and gives its worker back, so
    the next request (one worker, no queue) is served."""
    gate = Gate()
    budget = several_tiles_budget(checkpoints)
    client, app = gated(gate, workers=1, queue=0, timeout=2.0, max_memory=budget)
    big = png_bytes(rgb(TILED_SIDE, TILED_SIDE))
    r = post(client, big, job="slow-job-1")
    assert_error(r, 504, "limit of 2 s")
    p = client.get("/v1/progress/slow-job-1").json()
    assert p["state"] == "cancelled" and p["done"] == 0 and p["total"] > 1, p
    # the worker is still inside the first tile, held by the gate: not free yet
    assert client.get("/healthz").json()["running"] == 1
    gate.release.set()
    wait_for(lambda: client.get("/healthz").json()["running"] == 0)
    assert gate.calls == 1  # the tile in flight ended, and no other tile started
    assert client.get("/v1/progress/slow-job-1").json()["done"] <= 1
    r = post(client, png_bytes(rgb(16, 16)))
    assert r.status_code == 200, r.text
    assert decode(r).size == (32, 32)


def test_a_stopping_server_answers_503_at_once_and_admits_no_more(gated, checkpoints):
    """SIGTERM's first effect (stop_soon): the request running and the one queued answer 503
    "shutting down" now, while the model is still inside its forward pass, instead of being
    cancelled at the end of uvicorn's grace period (a 500)."""
    gate = Gate()
    client, app = gated(gate, workers=1, queue=1, max_memory=several_tiles_budget(checkpoints))
    running, box1 = in_thread(lambda: post(client, png_bytes(rgb(TILED_SIDE, TILED_SIDE))))
    assert gate.entered.wait(10)
    queued, box2 = in_thread(lambda: post(client, png_bytes(rgb(16, 16)), job="queued-job-1"))
    wait_for(lambda: client.get("/v1/progress/queued-job-1").status_code == 200)
    app.state.server.stop_soon()
    running.join(10)
    queued.join(10)
    for box in (box1, box2):
        r = box["result"]
        assert_error(r, 503, "the server is shutting down")
        assert r.headers["retry-after"] == "5"
    assert not gate.release.is_set() and gate.calls == 1  # answered while the tile ran
    assert_error(post(client, png_bytes(rgb(16, 16))), 503, "the server is shutting down")
    gate.release.set()
    wait_for(lambda: client.get("/healthz").json()["running"] == 0)
    assert gate.calls == 1  # the job stopped at its next tile


def test_client_going_away_cancels_its_job(gated, checkpoints):
    gate = Gate()
    client, app = gated(gate, workers=1, queue=0, max_memory=several_tiles_budget(checkpoints))
    with (
        httpx.Client(base_url=str(client.base_url), timeout=1.0) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        post(impatient, png_bytes(rgb(TILED_SIDE, TILED_SIDE)), job="gone-job-1")
    wait_for(lambda: client.get("/v1/progress/gone-job-1").json()["state"] == "cancelled", 5)
    gate.release.set()  # the pass in flight ends; the next tile sees the stop flag
    wait_for(lambda: client.get("/healthz").json()["running"] == 0, 5)
    assert gate.calls == 1
    assert client.get("/healthz").json()["admitted"] == 0
    p = client.get("/v1/progress/gone-job-1").json()
    assert p["done"] < p["total"]


def test_job_queue_stops_a_timed_out_job_at_its_next_tile_and_frees_the_worker():
    """The queue on its own, no HTTP: admission is bounded, and a job past its deadline is
    told to stop, stops before its next tile, and its worker takes the next job."""
    import asyncio

    from edsr.errors import Cancelled
    from edsr.serve.jobs import Busy, JobQueue, JobState, TimedOut

    release = threading.Event()

    def three_tiles(job):
        job.on_tile(0, 3)
        for i in range(3):
            if job.should_stop():
                raise Cancelled("stopped")
            release.wait(30)  # the tile "computes" until the test lets it finish
            job.on_tile(i + 1, 3)
        return "all tiles"

    async def scenario():
        q = JobQueue(workers=1, queue=0, timeout=60)
        q.start()
        with q.admit(), pytest.raises(Busy), q.admit():
            pass
        loop = asyncio.get_running_loop()
        job = q.new_job("slow-job-01")
        with pytest.raises(TimedOut):
            await q.run(job, three_tiles, deadline=loop.time() + 0.2, gone=loop.create_future())
        assert job.state is JobState.CANCELLED and job.should_stop()
        assert q.running == 1  # still inside its first tile
        release.set()
        while q.running:
            await asyncio.sleep(0.01)
        assert (job.done, job.total) == (1, 3)
        quick = q.new_job()
        client_stays = loop.create_future()  # run() owns it and cancels it when done
        got = await q.run(quick, lambda j: "next", deadline=loop.time() + 30, gone=client_stays)
        assert got == "next" and quick.state is JobState.DONE
        await q.close()

    asyncio.run(scenario())


def test_host_header_is_checked_when_configured(checkpoints, served):
    app = create_app(served, ServeConfig(allowed_hosts=("127.0.0.1", "localhost")))
    with background_server(app) as url, httpx.Client(base_url=url) as client:
        assert client.get("/healthz").status_code == 200
        r = client.get("/healthz", headers={"host": "attacker.example:8000"})
        assert_error(r, 421, "attacker.example")
