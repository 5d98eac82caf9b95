"""`edsr serve` against slow and half-sent uploads, and its limits checked before it starts.

Raw sockets to a real uvicorn server on 127.0.0.1: a client that sends half its upload and
then nothing must cost a socket and an upload's place for at most --upload-timeout, never a
worker's place (issue 24.3).
"""

from __future__ import annotations

import io
import math
import socket
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="needs the 'serve' extra (fastapi)")
pytest.importorskip("uvicorn", reason="needs the 'serve' extra (uvicorn)")
pytest.importorskip("python_multipart", reason="needs the 'serve' extra (python-multipart)")
httpx = pytest.importorskip("httpx", reason="needs httpx (test extra)")

from edsr import save_model  # noqa: E402
from edsr.cli import main  # noqa: E402
from edsr.errors import EdsrError  # noqa: E402
from edsr.models import EDSR  # noqa: E402
from edsr.serve import ServeConfig, background_server, create_app, load_models  # noqa: E402

UPLOAD_TIMEOUT = 1.5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("upload_models") / "tiny-x2.safetensors"
    torch.manual_seed(0)
    save_model(EDSR(scale=2, n_resblocks=2, n_feats=16), path)
    return path


def png(w: int, h: int) -> bytes:
    rng = np.random.default_rng(w * h)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def multipart(image: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    head = f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
    head += "Content-Type: image/png\r\n\r\n"
    return head.encode() + image + f"\r\n--{b}--\r\n".encode(), f"multipart/form-data; boundary={b}"


def half_sent(url: str, body: bytes, ctype: str, source: str | None = None) -> socket.socket:
    """A client that sends its headers and half its body, then waits (from the loopback
    address ``source``, when given: another client to the server)."""
    host, port = url.removeprefix("http://").split(":")
    address = (source, 0) if source else None
    s = socket.create_connection((host, int(port)), timeout=10, source_address=address)
    head = (
        f"POST /v1/upscale HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    s.sendall(head.encode() + body[: len(body) // 2])
    return s


def answer_then_close(s: socket.socket, timeout: float) -> tuple[bytes, float]:
    """All the server sends until it closes the connection, and when it closed it."""
    s.settimeout(timeout)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    return data, time.monotonic()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def slow_server(tiny, tmp_path):
    models = load_models([str(tiny)], device="cpu", progress=False)
    # one worker and no queue: a single request that took a place before its body arrived
    # would turn every other request away
    config = ServeConfig(
        workers=1, queue=0, upload_timeout=UPLOAD_TIMEOUT, max_uploads=9,
        max_uploads_per_client=10,  # the test is every client (one address): all 9 its
        tmp_dir=str(tmp_path),
    )  # fmt: skip
    with (
        background_server(create_app(models, config)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield url, client


def test_half_sent_uploads_hold_no_worker_and_are_dropped_after_the_upload_timeout(slow_server):
    url, client = slow_server
    body, ctype = multipart(png(24, 24))
    t0 = time.monotonic()
    slow = [half_sent(url, body, ctype) for _ in range(8)]
    try:
        wait_for(lambda: client.get("/healthz").json()["uploading"] == 8)
        health = client.get("/healthz").json()
        assert health["admitted"] == 0 and health["capacity"] == 1, health
        # the only worker's place is free: a whole request is served meanwhile
        r = client.post("/v1/upscale", content=body, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (48, 48)
        assert time.monotonic() - t0 < UPLOAD_TIMEOUT, "served only after the slow ones left"
        assert client.get("/healthz").json()["uploading"] == 8
        # each half-sent upload is answered 408 and its connection closed at the upload limit
        for s in slow:
            data, closed = answer_then_close(s, timeout=10)
            assert data.startswith(b"HTTP/1.1 408 "), data[:200]
            assert b"--upload-timeout" in data
            assert UPLOAD_TIMEOUT <= closed - t0 < UPLOAD_TIMEOUT + 5
    finally:
        for s in slow:
            s.close()
    assert client.get("/healthz").json()["uploading"] == 0


def test_uploads_in_flight_are_bounded(slow_server):
    url, client = slow_server
    body, ctype = multipart(png(16, 16))
    slow = [half_sent(url, body, ctype) for _ in range(9)]
    try:
        wait_for(lambda: client.get("/healthz").json()["uploading"] == 9)
        r = client.post("/v1/upscale", content=body, headers={"content-type": ctype})
        assert r.status_code == 503, r.text
        assert "too many uploads" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    finally:
        for s in slow:
            s.close()
    # a client that goes away frees its upload's place at once, not at the time limit
    wait_for(lambda: client.get("/healthz").json()["uploading"] == 0, UPLOAD_TIMEOUT)
    r = client.post("/v1/upscale", content=body, headers={"content-type": ctype})
    assert r.status_code == 200, r.text


def test_one_client_cannot_hold_every_upload_place(tiny, tmp_path):
    models = load_models([str(tiny)], device="cpu", progress=False)
    config = ServeConfig(
        upload_timeout=UPLOAD_TIMEOUT, max_uploads=4, max_uploads_per_client=2,
        tmp_dir=str(tmp_path),
    )  # fmt: skip
    with (
        background_server(create_app(models, config)) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        body, ctype = multipart(png(16, 16))
        hog = [half_sent(url, body, ctype) for _ in range(2)]
        try:
            wait_for(lambda: client.get("/healthz").json()["uploading"] == 2)
            # the same client's third upload: 429, while two places stay free for the others
            r = client.post("/v1/upscale", content=body, headers={"content-type": ctype})
            assert r.status_code == 429, r.text
            assert "--max-uploads-per-client" in r.json()["error"]
            assert r.headers["retry-after"] == str(math.ceil(UPLOAD_TIMEOUT))
            other = half_sent(url, body, ctype, source="127.0.0.2")
            wait_for(lambda: client.get("/healthz").json()["uploading"] == 3)
            other.sendall(body[len(body) // 2 :])
            data, _ = answer_then_close(other, timeout=10)
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
        finally:
            for s in hog:
                s.close()
        wait_for(lambda: client.get("/healthz").json()["uploading"] == 0, UPLOAD_TIMEOUT)
        r = client.post("/v1/upscale", content=body, headers={"content-type": ctype})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("field", ["timeout", "upload_timeout"])
@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0, -1.0])
def test_time_limits_must_be_finite_and_positive(field, value):
    with pytest.raises(EdsrError, match=f"--{field.replace('_', '-')} must be a finite number"):
        ServeConfig(**{field: value})


def test_tmp_dir_is_checked_before_the_server_starts(tmp_path, tiny, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for bad, why in [(tmp_path / "missing", "does not exist"), (a_file, "not a folder")]:
        with pytest.raises(EdsrError, match=why):
            ServeConfig(tmp_dir=str(bad))
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(tiny), "--port", "0", "--tmp-dir", str(bad)])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--tmp-dir" in err and "Traceback" not in err, err


def test_an_upload_over_a_mebibyte_is_spooled_and_arrives_whole(slow_server, tiny):
    """Uploads over 1 MiB wait in a temporary file, not in memory, and are handed on in
    pieces: the image, sent after 1.2 MB of another part, must arrive exactly."""
    from edsr import upscale

    url, client = slow_server
    a = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    junk = np.random.default_rng(2).bytes(1_200_000)
    r = client.post(
        "/v1/upscale",
        files=[("junk", ("junk.bin", junk, "application/octet-stream")),
               ("image", ("a.png", buf.getvalue(), "image/png"))],
    )  # fmt: skip
    assert r.status_code == 200, r.text
    want = upscale(a, load_models([str(tiny)], device="cpu", progress=False)[0].model, 2)
    got = np.asarray(Image.open(io.BytesIO(r.content))).astype(int)
    assert np.abs(got - want).max() <= 1
